"""LEED's expert loss: −log π_i(a_demo | o_demo) on agent i's own demonstrations."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from leed_jax.po.ppo import log_prob


def expert_loss(logits: jax.Array, action: jax.Array, weight: jax.Array) -> jax.Array:
    """Per-agent weighted negative log-likelihood of the demonstrated actions.

    logits ``[B, N, A]`` (the policy's masked logits on the demo observations), action
    ``[B, N]``, weight ``[B, N]`` (0 for padding, or for an agent without demonstrations).
    Returns ``[N]``: each agent's mean over its own weighted samples (0 if it has none).
    """
    nll = -log_prob(logits, action)
    # A demonstrated action that the mask forbids would give a loss of ~1e9; it carries no
    # information about the policy, so it is dropped rather than allowed to blow up the loss.
    weight = jnp.where(nll < 1e8, weight, 0.0).astype(logits.dtype)
    return (nll * weight).sum(0) / jnp.maximum(weight.sum(0), 1e-8)
