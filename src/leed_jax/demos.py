"""``python -m leed_jax.demos``: the DG-stage CLI (see :mod:`leed_jax.dg.cli`)."""

from leed_jax.dg.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
