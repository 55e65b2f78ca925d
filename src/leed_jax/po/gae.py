"""Generalised advantage estimation over a rollout ``[T, ...]``."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def gae(
    reward: jax.Array,
    value: jax.Array,
    done: jax.Array,
    last_value: jax.Array,
    gamma: float,
    lam: float,
) -> tuple[jax.Array, jax.Array]:
    """Advantages and value targets.

    reward, value, done: ``[T, ...]`` — ``done[t]`` means the state after step ``t`` is
    terminal (or a reset), so nothing is bootstrapped across it. last_value: ``[...]``, the
    value of the state after the last step. Returns ``(advantage, target)``, both ``[T, ...]``,
    with ``target = advantage + value``.
    """
    not_done = 1.0 - done.astype(value.dtype)
    next_value = jnp.concatenate([value[1:], last_value[None]], axis=0)
    delta = reward + gamma * next_value * not_done - value

    def back(carry, xs):
        delta_t, nd_t = xs
        adv = delta_t + gamma * lam * nd_t * carry
        return adv, adv

    _, adv = jax.lax.scan(back, jnp.zeros_like(last_value), (delta, not_done), reverse=True)
    return adv, adv + value
