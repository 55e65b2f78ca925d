"""Env wrappers that keep the stacked protocol."""

from __future__ import annotations

import jax
import jax.numpy as jnp


class AutoResetWrapper:
    """Resets the env when an episode ends (all agents done), inside ``step``, so that a
    ``lax.scan`` over steps runs through any number of episodes.

    ``info["episode_end"]`` (scalar bool) marks the step that ended an episode; that step's
    ``info["metrics"]`` and ``done`` describe the finished episode, while the returned obs and
    state are already those of the new one; ``info["final_obs"]`` keeps the observation the
    step reached before the reset (and ``info["final_global_state"]`` its global state, for
    envs that report time-limit truncation in ``info["truncated"]``).
    """

    def __init__(self, env):
        self.env = env

    def __getattr__(self, name):  # spec, family, name, network, ...
        return getattr(self.env, name)

    def reset(self, key):
        return self.env.reset(key)

    def step(self, key, state, actions):
        key_step, key_reset = jax.random.split(key)
        obs, state, reward, done, info = self.env.step(key_step, state, actions)
        episode_end = jnp.all(done)
        # The observation reached before the reset: the trainer bootstraps V(final_obs) where
        # an episode is cut by a time limit (info["truncated"]); unused, jit drops it.
        info = dict(info, episode_end=episode_end, final_obs=obs)
        if "truncated" in info:
            info["final_global_state"] = self.env.global_state(state)
        obs_reset, state_reset = self.env.reset(key_reset)
        pick = lambda new, old: jnp.where(episode_end, new, old)
        state = jax.tree_util.tree_map(pick, state_reset, state)
        obs = pick(obs_reset, obs)
        return obs, state, reward, done, info

    def avail_actions(self, state):
        return self.env.avail_actions(state)

    def global_state(self, state):
        return self.env.global_state(state)
