"""``python -m leed_jax.dg`` — the same CLI as ``python -m leed_jax.demos``."""

from leed_jax.dg.cli import main

raise SystemExit(main())
