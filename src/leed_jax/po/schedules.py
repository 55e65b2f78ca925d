"""Expert-loss weight schedules w_i(t), and the return statistics they read.

``progress`` is the fraction of training done, in [0, 1]. All schedules return one weight per
agent ``[N]``; ``adaptive`` and ``greedy`` differ between agents. Every method has a schedule
(``schedule_of``): leed the configured one, bc ``constant`` (imitation is all there is), ippo
and mappo ``none`` (weight 0). ``observe_returns`` keeps the running average of each agent's
own episodic return that ``adaptive`` compares with the demonstrations.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class ScheduleParams(NamedTuple):
    """Static schedule settings (from ``TrainConfig``)."""

    kind: str  # none | constant | linear | exponential | adaptive | greedy | qfilter
    weight: float  # w(0)
    decay_frac: float  # linear: w reaches 0 at this progress
    half_life_frac: float  # exponential: half-life in progress units
    adaptive_tol: float  # adaptive: relative gap at which the weight starts to fade
    return_rate: float = 0.05  # adaptive: EMA rate of each agent's own episodic return


def schedule_of(config) -> ScheduleParams:
    """The schedule of a ``TrainConfig``'s method: leed's configured one, ``constant`` for bc,
    ``none`` (weight 0) for ippo and mappo."""
    kind = {"leed": config.expert_schedule, "bc": "constant"}.get(config.algo, "none")
    return ScheduleParams(
        kind=kind,
        weight=config.expert_weight,
        decay_frac=config.expert_decay_frac,
        half_life_frac=config.expert_half_life_frac,
        adaptive_tol=config.expert_adaptive_tol,
        return_rate=config.expert_return_ema,
    )


def observe_returns(
    params: ScheduleParams,
    return_ema: jax.Array,
    return_seen: jax.Array,
    episode_return: jax.Array,
    episode_end: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Fold one rollout's finished episodes into each agent's return EMA (the ``adaptive``
    schedule's ``R_i``): ``return_ema [N]``, ``return_seen [N]`` (an episode has ended), from
    ``episode_return [T, E, N]`` (an agent's return where its episode ended, else 0) and
    ``episode_end [T, E]``. The first episodes set the EMA; a rollout without an ended episode
    leaves it as it was. Kept by every method (it is part of the state), read by ``adaptive``."""
    ends = episode_end.astype(jnp.float32)  # [T, E]
    n_end = ends.sum()
    agent_mean = episode_return.sum((0, 1)) / jnp.maximum(n_end, 1.0)  # [N]
    ema = jnp.where(
        return_seen, return_ema + params.return_rate * (agent_mean - return_ema), agent_mean
    )
    return jnp.where(n_end > 0, ema, return_ema), return_seen | (n_end > 0)


def expert_weight(
    params: ScheduleParams,
    progress: jax.Array,
    return_ema: jax.Array,
    return_seen: jax.Array,
    demo_return: jax.Array | None,
) -> jax.Array:
    """Per-agent expert weight ``[N]`` (``return_ema``, ``return_seen``: ``[N]``;
    ``demo_return [N]``, None for ``none``).

    * ``none``: 0 (ippo, mappo: no expert loss).
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
    n = return_ema.shape[0]
    if params.kind == "none":
        return jnp.zeros((n,), jnp.float32)
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
