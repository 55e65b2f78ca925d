"""Typed containers shared by the DG stage (expert rollouts) and the PO stage (own rollouts)."""

from __future__ import annotations

from typing import NamedTuple

import jax


class Transition(NamedTuple):
    """Per-step, per-agent rollout record. Leading axes ``[T, N]`` (time, agent), or
    ``[T, E, N]`` with a batch of ``E`` parallel envs."""

    obs: jax.Array  # [T, N, D] float32
    action: jax.Array  # [T, N] int32
    avail: jax.Array  # [T, N, A] bool
    reward: jax.Array  # [T, N] float32
    done: jax.Array  # [T, N] bool
    decision: jax.Array  # [T, N] bool — the action mattered (traffic: at an intersection)
