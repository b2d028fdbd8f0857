"""The rule side of JERP: rule pool, retrieval index, embeddings, reviser, reference trajectories."""

from jerp_jax.rules.config import get_config, validate_config

__all__ = ["get_config", "validate_config"]
