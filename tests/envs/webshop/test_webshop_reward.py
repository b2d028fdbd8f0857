"""The purchase reward on hand-made products and goals; every expected number is worked out here."""

import pytest

from jerp_jax.envs.webshop import reward


def _product(**kw):
  p = dict(
    name="Acme Green Tea Bags",
    Title="Acme Green Tea Bags",
    BulletPoints=["Made with natural flavors"],
    Description="Great for mornings",
    Attributes=["usda organic", "caffeine free"],
    query="green tea",
    product_category="Grocery & Gourmet Food › Beverages › Tea",
  )
  p.update(kw)
  return p


def _goal(**kw):
  g = dict(
    asin="B000000001",
    name="Acme Green Tea Bags",
    query="green tea",
    product_category="Grocery & Gourmet Food › Beverages › Tea",
    attributes=["usda organic", "natural flavors", "gluten free"],
    goal_options={"flavor name": "mint", "size": "20 count"},
    price_upper=20.0,
  )
  g.update(kw)
  return g


NOUNS = ["acme", "tea", "bags"]


# -- token_set_ratio -------------------------------------------------------------------------------


def test_token_set_ratio_hand_computed():
  # Shared token 'inch'; rests '22' / '20'. ratio('inch 22', 'inch 20') = 200*6/14 = 85.7 -> 86.
  assert reward.token_set_ratio("22 inch", "20 inch") == 86
  # 'of pack 2' vs 'of pack 1': LCS 8 of 9+9 -> 88.9 -> 89.
  assert reward.token_set_ratio("pack of 2", "pack of 1") == 89
  # Subset of tokens -> 100: {small} < {size, x, small} (the pair's text form).
  assert reward.token_set_ratio("small", ("size", "x-small")) == 100
  # S='small', A='small x', B='small size': ratio(S, A) = 200*5/12 = 83.3 beats ratio(S, B) =
  # 66.7 and ratio(A, B) = 200*6/17 = 70.6 (LCS 'small ') -> 83.
  assert reward.token_set_ratio("x-small", ("size", "small")) == 83
  assert reward.token_set_ratio("3-ounce (2-pack)", "3 ounce (pack of 1)") == 92
  # No shared token: only ratio(A, B) counts. 'abc' vs 'abd': LCS 2 -> 200*2/6 = 66.7 -> 67.
  assert reward.token_set_ratio("abc", "abd") == 67
  assert reward.token_set_ratio("", "abc") == 0
  assert reward.token_set_ratio("!!!", "abc") == 0
  # Case, punctuation and non-ASCII characters are dropped before comparing.
  assert reward.token_set_ratio("Tea-Tree", "tea tree\u00e9") == 100


def test_lcs_matches_dynamic_programming():
  import itertools

  def lcs_dp(a, b):
    t = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, j in itertools.product(range(len(a)), range(len(b))):
      t[i + 1][j + 1] = t[i][j] + 1 if a[i] == b[j] else max(t[i][j + 1], t[i + 1][j])
    return t[-1][-1]

  words = ["free gluten", "free caffeine", "count 100", "count 20 size", "aaa", "abcabc", "x"]
  for a, b in itertools.product(words, words):
    assert reward._lcs_length(a, b) == lcs_dp(a, b)


# -- colour normalisation --------------------------------------------------------------------------


@pytest.mark.parametrize(
  "text,expected",
  [
    ("", ""),
    ("black forest", "black"),
    ("violet lavender", "lavender"),
    ("steelivy fuchsia", "fuchsia"),
    ("123alabaster", "alabaster"),
    ("webshop", "webshop"),
    ("light blue", "blue"),
    ("titanium", "tan"),
    (("color", "black"), "black"),  # a pair normalises only on an exact element
    (("color", "light blue"), ("color", "light blue")),
  ],
)
def test_normalize_color(text, expected):
  assert reward.normalize_color(text) == expected


# -- attributes, options, price, type --------------------------------------------------------------


def test_attribute_matches_upstream_vectors():
  goal = ["tea tree", "essential oils", "natural ingredients"]
  empty = dict(Title="", BulletPoints=[], Description="")
  attrs = ["tea tree", "essential oil", "natural ingredients"]
  assert reward.attribute_matches(dict(empty, Attributes=attrs), goal) == 3
  assert reward.attribute_matches(dict(empty, Attributes=attrs[1:]), goal) == 2
  texts = dict(
    Title="", BulletPoints=["with essential oils"], Description="all natural ingredients"
  )
  assert reward.attribute_matches(dict(texts, Attributes=[]), goal) == 2
  other = dict(Title="cup", BulletPoints=["mug"], Description="saucer")
  assert (
    reward.attribute_matches(dict(other, Attributes=["tea bag", "earl gray", "lipton"]), goal) == 0
  )


def test_option_matches_upstream_vectors():
  goal = ["grey", "XL", "pack of 12"]
  assert reward.option_matches(["pack of 12", "grey", "XL"], goal) == 3
  assert reward.option_matches(["pack of 12", "blue", "XL"], goal) == 2
  assert (
    reward.option_matches(
      ["pack of 12", "powder snow", "XL"], ["cool powder snow", "XL", "pack of 12"]
    )
    == 3
  )
  assert reward.option_matches(["a", "b"], []) == 0
  assert reward.option_matches([], ["grey", "XL"]) == 0


def test_option_matches_synthetic_pairs():
  # ('color', 'black') normalises to 'black'; ('size', 'x-small') stays a pair: 'small' is a
  # subset of its tokens, 'x-small' vs ('size', 'small') scores 83 and does not match.
  assert reward.option_matches(["black", "small"], {"color": "black", "size": "x-small"}) == 2
  assert reward.option_matches(["black", "x-small"], {"color": "black", "size": "small"}) == 1
  # 'rectangular' contains 'tan': the chosen value becomes 'tan', the goal pair stays a pair.
  assert reward.option_matches(["rectangular"], {"item shape": "rectangular"}) == 0


def test_full_reward_hand_computed():
  # A: 'usda organic' by attribute (100); 'natural flavors' by the bullet text; 'gluten free' vs
  #    'caffeine free' scores 58 and is in no text -> A = 2.
  # O: ('flavor name', 'mint') -> 'mint' matches 'mint'; ('size', '20 count') vs '100 count'
  #    scores 71 -> O = 1.   R: 15 <= 20 -> 1.   r_type: same query -> 1.
  r, info = reward.purchase_reward(
    _product(), _goal(), 15.0, {"flavor name": "mint", "size": "100 count"}, NOUNS, NOUNS
  )
  assert r == pytest.approx((2 + 1 + 1) / (3 + 2 + 1))
  assert info["r_att"] == pytest.approx(2 / 3) and info["r_option"] == pytest.approx(1 / 2)
  assert info["w_att"] == pytest.approx(3 / 6) and info["w_price"] == pytest.approx(1 / 6)
  # Everything right -> exactly 1.0.
  full = _product(Attributes=["usda organic", "natural flavors", "gluten free"])
  r, _ = reward.purchase_reward(
    full, _goal(), 15.0, {"flavor name": "mint", "size": "20 count"}, NOUNS, NOUNS
  )
  assert r == 1.0


def test_price_bound_is_inclusive():
  full = _product(Attributes=["usda organic", "natural flavors", "gluten free"])
  chosen = {"flavor name": "mint", "size": "20 count"}
  assert reward.purchase_reward(full, _goal(), 20.0, chosen, NOUNS, NOUNS)[0] == 1.0
  # 20.01 > 20: R = 0 -> (3 + 2 + 0) / 6.
  r, info = reward.purchase_reward(full, _goal(), 20.01, chosen, NOUNS, NOUNS)
  assert r == pytest.approx(5 / 6) and info["r_price"] is False


def test_no_options_drops_the_option_term():
  full = _product(Attributes=["usda organic", "natural flavors", "gluten free"])
  r, info = reward.purchase_reward(full, _goal(goal_options={}), 5.0, {}, NOUNS, NOUNS)
  assert r == 1.0 and "r_option" not in info


def test_type_reward_cases():
  other = dict(query="coffee mugs", product_category="Home & Kitchen › Kitchen › Mugs")
  goal = _goal()
  # 1 of 4 goal noun tokens (repeats count in the denominator): 0.25 > 0.2 -> 1.0.
  t = reward.type_reward(other, goal, ["tea", "mug"], ["acme", "tea", "bags", "tea"])
  assert t["title_score"] == 0.25 and t["r_type"] == 1.0
  # 1 of 5 = 0.2: not above 0.2, no query or category match -> 0.5.
  t = reward.type_reward(other, goal, ["a"], ["a", "b", "c", "d", "e"])
  assert t["title_score"] == 0.2 and t["r_type"] == 0.5
  # 1 of 11 < 0.1 -> 0.1, even with a query match.
  same_query = dict(other, query="green tea")
  t = reward.type_reward(same_query, goal, ["a"], list("abcdefghijk"))
  assert t["query_match"] and t["r_type"] == 0.1
  # No shared noun -> 0.
  assert reward.type_reward(same_query, goal, ["x"], ["a", "b"])["r_type"] == 0.0
  # No goal nouns -> title score 0.2; two shared category levels -> 1.0, one -> 0.5.
  two = dict(other, product_category="Grocery & Gourmet Food › Beverages › Coffee")
  assert reward.type_reward(two, goal, ["x"], [])["r_type"] == 1.0
  one = dict(other, product_category="Grocery & Gourmet Food › Snacks")
  t = reward.type_reward(one, goal, ["x"], [])
  assert not t["category_match"] and t["r_type"] == 0.5


def test_wrong_type_scales_the_whole_reward():
  # Same attributes, options and price as the perfect purchase, but a product of another kind:
  # r_type 0.5 (1 of 5 nouns, other query and category) -> 0.5 * 6/6.
  full = _product(
    Attributes=["usda organic", "natural flavors", "gluten free"],
    query="coffee mugs",
    product_category="Home › Mugs",
  )
  chosen = {"flavor name": "mint", "size": "20 count"}
  r, info = reward.purchase_reward(full, _goal(), 15.0, chosen, ["a"], list("abcde"))
  assert info["r_type"] == 0.5 and r == 0.5
