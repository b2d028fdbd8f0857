"""jerp_jax: Joint learning of Experiential Rules and Policies, on JAX/Flax."""
