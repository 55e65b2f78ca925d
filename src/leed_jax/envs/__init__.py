"""leed_jax.envs."""
