"""Expert-loss weight schedules w_i(t).

``progress`` is the fraction of training done, in [0, 1]. All schedules return one weight per
agent ``[N]``; only ``adaptive`` differs between agents.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class ScheduleParams(NamedTuple):
    """Static schedule settings (from ``TrainConfig``)."""

    kind: str  # constant | linear | exponential | adaptive | greedy | qfilter
    weight: float  # w(0)
    decay_frac: float  # linear: w reaches 0 at this progress
    half_life_frac: float  # exponential: half-life in progress units
    adaptive_tol: float  # adaptive: relative gap at which the weight starts to fade


def expert_weight(
    params: ScheduleParams,
    progress: jax.Array,
    return_ema: jax.Array,
    return_seen: jax.Array,
    demo_return: jax.Array,
) -> jax.Array:
    """Per-agent expert weight ``[N]``.

    * ``constant``: ``w0``.
    * ``linear``: ``w0 * max(0, 1 - progress / decay_frac)``.
    * ``exponential``: ``w0 * 0.5 ** (progress / half_life_frac)``.
    * ``adaptive``: ``w0 * clip(gap_i / tol, 0, 1)`` with the relative gap
      ``gap_i = (R_demo_i - R_i) / (|R_demo_i| + 1)`` between the return of agent i's
      demonstrations and an EMA of agent i's own episodic return ``R_i``: full weight while the
      agent is more than ``tol`` behind its demonstrations, fading linearly to 0 as it catches
      up, 0 once it passes them. Full weight until the agent has finished an episode.
    * ``greedy``: the same fade, but ``R_i`` is agent i's return in the latest periodic greedy
      evaluation (``Trainer.evaluate_state``): a deterministic policy against deterministic
      demonstrations, so sampling noise alone does not keep the weight up. Full weight until
      the first evaluation.
    * ``qfilter``: ``w0``; the per-sample filter of ``Trainer.loss`` decides which
      demonstrations are imitated.
    """
    n = demo_return.shape[0]
    w0 = jnp.full((n,), params.weight, jnp.float32)
    progress = jnp.asarray(progress, jnp.float32)
    if params.kind == "constant":
        return w0
    if params.kind == "linear":
        return w0 * jnp.maximum(0.0, 1.0 - progress / params.decay_frac)
    if params.kind == "exponential":
        return w0 * 0.5 ** (progress / params.half_life_frac)
    if params.kind == "qfilter":  # the per-sample filter does the work (Trainer.loss)
        return w0
    if params.kind in ("adaptive", "greedy"):
        gap = (demo_return - return_ema) / (jnp.abs(demo_return) + 1.0)
        fade = jnp.clip(gap / params.adaptive_tol, 0.0, 1.0)
        return w0 * jnp.where(return_seen, fade, 1.0)
    raise ValueError(f"unknown expert schedule {params.kind!r}")
