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
    bootstrap: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Advantages and value targets.

    reward, value, done: ``[T, ...]`` — ``done[t]`` means the state after step ``t`` is
    terminal (or a reset), so nothing is bootstrapped across it. last_value: ``[...]``, the
    value of the state after the last step. bootstrap: ``[T, ...]`` or None, ``V(s_{t+1})``
    where step ``t`` ended an episode by a time limit rather than a true end (0 elsewhere):
    the one-step target there is ``r + γ V(s_T)`` instead of ``r`` (Pardo et al. 2018,
    "Time Limits in Reinforcement Learning"), while the GAE recursion still stops at the
    episode boundary. Returns ``(advantage, target)``, both ``[T, ...]``, with
    ``target = advantage + value``.
    """
    not_done = 1.0 - done.astype(value.dtype)
    next_value = jnp.concatenate([value[1:], last_value[None]], axis=0)
    delta = reward + gamma * next_value * not_done - value
    if bootstrap is not None:
        delta = delta + gamma * bootstrap * (1.0 - not_done)

    def back(carry, xs):
        delta_t, nd_t = xs
        adv = delta_t + gamma * lam * nd_t * carry
        return adv, adv

    _, adv = jax.lax.scan(back, jnp.zeros_like(last_value), (delta, not_done), reverse=True)
    return adv, adv + value
