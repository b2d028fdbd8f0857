"""Environments by name. Each entry is a module that provides:

  get_config() -> ml_collections.ConfigDict   # with `name`, `max_steps`, `data_dir`, ...
  SPLITS: tuple[str, ...]                      # split names this environment accepts
  TASK_TYPES: tuple[str, ...]                  # task types, in reporting order
  load_tasks(config, split) -> list[Task]      # fails clearly on a bad folder, split or type
  make_env(config) -> TextEnv                  # called inside pool workers, config as a dict

Modules are imported lazily so that choosing WebShop never imports TextWorld and vice versa.
A dotted module path is accepted as a name too, for environments that live outside the package.
"""

from __future__ import annotations

import importlib
import types
from typing import Any, Mapping

import ml_collections

from jerp_jax.envs import base

ENVS = {
  "alfworld": "jerp_jax.envs.alfworld",
  "webshop": "jerp_jax.envs.webshop",
}


def env_module(name: str) -> types.ModuleType:
  if name in ENVS:
    return importlib.import_module(ENVS[name])
  if "." in name:
    return importlib.import_module(name)
  raise ValueError(
    f"env.name={name!r} is not a known environment; expected one of {list(ENVS)} "
    "or a dotted module path"
  )


def make_env(config: Mapping[str, Any]) -> base.TextEnv:
  """Builds the named environment wrapped in its step limit. `config` may be a plain dict."""
  env = env_module(config["name"]).make_env(config)
  return base.TimeLimit(env, int(config["max_steps"]))


def load_tasks(config, split: str) -> list[base.Task]:
  return env_module(config.name).load_tasks(config, split)


def check_split(env_name: str, split: str, field: str) -> str:
  """`split` if the env has it; else a one-line ValueError naming `field`."""
  splits = env_module(env_name).SPLITS
  if split not in splits:
    raise ValueError(f"{field}={split!r} is not a split of {env_name}; expected one of {splits}")
  return split


def load_split(config, split: str, field: str, limit: int = 0) -> list[base.Task]:
  """The first `limit` tasks (0: all) of a split that has some; else a one-line ValueError."""
  tasks = load_tasks(config, check_split(config.name, split, field))[: limit or None]
  if not tasks:
    raise ValueError(f"{field}={split!r}: that split of {config.name} has no tasks")
  return tasks


EXPERT_MAX_STEPS = 50  # ALFWorld's episode limit: every expert walkthrough fits


def expert_env(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The env block for the expert: its demonstrations are not bound by the agent's (CPU-sized)
  step budget."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.max_steps = max(config.max_steps, EXPERT_MAX_STEPS)
  return config
