import ml_collections
import pytest

from jerp_jax import checks


def test_fail_names_block_field_value_and_expectation():
  c = ml_collections.ConfigDict({"lr": -1.0, "scann": {"reorder": 0}})
  with pytest.raises(ValueError, match=r"^rl\.learner\.lr=-1\.0: expected a positive number$"):
    checks.fail(c, "rl.learner", "lr", "a positive number")
  # A dotted field reads the value from the sub-block.
  with pytest.raises(ValueError, match=r"^r\.scann\.reorder=0: expected a positive integer$"):
    checks.fail(c, "r", "scann.reorder", "a positive integer")


def test_require_fails_at_the_first_bad_field_with_its_expectation():
  c = ml_collections.ConfigDict({"n": 3, "lr": 0.0, "mode": "x", "flag": 1, "sub": {"k": -1}})
  table = {"n": checks.POSITIVE_INT, "lr": checks.POSITIVE, "mode": checks.one_of(("a", "b"))}
  with pytest.raises(ValueError, match=r"^b\.lr=0\.0: expected a positive number$"):
    checks.require(c, "b", table)
  c.lr = 1e-3
  with pytest.raises(ValueError, match=r"^b\.mode='x': expected one of \('a', 'b'\)$"):
    checks.require(c, "b", table)
  c.mode = "b"
  checks.require(c, "b", table)  # passes
  with pytest.raises(ValueError, match=r"^b\.flag=1: expected True or False$"):
    checks.require(c, "b", {"flag": checks.BOOL})  # an int is not a bool
  with pytest.raises(ValueError, match=r"^b\.sub\.k=-1: expected 0 or more$"):
    checks.require(c, "b", {"sub.k": checks.saying(checks.COUNT, "0 or more")})
  with pytest.raises(ValueError, match=r"^b\.n=True: expected a positive integer$"):
    checks.require(ml_collections.ConfigDict({"n": True}), "b", {"n": checks.POSITIVE_INT})


def test_ranges_say_their_bounds():
  c = ml_collections.ConfigDict({"p": 1.0, "q": 1, "k": 3})
  checks.require(c, "b", {"p": checks.number_in(0, 1), "k": checks.int_at_least(3)})
  with pytest.raises(ValueError, match=r"^b\.p=1\.0: expected a number in \[0, 1\)$"):
    checks.require(c, "b", {"p": checks.number_in(0, 1, closed=False)})
  with pytest.raises(ValueError, match=r"^b\.q=1: expected an integer >= top_k=3$"):
    checks.require(c, "b", {"q": checks.int_at_least(c.k, f"top_k={c.k}")})
  with pytest.raises(ValueError, match=r"^b\.p=1\.0: expected an integer >= 0$"):
    checks.require(c, "b", {"p": checks.int_at_least(0)})  # 1.0 is not an integer
