"""Every shipped config passes the checks a run makes before loading a model."""

import importlib
import os

import pytest
from flax.traverse_util import flatten_dict

from jerp_jax import jerp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = sorted(
  f[:-3] for f in os.listdir(os.path.join(ROOT, "configs")) if f.endswith(".py") and f[0] != "_"
)


@pytest.mark.parametrize("name", NAMES)
def test_every_config_validates(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  config.mesh.shape = (1, 1, -1)  # the tests' 8 host devices on the tensor axis: rows unsplit
  jerp.validate(config)


def test_the_learning_config_is_the_default_with_more_episodes_and_games():
  from configs import default, learning

  base, bench = (flatten_dict(m.get_config().to_dict(), sep=".") for m in (default, learning))
  assert {k: bench[k] for k in bench if bench[k] != base.get(k)} == {
    "env.generated.num_eval_in_distribution": 32,
    "jerp.eval_limit": 32,
    "jerp.tasks_per_epoch": 16,
    "jerp.group_size": 4,
    "jerp.max_update_turns": 64,
    "rl.advantages.estimator": "gigpo",
  }
