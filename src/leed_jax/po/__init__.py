"""leed_jax.po."""
