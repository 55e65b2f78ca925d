"""Rollouts of the stacked policy in a batch of auto-resetting envs, as one ``lax.scan``."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from leed_jax.po.networks import ActorCritic, Params, critic_input
from leed_jax.po.ppo import log_prob
from leed_jax.types import Transition


class EnvCarry(NamedTuple):
    """What a rollout carries from one step to the next, for ``E`` envs."""

    state: Any  # env state, batched on a leading [E] axis
    obs: jax.Array  # [E, N, D]
    ep_return: jax.Array  # [E, N] per-agent return of the episode under way


class Rollout(NamedTuple):
    """One rollout, axes ``[T, E, N, ...]``."""

    transition: Transition  # obs [T,E,N,D], action, avail [T,E,N,A], reward, done, decision
    log_prob: jax.Array  # [T, E, N] of the sampled action
    value: jax.Array  # [T, E, N]
    global_state: jax.Array | None  # [T, E, G] (centralised critic only)
    episode_end: jax.Array  # [T, E] bool: an episode ended at this step
    episode_return: jax.Array  # [T, E, N] returns of the episode that ended here (else 0)
    metrics: dict  # name -> [T, E]: the env's metrics (those of the finished episode at ends)
    # [T, E, N] V(s_T) of the state an episode reached when the time limit cut it (0 elsewhere),
    # for envs that report truncation (JaxMARL: obs carry no time); None for the others
    # (traffic: time is observed and the horizon is a real end).
    bootstrap: jax.Array | None = None


def reset_envs(env, key: jax.Array, num_envs: int) -> EnvCarry:
    obs, state = jax.vmap(env.reset)(jax.random.split(key, num_envs))
    return EnvCarry(state, obs, jnp.zeros(obs.shape[:2], jnp.float32))


def rollout(
    env,
    policy: ActorCritic,
    params: Params,
    carry: EnvCarry,
    key: jax.Array,
    num_steps: int,
    *,
    centralised: bool = False,
    greedy: bool = False,
) -> tuple[EnvCarry, Rollout]:
    """Run ``num_steps`` steps of ``E`` auto-resetting envs (``info["episode_end"]``).

    Actions are sampled from the masked policy (``greedy``: its most likely action), so an
    unavailable action is never taken.
    """
    num_envs = carry.obs.shape[0]

    def step(carry: EnvCarry, key):
        k_act, k_env = jax.random.split(key)
        avail = jax.vmap(env.avail_actions)(carry.state)  # [E, N, A]
        gs = jax.vmap(env.global_state)(carry.state) if centralised else None  # [E, G]
        logits = policy.logits(params, carry.obs, avail)  # [E, N, A]
        value = policy.value(params, critic_input(carry.obs, gs))  # [E, N]
        if greedy:
            action = jnp.argmax(logits, axis=-1)
        else:
            action = jax.random.categorical(k_act, logits, axis=-1)
        action = action.astype(jnp.int32)
        obs, state, reward, done, info = jax.vmap(env.step)(
            jax.random.split(k_env, num_envs), carry.state, action
        )
        reward = reward.astype(jnp.float32)
        ep_return = carry.ep_return + reward
        end = info["episode_end"]  # [E]
        bootstrap = None
        if "truncated" in info:  # static: the env reports time-limit ends
            final_gs = info["final_global_state"] if centralised else None
            final_v = policy.value(params, critic_input(info["final_obs"], final_gs))  # [E, N]
            cut = info["truncated"] & end  # [E]
            bootstrap = jnp.where(cut[:, None], final_v, 0.0)
        out = Rollout(
            transition=Transition(carry.obs, action, avail, reward, done, info["decision"]),
            log_prob=log_prob(logits, action),
            value=value,
            global_state=gs,
            episode_end=end,
            episode_return=jnp.where(end[:, None], ep_return, 0.0),
            metrics={k: jnp.asarray(v, jnp.float32) for k, v in info["metrics"].items()},
            bootstrap=bootstrap,
        )
        carry = EnvCarry(state, obs, jnp.where(end[:, None], 0.0, ep_return))
        return carry, out

    return jax.lax.scan(step, carry, jax.random.split(key, num_steps))
