"""Fixtures shared by the ALFWorld tests: real games from the shared folder, generated games."""

import pathlib

import pytest

from jerp_jax.envs import alfworld
from jerp_jax.envs.alfworld import data as data_lib


@pytest.fixture(scope="session")
def real_root(shared_dir) -> pathlib.Path:
  return shared_dir / "alfworld"


@pytest.fixture(scope="session")
def real_tasks(real_root):
  config = alfworld.get_config()
  config.data_dir = str(real_root)
  return alfworld.load_tasks(config, "train")


@pytest.fixture(scope="session")
def real_subset(real_tasks):
  """The first two games of each task type (12 games): enough to cover every type quickly."""
  subset = []
  for task_type in data_lib.TASK_TYPES:
    subset += [t for t in real_tasks if t.task_type == task_type][:2]
  return subset


@pytest.fixture(scope="session")
def generated_root(tmp_path_factory) -> pathlib.Path:
  """Six generated games, one per task type (seed 7), in the standard layout."""
  from jerp_jax.envs.alfworld import gen

  root = tmp_path_factory.mktemp("generated")
  gen.generate_split(root / "json_2.1.1" / "train", 6, seed=7, progress=False)
  return root
