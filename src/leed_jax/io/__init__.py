"""leed_jax.io."""
