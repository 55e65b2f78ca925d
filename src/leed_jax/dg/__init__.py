"""leed_jax.dg."""
