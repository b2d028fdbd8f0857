"""Turning model text into an environment action: one pure function, apart from any environment.

The model answers `<think>…</think><action>…</action>`; the action is the text inside the last
complete action tag. The validity flag is what the trainer turns into a penalty, so it is strict:
exactly one action tag pair, non-empty content, nothing but whitespace after it, and a length cap
(a rambling answer is not an action). An invalid answer still yields its best-effort action, so the
environment can be stepped with it (ALFWorld answers "Nothing happens." to nonsense).
"""

from __future__ import annotations

import re

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.tag = "action"  # the answer format's action tag, without brackets
  c.max_action_chars = 200
  c.lowercase = True  # ALFWorld's and WebShop's commands are lower case
  return c


def parse_action(
  text: str, tag: str = "action", max_action_chars: int = 200, lowercase: bool = True
) -> tuple[str, bool]:
  """Returns (action, valid) for one model answer."""
  if not re.fullmatch(r"[A-Za-z_][\w-]*", tag):
    raise ValueError(f"actions.tag={tag!r}; expected an XML-like tag name such as 'action'")
  open_tag, close_tag = f"<{tag}>", f"</{tag}>"
  pattern = re.compile(re.escape(open_tag) + r"(.*?)" + re.escape(close_tag), re.DOTALL)
  matches = list(pattern.finditer(text))
  if not matches:
    # No complete pair: take what follows an unclosed opening tag, else give up.
    start = text.rfind(open_tag)
    action = text[start + len(open_tag) :] if start >= 0 else ""
    return _clean(action, max_action_chars, lowercase), False
  last = matches[-1]
  action = _clean(last.group(1), max_action_chars, lowercase)
  valid = (
    len(matches) == 1
    and bool(action)
    and len(last.group(1).strip()) <= max_action_chars
    and not text[last.end() :].strip()
    and open_tag not in last.group(1)
  )
  return action, valid


def _clean(action: str, max_chars: int, lowercase: bool) -> str:
  action = " ".join(action.split())[:max_chars]
  return action.lower() if lowercase else action
