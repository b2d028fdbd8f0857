"""ALFWorld as a jerp_jax environment: the registry interface (config, splits, tasks, env).

Tasks come from real ALFWorld game files when `data_dir` is set (the standard
`json_2.1.1/{train,valid_seen,valid_unseen}` layout) and from games generated offline into an
on-disk cache when it is empty. Importing this module does not import TextWorld; building an
environment (make_env) or generating games does. Nothing here imports the model.
"""

from __future__ import annotations

from typing import Any, Mapping

import ml_collections

from jerp_jax.envs import base
from jerp_jax.envs.alfworld import data as data_lib

SPLITS = data_lib.SPLITS
TASK_TYPES = data_lib.TASK_TYPES


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "alfworld"
  c.data_dir = ""  # a folder holding json_2.1.1 (or json_2.1.1 itself); "" = generated games
  c.max_steps = 50
  c.task_types = (1, 2, 3, 4, 5, 6)  # ALFWorld's ids (or names), see TASK_TYPES
  c.cache_size = 128  # compiled games each env process keeps for fast resets (~3-4 MB each)

  g = c.generated = ml_collections.ConfigDict()
  g.num_train = 120
  g.num_eval_in_distribution = 30
  g.num_eval_out_of_distribution = 30
  g.seed = 0
  g.max_receptacles = 30  # receptacle instances per room
  g.min_distractors = 8  # objects besides the task's own
  g.max_distractors = 25
  g.max_target_copies = 3  # objects of the target type
  g.cache_dir = "~/.cache/jerp_jax/alfworld"
  return c


def load_tasks(config, split: str) -> list[base.Task]:
  """The split's playable games, sorted by key; generates them first when data_dir is empty."""
  data_lib.split_folder(split)  # an unknown split fails before any work
  # Item access: `config` may be a ConfigDict or a plain dict.
  task_types = data_lib.task_type_names(config["task_types"])
  if config["data_dir"]:
    root = config["data_dir"]
  else:
    from jerp_jax.envs.alfworld import gen

    root = gen.ensure_generated(config["generated"], split, task_types)
  split_dir = data_lib.resolve_split_dir(root, split)
  return data_lib.discover(split_dir, task_types, split)


def make_env(config: Mapping[str, Any]) -> base.TextEnv:
  """An ALFWorld env (without the step limit: the registry adds it). `config` may be a dict."""
  from jerp_jax.envs.alfworld import engine

  cache_size = config.get("cache_size", 128)
  if not isinstance(cache_size, int) or cache_size < 1:
    raise ValueError(f"env.cache_size={cache_size!r}; expected a positive integer")
  return engine.AlfWorldEnv(cache_size=cache_size)
