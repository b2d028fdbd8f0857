"""The embedded default: SmolLM2-135M-Instruct from the installed GGUF, on whatever devices exist.

Runs on a fresh 2-core CPU with no download. Override any field from the command line, e.g.
`--config.model.path=/data/Qwen2.5-1.5B-Instruct --config.model.preset=qwen2.5-1.5b-instruct`.
"""

import ml_collections

from jerp_jax import rules
from jerp_jax.envs import actions, alfworld, pool
from jerp_jax.model import config as model_config
from jerp_jax.parallel import mesh
from jerp_jax.sampling import sampler


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = model_config.get_config()
  c.mesh = mesh.get_config()
  c.sampling = sampler.get_config()
  c.sampling.max_new_tokens = 64
  c.sampling.temperature = 0.0
  # ALFWorld games generated offline (env.data_dir='' ); point data_dir at a json_2.1.1 release
  # for the real games. `configs/webshop.py` swaps in WebShop.
  c.env = alfworld.get_config()
  c.pool = pool.get_config()
  c.actions = actions.get_config()
  c.rules = rules.get_config()
  # What `python -m jerp_jax.main --mode=generate` answers (the main job until the JERP loop).
  c.generate = ml_collections.ConfigDict()
  c.generate.prompts = (
    "What is the capital of France?",
    "You are in a kitchen. Your task is to: put a clean mug in the coffeemachine. "
    "What is your first action?",
  )
  return c
