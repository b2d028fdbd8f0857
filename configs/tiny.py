"""A random-weight model with SmolLM2's vocabulary: fast to compile, for tests and smoke runs."""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  c = default.get_config()
  c.model.preset = "tiny"
  c.model.random_init = True
  c.model.max_seq_len = 512
  c.sampling.max_new_tokens = 16
  return c
