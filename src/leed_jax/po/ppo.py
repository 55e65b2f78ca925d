"""PPO loss terms, per agent.

Every term is averaged over one agent's own samples (``[B, N] -> [N]``); the trainer sums the
agents' losses, so agent ``i``'s gradient depends on agent ``i``'s data only. The policy
loss, the entropy and the advantage normalisation use decision steps only (steps where the
action mattered); the value loss uses all steps.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class PPOTerms(NamedTuple):
    """Per-agent loss terms, each ``[N]``."""

    policy: jax.Array
    value: jax.Array
    entropy: jax.Array
    approx_kl: jax.Array
    clip_frac: jax.Array


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of ``x [B, N]`` over axis 0 where ``mask``; 0 for an agent without any sample."""
    mask = mask.astype(x.dtype)
    return (x * mask).sum(0) / jnp.maximum(mask.sum(0), 1.0)


def log_prob(logits: jax.Array, action: jax.Array) -> jax.Array:
    """``log π(action)``: logits ``[..., A]``, action ``[...]`` int -> ``[...]``."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    return jnp.take_along_axis(logp, action[..., None].astype(jnp.int32), axis=-1)[..., 0]


def entropy(logits: jax.Array) -> jax.Array:
    """Entropy of the (masked) categorical ``[..., A] -> [...]``."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -(jnp.exp(logp) * logp).sum(-1)


def normalize_advantage(adv: jax.Array, mask: jax.Array) -> jax.Array:
    """Per-agent standardisation of ``adv [B, N]`` over that agent's decision steps."""
    mean = masked_mean(adv, mask)
    var = masked_mean(jnp.square(adv - mean), mask)
    return (adv - mean) / (jnp.sqrt(var) + 1e-8)


def ppo_terms(
    logits: jax.Array,
    value: jax.Array,
    action: jax.Array,
    old_log_prob: jax.Array,
    old_value: jax.Array,
    advantage: jax.Array,
    target: jax.Array,
    decision: jax.Array,
    clip_eps: float,
    normalize: bool = True,
) -> PPOTerms:
    """Clipped-surrogate PPO terms on a minibatch.

    logits ``[B, N, A]`` (masked), value ``[B, N]``, action/old_log_prob/old_value/advantage/
    target/decision ``[B, N]``. Returns per-agent terms ``[N]``: the policy loss (to
    minimise), the clipped value loss ``0.5 * max((v - R)^2, (v_clip - R)^2)``, the entropy
    (to maximise), an approximate KL and the fraction of clipped ratios.
    """
    if normalize:
        advantage = normalize_advantage(advantage, decision)
    new_log_prob = log_prob(logits, action)
    log_ratio = new_log_prob - old_log_prob
    ratio = jnp.exp(log_ratio)
    surrogate = jnp.minimum(
        ratio * advantage, jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantage
    )
    value_clipped = old_value + jnp.clip(value - old_value, -clip_eps, clip_eps)
    value_loss = 0.5 * jnp.maximum(jnp.square(value - target), jnp.square(value_clipped - target))
    all_steps = jnp.ones_like(decision)
    return PPOTerms(
        policy=-masked_mean(surrogate, decision),
        value=masked_mean(value_loss, all_steps),
        entropy=masked_mean(entropy(logits), decision),
        approx_kl=masked_mean((ratio - 1.0) - log_ratio, decision),
        clip_frac=masked_mean((jnp.abs(ratio - 1.0) > clip_eps).astype(value.dtype), decision),
    )
