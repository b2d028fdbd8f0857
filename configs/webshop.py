"""The embedded default on WebShop: a synthetic catalogue unless env.data_dir names real data.

  python -m jerp_jax.evaluate --config=configs/webshop.py --policy=expert --split=test \
      --config.env.data_dir=../shared/webshop/data
"""

import ml_collections

from configs import default
from jerp_jax.envs import webshop


def get_config() -> ml_collections.ConfigDict:
  c = default.get_config()
  c.env = webshop.get_config()
  c.env.max_steps = 8  # CPU-sized, like the ALFWorld default
  # Not the ALFWorld default's warm start and admissible-only answers: WebShop's search takes
  # free text, which no list of admissible actions holds. Untuned on WebShop.
  c.agent.admissible_only = False
  c.jerp.warm_start.steps = 0
  return c
