"""WebShop (Yao et al., 2022) as a jerp_jax text environment, without Flask, Java or pyserini.

The registry's entry points live here: `get_config()`, `SPLITS`, `TASK_TYPES`,
`load_tasks(config, split)` and `make_env(config)`. A task is one goal of the shop's goal list
(after upstream's seed-233 shuffle); its key is `goal_<index>` and its type the goal product's
category. With `data_dir=''` the shop is a synthetic catalogue generated from a seed and cached
under `cache_dir`; with a folder of the standard files (items_shuffle_1000*.json or
items_shuffle.json, items_ins_v2*.json, items_human_ins*.json, title_nouns*.json) it is WebShop's.

This package never imports the model or the sampler. What each module owns: data.py (files),
goals.py (goals, splits), search.py (BM25), pages.py (observations, action grammar), reward.py
(the purchase reward), nouns.py (spaCy nouns of names), synthetic.py (the synthetic catalogue),
env.py (the shop and the session state machine, the oracle).
"""

from __future__ import annotations

from typing import Any, Mapping

import ml_collections

from jerp_jax.envs import base
from jerp_jax.envs.webshop import goals as goals_lib
from jerp_jax.envs.webshop.env import CATEGORIES, ENV_NAME, OTHER_CATEGORY, WebShopEnv, get_shop

SPLITS = ("train", "eval", "test", "all")
TASK_TYPES = (*CATEGORIES, OTHER_CATEGORY)


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = ENV_NAME
  c.max_steps = 15
  # '' = the synthetic catalogue; else a folder of WebShop files, e.g. /work/shared/webshop/data.
  c.data_dir = ""
  # File names inside data_dir; '' picks the first that exists of the standard names.
  c.products_file = (
    ""  # items_shuffle_1000.json, ...reconstructed.json, ...loaded.json, items_shuffle.json
  )
  c.attributes_file = ""  # items_ins_v2_1000.json, items_ins_v2.json
  c.human_file = ""  # items_human_ins.json, items_human_ins.subset_1000.json (human goals only)
  c.title_nouns_file = ""  # title_nouns*.json: used when spaCy is not installed
  c.num_products = 0  # keep only the first n records of the products file; 0 = all
  c.goal_source = "synthetic"  # synthetic (the 1000-product setting) | human (full catalogue)
  c.price_seed = 233  # range prices and price bounds (upstream: unseeded; AgentGym: 233)
  c.shuffle_seed = 233  # goal order (upstream and AgentGym: 233; verl-agent: the env seed)
  c.synthetic_seed = 0
  c.synthetic_num_products = 1000
  c.observation_mode = "text"  # text | text_rich
  c.show_attrs = False  # an Attributes button on item pages (upstream default: off)
  c.cache_dir = ""  # '' = ~/.cache/jerp_jax/webshop
  return c


def _get(config: Any, key: str) -> Any:
  return config[key] if isinstance(config, Mapping) else getattr(config, key)


def _as_mapping(config: Any) -> Mapping[str, Any]:
  if isinstance(config, Mapping):
    return config
  if hasattr(config, "to_dict"):
    return config.to_dict()
  raise TypeError(f"env config must be a mapping or a ConfigDict, got {type(config).__name__}")


def load_tasks(config: Any, split: str) -> list[base.Task]:
  """The goals of a split in environment order, as tasks whose payload is the goal index."""
  if split not in SPLITS:
    raise ValueError(f"split={split!r}; expected one of {SPLITS}")
  config = _as_mapping(config)
  shop = get_shop(config)
  source = shop.settings.goal_source
  return [
    base.Task(
      env=ENV_NAME,
      split=split,
      key=f"goal_{i}",
      task_type=shop.task_type(shop.goals[i]),
      payload=i,
    )
    for i in goals_lib.split_range(source, split, len(shop.goals))
  ]


def make_env(config: Any) -> WebShopEnv:
  """An environment over this process's shop (built on first use; `config` may be a dict)."""
  config = _as_mapping(config)
  return WebShopEnv(
    get_shop(config),
    observation_mode=config.get("observation_mode", "text"),
    show_attrs=bool(config.get("show_attrs", False)),
  )


__all__ = ["SPLITS", "TASK_TYPES", "WebShopEnv", "get_config", "load_tasks", "make_env"]
