"""The one message for a bad config value, shared by every block's `validate_config`.

    rl.learner.lr=-1.0: expected a positive number

A block states its one-field checks as a table, `checks.require(c, "rl.learner", {"lr":
checks.POSITIVE, ...})`; checks that relate fields bind `fail` once, `fail = functools.partial(
checks.fail, c, "rl.learner")`, then `fail("lr", "a positive number")`. The value shown is read
from the block itself (a dotted field reaches into a sub-block), so a message can never show
another value than the one given.
"""

from __future__ import annotations

from typing import Any, Callable, NoReturn


def _value(c: Any, field: str) -> Any:
  for name in field.split("."):
    c = c[name]
  return c


def fail(c: Any, prefix: str, field: str, expected: str) -> NoReturn:
  raise ValueError(f"{prefix}.{field}={_value(c, field)!r}: expected {expected}")


# A check is (what is expected, a test of the value); `require` applies a table of them.
Check = tuple[str, Callable[[Any], bool]]


def is_int(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


POSITIVE_INT: Check = ("a positive integer", lambda v: is_int(v) and v >= 1)
COUNT: Check = ("an integer >= 0", lambda v: is_int(v) and v >= 0)
POSITIVE: Check = ("a positive number", lambda v: is_number(v) and v > 0)
NON_NEGATIVE: Check = ("a non-negative number", lambda v: is_number(v) and v >= 0)
BOOL: Check = ("True or False", lambda v: isinstance(v, bool))


def int_at_least(n: int, said: str | None = None) -> Check:
  """An integer >= n; `said`: how to name n (e.g. the field it comes from)."""
  return (f"an integer >= {n if said is None else said}", lambda v: is_int(v) and v >= n)


def number_in(low: float, high: float, closed: bool = True) -> Check:
  """A number in [low, high] (`closed=False`: [low, high))."""
  inside = (lambda v: low <= v <= high) if closed else (lambda v: low <= v < high)
  return (
    f"a number in [{low:g}, {high:g}{']' if closed else ')'}",
    lambda v: is_number(v) and inside(v),
  )


def one_of(options) -> Check:
  options = tuple(options)
  return (f"one of {options}", lambda v: v in options)


def saying(check: Check, expected: str) -> Check:
  """The same test, with the expectation said the block's way (e.g. what 0 means)."""
  return (expected, check[1])


def require(c: Any, prefix: str, table: dict[str, Check]) -> None:
  """Fails (see `fail`) at the first field of `table` whose value does not pass its check."""
  for field, (expected, ok) in table.items():
    if not ok(_value(c, field)):
      fail(c, prefix, field, expected)
