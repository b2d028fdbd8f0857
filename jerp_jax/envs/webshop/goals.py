"""Goals (SPEC §2) and splits (SPEC §7): what to buy, in environment order.

It owns goal construction from loaded products (synthetic goals: one per option combination of
each product with a synthetic instruction; human goals: one per crowd-sourced instruction), the
price bound, the seeded shuffle and the index ranges of the named splits. It never loads files,
searches or scores.

Randomness is explicit. Upstream draws price bounds from the unseeded global RNG; we draw them
from `random.Random(price_seed)` created at the start of goal construction, which is what the
AgentGym copy does with 233 for synthetic goals, so bounds repeat across runs. The order is
`random.Random(shuffle_seed).shuffle(goals)`, identical to upstream's `random.seed(233);
random.shuffle(goals)` in CPython.
"""

from __future__ import annotations

import collections
import itertools
import random
from typing import Any, Mapping, Sequence

PRICE_THRESHOLDS = [10.0 * i for i in range(1, 100)]
NO_PRICE_BOUND = 1000000

# Index ranges after the shuffle. Human goals follow the maintainers' convention for the full
# catalogue (test 0-499, eval 500-1499, train 1500-); synthetic goals follow verl-agent's
# 1000-product setting, where validation and test are both the first 500 goals.
SPLIT_RANGES = {
  "human": {"test": (0, 500), "eval": (500, 1500), "train": (1500, None), "all": (0, None)},
  "synthetic": {"test": (0, 500), "eval": (0, 500), "train": (500, None), "all": (0, None)},
}


def price_bound(price: float, rng: random.Random) -> tuple[float, str]:
  """(price_upper, instruction suffix): the larger of two of the four thresholds above price."""
  above = [t for t in PRICE_THRESHOLDS if t > price][:4]
  if len(above) < 2:
    return NO_PRICE_BOUND, ""
  _, upper = sorted(rng.sample(above, 2))
  return upper, f", and price lower than {upper:.2f} dollars"


def _goal(product: Mapping[str, Any], **fields) -> dict[str, Any]:
  return dict(
    asin=product["asin"],
    category=product["category"],
    query=product["query"],
    name=product["name"],
    product_category=product["product_category"],
    **fields,
  )


def synthetic_goals(
  products: Sequence[Mapping[str, Any]], prices: Mapping[str, float], rng: random.Random
) -> list[dict[str, Any]]:
  """One goal per option combination of every product with a synthetic instruction."""
  goals = []
  attribute_counts: collections.Counter = collections.Counter()
  for product in products:
    base = product.get("instruction_text")
    if base is None:
      continue
    attributes = list(product["instruction_attributes"] or [])
    if not attributes:
      raise ValueError(f"product {product['asin']}: an instruction without instruction_attributes")
    upper, price_text = price_bound(prices[product["asin"]], rng)
    names = sorted(product["options"])
    for combination in itertools.product(*(product["options"][n] for n in names)):
      goal_options = dict(zip(names, combination))
      option_text = ", and ".join(f"{k}: {v}" for k, v in goal_options.items())
      option_text = f" with {option_text}" if option_text else ""
      goals.append(
        _goal(
          product,
          instruction_text=f"{base}{option_text}{price_text}",
          instruction_base=f"{base}{option_text}",
          attributes=attributes,
          price_upper=upper,
          goal_options=goal_options,
        )
      )
      attribute_counts.update(attributes)
  for goal in goals:
    goal["weight"] = sum(1.0 / attribute_counts[a] for a in goal["attributes"]) / len(
      goal["attributes"]
    )
  return goals


def human_goals(
  products: Sequence[Mapping[str, Any]], prices: Mapping[str, float], rng: random.Random
) -> list[dict[str, Any]]:
  """One goal per human instruction that names at least one attribute (a fresh bound each)."""
  goals = []
  for product in products:
    for record in product.get("instructions", ()):
      attributes = list(record.get("instruction_attributes") or [])
      if not attributes:
        continue
      upper, price_text = price_bound(prices[product["asin"]], rng)
      base = record["instruction"].strip(".")
      goals.append(
        _goal(
          product,
          instruction_text=base + price_text,
          instruction_base=base,
          attributes=attributes,
          price_upper=upper,
          goal_options=list(record.get("instruction_options") or []),
          weight=1.0,
        )
      )
  return goals


def shuffled(goals: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
  goals = list(goals)
  random.Random(seed).shuffle(goals)
  for idx, goal in enumerate(goals):
    goal["idx"] = idx
  return goals


def split_range(source: str, split: str, n_goals: int) -> range:
  """Goal indices of a split; fails when the goal list is too short to hold it."""
  try:
    start, stop = SPLIT_RANGES[source][split]
  except KeyError:
    raise ValueError(f"split={split!r}; expected one of {sorted(SPLIT_RANGES['human'])}") from None
  stop = n_goals if stop is None else stop
  if stop > n_goals or start >= stop:
    raise ValueError(
      f"split {split!r} needs goals [{start}, {stop}) but the {source} goal list has {n_goals}"
    )
  return range(start, stop)
