"""Action grammar (SPEC §4.1), text extraction rules (§3.3) and clickables order (§4.2)."""

import pytest

from jerp_jax.envs.webshop import pages


@pytest.mark.parametrize(
  "action,parsed",
  [
    ("search[Red Shoes]", ("search", "red shoes")),
    ("click[Buy Now]", ("click", "buy now")),
    ("click[buy now] please", ("click", "buy now")),  # text after the last ']' is ignored
    ("click[ buy now ]", ("click", " buy now ")),  # inner spaces are kept
    ("search[]", ("search[]", None)),  # an empty argument does not parse
    ("search[a [b] c]", ("search[a ", "b] c")),  # the name runs to the last usable '['
    ("search[a] and [b]", ("search[a] and ", "b")),
    ("Action: click[x]", ("Action: click", "x")),
    ("look", ("look", None)),
  ],
)
def test_parse_action(action, parsed):
  assert pages.parse_action(action) == parsed


def test_text_extraction_rules():
  nodes = [("text", "a"), ("text", " "), ("text", " \n "), ("text", ""), ("text", "  b\nc  ")]
  assert pages.render_text(nodes) == "a [SEP]  [SEP] b\nc"
  product = dict(BulletPoints=["x", "", "y"], Description="")
  assert pages.render_text(pages.sub_page("I", product, "Features")).endswith("x [SEP]  [SEP] y")
  assert pages.render_text(pages.sub_page("I", product, "Description")).endswith("< Prev")


def test_clickables_order():
  product = dict(
    asin="B1", Title="T", Price="$1.0", options={"color": ["red", "blue", "red"]}, Rating="N.A."
  )
  item = pages.item_page("I", product, show_attrs=True)
  assert pages.clickables(item) == [
    "back to search", "< prev", "description", "features", "reviews", "attributes", "buy now",
    "red", "blue",
  ]  # fmt: skip
  results = pages.results_page("I", 2, 12, [product])
  assert pages.clickables(results) == ["back to search", "< prev", "next >", "b1"]
  assert pages.clickables(pages.search_page("I")) == ["search"]
