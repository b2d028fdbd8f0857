"""The WebShop purchase reward (SPEC §6) as pure functions of the goal and the purchased product.

It owns fuzzy matching (thefuzz's token_set_ratio), colour normalisation and the type,
attribute, option and price terms. It never loads data or runs a tagger: the noun lists of the
two product names that the type term needs are passed in (nouns.py computes them).

reward = r_type * (A + O + R) / (|goal attributes| + |goal options| + 1)

Faithfulness notes. token_set_ratio uses the exact indel ratio 200*LCS/(|x|+|y|) (current
thefuzz / python-Levenshtein); thefuzz 0.19 without python-Levenshtein used difflib, which can
differ in rare corner cases. Pre-processing follows thefuzz 0.19 (an underscore counts as a word
character). The title score divides by the number of noun tokens of the goal name counting
repeats, as upstream does; when only noun *sets* are known (the shared precomputed file) the
caller passes sets and the denominator is the set size.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, Sequence

# The colour vocabulary of upstream normalize.py, in the alphabetical order it is scanned in.
COLOR_SET = (
  "alabaster apricot aqua ash asphalt azure banana beige black blue blush bordeaux bronze brown "
  "burgundy camel camo caramel champagne charcoal cheetah chestnut chocolate christmas coffee "
  "cognac copper coral cranberry cream crystal dark denim eggplant elephant espresso fuchsia gold "
  "granite grape graphite grass gray green grey heather indigo ivory ivy khaki lavender lemon "
  "leopard light lilac lime magenta maroon mauve merlot midnight mint mocha multicolor mushroom "
  "mustard natural navy nude olive orange peach pewter pink plum purple rainbow red rose royal "
  "rust sand sapphire seashell silver skull slate steel stone stonewash sunflower tan taupe teal "
  "tiger turquoise violet walnut wheat white wine yellow"
).split()

FUZZ_THRESHOLD = 85
NO_PRICE_BOUND = 1000000
_NON_WORD = re.compile(r"[^a-zA-Z0-9_]")


def fuzz_process(s: Any) -> str:
  """thefuzz's full_process: text form, ASCII only, non-word characters to spaces, lower, trim."""
  text = s if isinstance(s, str) else str(s)
  text = "".join(ch for ch in text if ord(ch) < 128)
  return _NON_WORD.sub(" ", text).lower().strip()


def _lcs_length(a: str, b: str) -> int:
  """Longest common subsequence length by the bit-parallel method (one integer per column)."""
  if not a or not b:
    return 0
  masks: dict[str, int] = {}
  for i, ch in enumerate(a):
    masks[ch] = masks.get(ch, 0) | (1 << i)
  full = (1 << len(a)) - 1
  v = full
  for ch in b:
    u = v & masks.get(ch, 0)
    v = ((v + u) | (v - u)) & full
  return len(a) - bin(v).count("1")


def indel_ratio(a: str, b: str) -> float:
  """100 * (1 - indel distance / total length), i.e. 200 * LCS / (|a| + |b|); 0 if one is empty."""
  if not a or not b:
    return 0.0
  return 200.0 * _lcs_length(a, b) / (len(a) + len(b))


def token_set_ratio(s1: Any, s2: Any) -> int:
  """thefuzz.fuzz.token_set_ratio: the best ratio among the shared tokens and each side's rest."""
  p1, p2 = fuzz_process(s1), fuzz_process(s2)
  if not p1 or not p2:
    return 0
  t1, t2 = set(p1.split()), set(p2.split())
  sect = " ".join(sorted(t1 & t2))
  combined_1to2 = (sect + " " + " ".join(sorted(t1 - t2))).strip()
  combined_2to1 = (sect + " " + " ".join(sorted(t2 - t1))).strip()
  best = max(
    indel_ratio(sect, combined_1to2),
    indel_ratio(sect, combined_2to1),
    indel_ratio(combined_1to2, combined_2to1),
  )
  return int(round(best))


def fuzzy_match(a: Any, b: Any) -> bool:
  return token_set_ratio(a, b) > FUZZ_THRESHOLD


def normalize_color(s: Any) -> Any:
  """The first colour word contained in s (substring of a text, element of a pair), else s."""
  for color in COLOR_SET:
    if color in s:
      return color
  return s


def type_reward(
  purchased: Mapping[str, Any],
  goal: Mapping[str, Any],
  purchased_nouns: Iterable[str],
  goal_nouns: Sequence[str],
) -> dict[str, Any]:
  """r_type in {0, 0.1, 0.5, 1} from scrape query, category path and the nouns of the names."""
  query_match = purchased["query"] == goal["query"]
  purchased_path = {x.strip() for x in purchased["product_category"].split("›")}
  goal_path = {x.strip() for x in goal["product_category"].split("›")}
  category_match = len(purchased_path & goal_path) >= 2
  if len(goal_nouns) == 0:
    title_score = 0.2
  else:
    title_score = len(set(purchased_nouns) & set(goal_nouns)) / len(goal_nouns)
  r_type = 1.0
  if not (query_match or category_match or title_score > 0.2):
    r_type = 0.5
  if title_score < 0.1:
    r_type = 0.1
  if title_score == 0.0:
    r_type = 0.0
  return dict(
    r_type=r_type,
    query_match=query_match,
    category_match=category_match,
    title_score=title_score,
  )


def attribute_matches(purchased: Mapping[str, Any], goal_attributes: Sequence[str]) -> int:
  """Goal attributes matched by a product attribute (fuzzy) or found in its title or texts."""
  title = purchased["Title"].lower()
  bullets = " ".join(purchased["BulletPoints"]).lower()
  description = purchased["Description"].lower()
  count = 0
  for g in goal_attributes:
    if any(fuzzy_match(a, g) for a in purchased["Attributes"]):
      count += 1
    elif g in title or g in bullets or g in description:
      count += 1
  return count


def goal_option_items(goal_options: Any) -> list[Any]:
  """Synthetic goals carry a dict (compared as (name, value) pairs), human goals a value list."""
  if isinstance(goal_options, Mapping):
    return list(goal_options.items())
  return list(goal_options or [])


def option_matches(purchased_options: Sequence[str], goal_options: Any) -> int:
  """Goal options matched by some chosen option value, both sides colour-normalised."""
  chosen = [normalize_color(o) for o in purchased_options]
  wanted = [normalize_color(o) for o in goal_option_items(goal_options)]
  return sum(1 for g in wanted if any(fuzzy_match(p, g) for p in chosen))


def purchase_reward(
  purchased: Mapping[str, Any],
  goal: Mapping[str, Any],
  price: float,
  chosen_options: Mapping[str, str],
  purchased_nouns: Iterable[str],
  goal_nouns: Sequence[str],
) -> tuple[float, dict[str, Any]]:
  """The final reward in [0, 1] and its parts (upstream's verbose info)."""
  r_type = type_reward(purchased, goal, purchased_nouns, goal_nouns)
  n_att = len(goal["attributes"])
  n_opt = len(goal_option_items(goal["goal_options"]))
  denominator = n_att + n_opt + 1
  r_price = price <= goal["price_upper"]
  a = attribute_matches(purchased, goal["attributes"])
  o = option_matches(list(chosen_options.values()), goal["goal_options"])
  reward = (a + o + r_price) / denominator * r_type["r_type"]
  info = dict(r_type)
  info.update(r_att=a / n_att if n_att else 0.0, w_att=n_att / denominator)
  if n_opt:
    info.update(r_option=o / n_opt, w_option=n_opt / denominator)
  info.update(r_price=bool(r_price), w_price=1 / denominator)
  return reward, info
