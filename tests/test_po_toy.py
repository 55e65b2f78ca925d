"""A tiny env that follows the leed_jax env protocol, for the PO-stage tests (and its own
contract checks). Other test_po_* / test_run_* files import ``ToyEnv`` and ``toy_demos``.

Each agent sees a one-hot cue; agent i is rewarded (1) for the action ``(cue + i) % (A - 1)``,
a personal rule, so every agent must learn its own policy. The last action is never
available. Agents decide only at even steps (odd steps are not decisions: the action is
ignored and earns nothing). Episodes last ``horizon`` steps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from leed_jax.envs.base import EnvSpec


@struct.dataclass
class ToyState:
    t: jax.Array  # [] int32
    cue: jax.Array  # [N] int32
    hits: jax.Array  # [N] float32 rewarded decisions so far
    decisions: jax.Array  # [] float32 decisions so far (per agent)


class ToyEnv:
    family = "toy"

    def __init__(self, num_agents=3, num_actions=4, horizon=6, nan_reward=False, name="toy"):
        self.name = name
        self.nan_reward = nan_reward
        n, a = num_agents, num_actions
        self.spec = EnvSpec(
            num_agents=n, obs_dim=a + 1, num_actions=a, global_state_dim=n * a, horizon=horizon
        )

    def _cue(self, key):
        n, a = self.spec.num_agents, self.spec.num_actions
        return jax.random.randint(key, (n,), 0, a - 1)

    def _obs(self, s):
        a = self.spec.num_actions
        frac = jnp.broadcast_to(s.t / self.spec.horizon, (self.spec.num_agents, 1))
        return jnp.concatenate([jax.nn.one_hot(s.cue, a), frac], axis=1).astype(jnp.float32)

    def target(self, state):
        a = self.spec.num_actions
        return (state.cue + jnp.arange(self.spec.num_agents)) % (a - 1)

    def reset(self, key):
        n = self.spec.num_agents
        s = ToyState(jnp.zeros((), jnp.int32), self._cue(key), jnp.zeros(n), jnp.zeros(()))
        return self._obs(s), s

    def step(self, key, state, actions):
        n = self.spec.num_agents
        decision = jnp.broadcast_to(state.t % 2 == 0, (n,))
        hit = (actions == self.target(state)) & decision
        reward = hit.astype(jnp.float32)
        if self.nan_reward:
            reward = reward * jnp.nan
        hits = state.hits + hit
        decisions = state.decisions + decision[0]
        t = state.t + 1
        new = ToyState(t, self._cue(key), hits, decisions)
        done = jnp.broadcast_to(t >= self.spec.horizon, (n,))
        info = {
            "decision": decision,
            "metrics": {"hit_rate": hits.mean() / jnp.maximum(decisions, 1.0)},
        }
        return self._obs(new), new, reward, done, info

    def avail_actions(self, state):
        a = self.spec.num_actions
        return jnp.broadcast_to(jnp.arange(a) < a - 1, (self.spec.num_agents, a))

    def global_state(self, state):
        return jax.nn.one_hot(state.cue, self.spec.num_actions).reshape(-1)


def toy_demos(env: ToyEnv, per_agent: int = 24, seed: int = 0, missing_agent: int | None = None):
    """A hand-built demo buffer of the optimal policy: obs [N, M, D], action [N, M], ..."""
    from leed_jax.dg.buffer import DemoBuffer

    n, a = env.spec.num_agents, env.spec.num_actions
    rng = np.random.default_rng(seed)
    cue = rng.integers(0, a - 1, size=(n, per_agent))
    obs = np.zeros((n, per_agent, a + 1), np.float32)
    obs[np.arange(n)[:, None], np.arange(per_agent)[None], cue] = 1.0
    action = (cue + np.arange(n)[:, None]) % (a - 1)
    avail = np.broadcast_to(np.arange(a) < a - 1, (n, per_agent, a)).copy()
    valid = np.ones((n, per_agent), bool)
    if missing_agent is not None:
        valid[missing_agent] = False
    agent_return = np.full((n,), env.spec.horizon / 2, np.float32)
    return DemoBuffer(
        obs=obs, action=action.astype(np.int32), avail=avail, valid=valid,
        agent_return=agent_return,
    )


def test_toy_env_follows_the_protocol():
    from leed_jax.envs.wrappers import AutoResetWrapper

    env = AutoResetWrapper(ToyEnv(num_agents=3, horizon=4))
    obs, state = env.reset(jax.random.PRNGKey(0))
    assert obs.shape == (3, env.spec.obs_dim)
    ends = []
    for t in range(8):
        act = env.target(state)
        obs, state, r, _d, info = env.step(jax.random.PRNGKey(t), state, act)
        assert info["decision"].shape == (3,)
        np.testing.assert_array_equal(r, float(t % 2 == 0))
        ends.append(bool(info["episode_end"]))
        if info["episode_end"]:
            assert float(info["metrics"]["hit_rate"]) == 1.0
            # The observation reached before the reset (time 1.0), next to the new one's (0).
            assert float(info["final_obs"][0, -1]) == 1.0 and float(obs[0, -1]) == 0.0
    assert ends == [False, False, False, True] * 2
