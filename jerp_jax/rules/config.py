"""The `rules` block of an experiment config: every rule-side default, composed from its owners.

    config.rules = rules.get_config()

Each sub-block is owned (defaults and validation) by its module: `pool` (capacity, text length,
scoring), `retrieval` (mode, top_k, exact/ScaNN index), `embed` (embedding weights and batching),
`reviser` (which weights write, generation, limits) and `reference` (reference trajectories).
`validate_config` fails at start-up naming the field, its value and what was expected.
"""

from __future__ import annotations

import ml_collections

from jerp_jax.rules import embed, index, pool, reference, reviser


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.pool = pool.get_config()
  c.retrieval = index.get_config()
  c.embed = embed.get_config()
  c.reviser = reviser.get_config()
  c.reference = reference.get_config()
  return c


def validate_config(c: ml_collections.ConfigDict) -> None:
  pool.validate_config(c.pool, "rules.pool")
  index.validate_config(c.retrieval, "rules.retrieval")
  embed.validate_config(c.embed, "rules.embed")
  reviser.validate_config(c.reviser, "rules.reviser")
  reference.validate_config(c.reference, "rules.reference")
