"""WebShop's pages as text (SPEC §3) and its action grammar (SPEC §4.1).

It owns `parse_action`, the page builders (each returns the page's visible nodes in document
order as (kind, text) pairs), the two text renderings (`text`: nodes joined by ' [SEP] ';
`text_rich`: one marked-up line per node) and the clickables of a page. It never changes state:
env.py decides which page to show.

Rendering follows upstream's HTML templates through BeautifulSoup's text extraction without
doing either: a whitespace-only node with a newline disappears, one without becomes an empty
segment, other nodes are trimmed. Approximation: `text_rich` trims nodes too (upstream keeps
the template's indentation inside nodes), and the done page shows the chosen options as
`json.dumps` output.
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterable, Mapping, Sequence

Node = tuple[str, str]  # (kind, text); kind: text | button | option | product

_ACTION = re.compile(r"(.+)\[(.+)\]")
SUB_PAGES = ("Description", "Features", "Reviews", "Attributes")
PRODUCTS_PER_PAGE = 10


def parse_action(action: str) -> tuple[str, str | None]:
  """(name, lower-cased argument or None), e.g. 'click[Buy Now]' -> ('click', 'buy now')."""
  m = _ACTION.match(action)
  if m is None:
    return action, None
  return m.group(1), m.group(2).lower()


def _instruction(instruction: str) -> list[Node]:
  return [("text", "Instruction:"), ("text", instruction)]


def search_page(instruction: str) -> list[Node]:
  return [("text", "WebShop"), *_instruction(instruction), ("button", "Search")]


def results_page(
  instruction: str, page: int, total: int, products: Sequence[Mapping[str, Any]]
) -> list[Node]:
  nodes = [*_instruction(instruction), ("button", "Back to Search")]
  nodes.append(("text", f"Page {page} (Total results: {total})"))
  if page > 1:
    nodes.append(("button", "< Prev"))
  nodes.append(("button", "Next >"))
  for p in products:
    nodes += [("product", p["asin"]), ("text", p["Title"]), ("text", p["Price"])]
  return nodes


def item_page(instruction: str, product: Mapping[str, Any], show_attrs: bool) -> list[Node]:
  nodes = [*_instruction(instruction), ("button", "Back to Search"), ("button", "< Prev")]
  for name, values in product["options"].items():
    nodes.append(("text", name))
    nodes += [("option", v) for v in values]
  nodes += [
    ("text", product["Title"]),
    ("text", f"Price: {product['Price']}"),
    ("text", f"Rating: {product.get('Rating', 'N.A.')}"),
  ]
  nodes += [("button", b) for b in SUB_PAGES if b != "Attributes" or show_attrs]
  nodes.append(("button", "Buy Now"))
  return nodes


def sub_page(instruction: str, product: Mapping[str, Any], which: str) -> list[Node]:
  nodes = [*_instruction(instruction), ("button", "Back to Search"), ("button", "< Prev")]
  if which == "Description":
    nodes.append(("text", product["Description"]))
  elif which == "Features":
    # The features template pads each bullet with spaces: an empty bullet is an empty segment.
    nodes += [("text", f" {b} ") for b in product["BulletPoints"]]
  elif which == "Reviews":
    pass  # Upstream never loads reviews.
  elif which == "Attributes":
    nodes += [("text", a) for a in product["Attributes"]]
    nodes += [("text", product[k]) for k in ("category", "query", "product_category")]
  return nodes


def done_page(asin: str, options: Mapping[str, str], reward: float) -> list[Node]:
  texts = [
    "Thank you for shopping with us!",
    "Your code:",
    "None",
    "(Paste it in your MTurk interface.)",
    "Purchased",
    "asin",
    asin,
    "options",
    json.dumps(dict(options)),
    "attrs",
    "None",
    "category",
    "None",
    "query",
    "None",
    "product category",
    "None",
    "Target",
    "asin",
    "options",
    "attrs",
    "price upper",
    "instuction text",
    "category",
    "product category",
    "query",
    "Goal",
    "None",
    "Reward",
    "Your score (min 0.0, max 1.0)",
    repr(float(reward)),
    "Reward Details",
    "None",
  ]
  return [("text", t) for t in texts]


def _segment(text: str) -> str | None:
  """What the HTML text extraction leaves of one node: None when it drops it."""
  if not text:
    return None
  if text.isspace():
    return None if "\n" in text else ""
  return text.strip()


def render_text(nodes: Iterable[Node]) -> str:
  segments = [s for _, t in nodes if (s := _segment(t)) is not None]
  return " [SEP] ".join(segments)


def render_text_rich(nodes: Iterable[Node], chosen: Iterable[str], visited: Iterable[str]) -> str:
  chosen, visited = set(chosen), {v.lower() for v in visited}
  top, lines = [], []
  for kind, text in nodes:
    s = _segment(text)
    if s is None:
      continue
    if kind == "button":
      lines.append(f"[button] {s} [button_]")
    elif kind == "option":
      if s in chosen:
        top.insert(0, f"You have clicked {s}.")
        lines.append(f"  [clicked button] {s} [clicked button_]")
      else:
        lines.append(f"  [button] {s} [button_]")
    elif kind == "product":
      mark = "clicked button" if s.lower() in visited else "button"
      lines.append(f"\n[{mark}] {s} [{mark}_]")
    else:
      lines.append(s)
  return "".join(line + "\n" for line in top + lines)


def clickables(nodes: Iterable[Node]) -> list[str]:
  """Lower-cased button labels, then product ids, then option values; first position kept."""
  order = {"button": 0, "product": 1, "option": 2}
  ranked = [
    (order[k], i, t.lower() if k != "option" else t) for i, (k, t) in enumerate(nodes) if k in order
  ]
  out: dict[str, None] = {}
  for _, _, label in sorted(ranked):
    out.setdefault(label, None)
  return list(out)
