"""Optimisers that keep agents independent.

With per-agent parameters (leading axis ``[N, ...]`` on every leaf) the whole optax
transformation — gradient clipping included — is vmapped over the agent axis: each agent's
gradient is clipped by its own global norm, since one norm across agents would let one agent's
large gradient shrink every other agent's step.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import optax


class Optimizer(NamedTuple):
    init: Any  # params -> opt_state
    update: Any  # (grads, opt_state, params) -> (updates, opt_state)


def make_optimizer(
    lr: float | optax.Schedule, max_grad_norm: float, per_agent: bool
) -> Optimizer:
    tx = optax.chain(optax.clip_by_global_norm(max_grad_norm), optax.adam(lr, eps=1e-5))
    if not per_agent:
        return Optimizer(tx.init, tx.update)
    return Optimizer(jax.vmap(tx.init), jax.vmap(tx.update))


def per_agent_norm(tree: Any) -> jax.Array:
    """Global norm of each agent's slice of a per-agent pytree -> ``[N]``."""
    return jax.vmap(optax.tree.norm)(tree)
