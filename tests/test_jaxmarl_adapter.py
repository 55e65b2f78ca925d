"""JaxMARL adapter: same transitions as raw jaxmarl, stacked protocol, one-line errors.

Each env is compiled once: one jitted, vmapped rollout drives the adapter and the raw jaxmarl
env side by side with the same keys and actions.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from leed_jax.envs.base import MultiAgentEnv, ScenarioError
from leed_jax.envs.jaxmarl_adapter import JaxMARLEnv

T = 20  # steps compared
B = 4  # keys in the vmapped batch
ROOT = Path(__file__).resolve().parents[1]


def _raw(env_name: str, **kwargs):
    import jaxmarl

    return jaxmarl.make(env_name, **kwargs)


def _rollout_fn(env: JaxMARLEnv, raw, *, public_step: bool = False):
    """jit(vmap) over keys of a ``steps``-long rollout of the adapter and the raw jaxmarl env
    in lock step, with random available actions. Returns stacked arrays ``[B, steps, ...]``.

    Raw jaxmarl is driven through ``step_env`` after the key split its public ``step`` does
    (so it does not auto-reset either). With ``public_step`` each step also runs jaxmarl's
    public ``step`` from the same state, for comparison (it costs compile time)."""
    agents = raw.agents
    has_avail = env.family == "smax"  # MPE has no get_avail_actions

    def stack(d: dict) -> jax.Array:
        return jnp.stack([d[a] for a in agents])

    def one(key):
        k_reset, key = jax.random.split(key)
        obs0, st = env.reset(k_reset)
        robs0, rst = raw.reset(k_reset)

        def body(carry, key):
            st, rst = carry
            k_act, k_step = jax.random.split(key)
            avail = env.avail_actions(st)
            act = jax.random.categorical(k_act, jnp.where(avail, 0.0, -1e9)).astype(jnp.int32)
            act_d = {a: act[i] for i, a in enumerate(agents)}
            obs, st2, rew, done, info = env.step(k_step, st, act)
            robs, rst2, rrew, rdone, _ = raw.step_env(jax.random.split(k_step)[0], rst, act_d)
            out = {
                "avail": avail,
                "obs": obs,
                "rew": rew,
                "done": done,
                "decision": info["decision"],
                "metrics": info["metrics"],
                "gstate": env.global_state(st2),
                "robs": stack(robs),
                "rrew": stack(rrew),
                "rdone": stack(rdone),
                "rdone_all": rdone["__all__"],
            }
            if public_step:
                pobs, _, prew, _, _ = raw.step(k_step, rst, act_d)
                out["pobs"], out["prew"] = stack(pobs), stack(prew)
            if has_avail:
                out["ravail"] = stack(raw.get_avail_actions(rst)).astype(bool)
            if "world_state" in robs:
                out["rworld"] = robs["world_state"]
            return (st2, rst2), out

        _, traj = jax.lax.scan(body, (st, rst), jax.random.split(key, T))
        return obs0, stack(robs0), traj

    return jax.jit(jax.vmap(one))


def _assert_matches_raw(env: JaxMARLEnv, obs0, robs0, traj) -> None:
    """Adapter == raw jaxmarl ``step_env`` bit for bit at every step, and == jaxmarl's
    public ``step`` up to float rounding wherever that one did not auto-reset."""
    n, d = env.spec.num_agents, env.spec.obs_dim
    tr = {k: v for k, v in jax.tree_util.tree_map(np.asarray, traj).items()}
    chex.assert_shape(tr["obs"], (B, T, n, d))
    chex.assert_shape(tr["avail"], (B, T, n, env.spec.num_actions))
    chex.assert_shape(tr["gstate"], (B, T, env.spec.global_state_dim))
    chex.assert_type([tr["obs"], tr["rew"]], np.float32)
    chex.assert_type([tr["done"], tr["decision"], tr["avail"]], bool)

    np.testing.assert_array_equal(obs0, robs0)
    np.testing.assert_array_equal(tr["obs"], tr["robs"])
    np.testing.assert_array_equal(tr["rew"], tr["rrew"])
    if "ravail" in tr:
        np.testing.assert_array_equal(tr["avail"], tr["ravail"])
    if "rworld" in tr:
        np.testing.assert_array_equal(tr["gstate"], tr["rworld"])
    else:  # no world_state: the flattened stacked obs
        np.testing.assert_array_equal(tr["gstate"], tr["obs"].reshape(B, T, -1))
    # done = per-agent dones, all True once jaxmarl or the horizon ends the episode.
    t = np.arange(1, T + 1)[None, :, None]
    over = tr["rdone_all"][..., None] | (t >= env.spec.horizon)
    np.testing.assert_array_equal(tr["done"], tr["rdone"] | over)
    np.testing.assert_array_equal(tr["metrics"]["episode_step"], np.broadcast_to(t[..., 0], (B, T)))

    if "pobs" not in tr:
        return
    # jaxmarl's public step compiles to slightly different float code (its reset select
    # changes XLA's fusion), hence a tolerance, not equality, against it.
    live = ~tr["rdone_all"]
    np.testing.assert_allclose(tr["obs"][live], tr["pobs"][live], rtol=0, atol=1e-5)
    np.testing.assert_allclose(tr["rew"], tr["prew"], rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------- MPE


@pytest.fixture(scope="module")
def spread3():
    return JaxMARLEnv("MPE_simple_spread_v3", num_agents=3)


@pytest.mark.parametrize("n", [3, 10])
def test_mpe_spread_matches_raw_jaxmarl(n, spread3):
    env = spread3 if n == 3 else JaxMARLEnv("MPE_simple_spread_v3", num_agents=n)
    raw = _raw("MPE_simple_spread_v3", num_agents=n, num_landmarks=n, max_steps=25)
    assert isinstance(env, MultiAgentEnv)
    assert (env.family, env.name, env.agents) == ("mpe", "MPE_simple_spread_v3", raw.agents)
    d = 4 + 4 * (n - 1) + 2 * n
    assert (env.spec.num_agents, env.spec.obs_dim, env.spec.num_actions) == (n, d, 5)
    assert (env.spec.global_state_dim, env.spec.horizon) == (n * d, 25)

    rollout = _rollout_fn(env, raw, public_step=n == 3)
    obs0, robs0, traj = rollout(jax.random.split(jax.random.PRNGKey(n), B))
    _assert_matches_raw(env, obs0, robs0, traj)
    assert np.asarray(traj["decision"]).all()  # no turns in MPE: every agent acts every step
    assert not np.asarray(traj["done"]).any()
    assert np.asarray(traj["avail"]).all()  # MPE has no get_avail_actions
    assert set(traj["metrics"]) == {"episode_step"}


def test_mpe_episode_lasts_exactly_horizon_and_does_not_reset(spread3):
    """jaxmarl ends MPE after max_steps + 1 steps and then auto-resets; the adapter ends
    after exactly ``horizon`` steps and keeps the terminal state for the caller to reset."""
    env, h = spread3, spread3.spec.horizon

    def run(key):
        obs, st = env.reset(key)

        def body(st, k):
            obs, st, _, done, info = env.step(k, st, jnp.ones(3, jnp.int32))
            return st, (obs, done, info["truncated"])

        st, (obs, done, cut) = jax.lax.scan(body, st, jax.random.split(key, h + 1))
        return obs, done, st.t, cut

    obs, done, t, cut = jax.jit(run)(jax.random.PRNGKey(0))
    done = np.asarray(done)
    assert not done[: h - 1].any() and done[h - 1 :].all()
    # The end is a time limit (MPE obs carry no time): the trainer bootstraps V(s_T) there.
    assert not np.asarray(cut)[: h - 1].any() and bool(cut[h - 1])
    assert int(t) == h + 1  # stepped past the end without resetting
    assert not np.allclose(obs[h], obs[h - 1])  # agents keep drifting: no reset swapped in


def test_scenario_file_builds():
    raw = tomllib.loads((ROOT / "envs" / "mpe-spread.toml").read_text())
    assert (raw["name"], raw["family"], raw["prompt"]) == ("mpe-spread", "mpe", "mpe")
    table = dict(raw["jaxmarl"])
    env = JaxMARLEnv(table.pop("env_name"), name=raw["name"], **table)
    assert (env.name, env.family) == ("mpe-spread", "mpe")
    assert (env.spec.num_agents, env.spec.horizon) == (3, 25)


def test_uneven_agents_are_padded():
    """speaker_listener: obs sizes 3 and 11, action sizes 3 and 5."""
    env = JaxMARLEnv("MPE_simple_speaker_listener_v4")
    raw = _raw("MPE_simple_speaker_listener_v4")
    assert (env.spec.obs_dim, env.spec.num_actions) == (11, 5)
    key = jax.random.PRNGKey(3)
    obs, st = env.reset(key)
    robs, _ = raw.reset(key)
    np.testing.assert_array_equal(obs[0, :3], robs["speaker_0"])
    np.testing.assert_array_equal(obs[0, 3:], 0.0)
    np.testing.assert_array_equal(obs[1], robs["listener_0"])
    np.testing.assert_array_equal(env.avail_actions(st), [[True] * 3 + [False] * 2, [True] * 5])


# ---------------------------------------------------------------------------- SMAX


def test_smax_matches_raw_jaxmarl():
    from jaxmarl.environments.smax import map_name_to_scenario

    h = T
    env = JaxMARLEnv("HeuristicEnemySMAX", scenario="3m", horizon=h, name="smax-3m")
    raw = _raw("HeuristicEnemySMAX", scenario=map_name_to_scenario("3m"), max_steps=h)
    assert (env.family, env.name, env.agents) == ("smax", "smax-3m", raw.agents)
    # 3 allies vs 3 marines: 5 moves + 3 targets; unit_list obs; world_state 6 * (10 + 2).
    assert (env.spec.num_agents, env.spec.num_actions, env.spec.horizon) == (3, 8, h)
    assert (env.spec.obs_dim, env.spec.global_state_dim) == (75, 72)

    obs0, robs0, traj = _rollout_fn(env, raw)(jax.random.split(jax.random.PRNGKey(7), B))
    _assert_matches_raw(env, obs0, robs0, traj)
    assert set(traj["metrics"]) == {"episode_step", "won", "allies_alive", "enemies_alive"}

    done, decision = np.asarray(traj["done"]), np.asarray(traj["decision"])
    # The episode is over by the horizon at the latest, for surviving units too.
    assert done[:, -1].all()
    # An action matters for the units alive when the step starts.
    assert decision[:, 0].all()
    np.testing.assert_array_equal(decision[:, 1:], ~np.asarray(traj["rdone"])[:, :-1])
    # Random play loses some units within T steps: decision is not trivially all True.
    assert not decision.all()


# ---------------------------------------------------------------------------- errors


def _one_line_error(match: str, *args, **kwargs) -> str:
    with pytest.raises(ScenarioError, match=match) as info:
        JaxMARLEnv(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_unknown_env_name_lists_valid_names():
    msg = _one_line_error("unknown jaxmarl env", "MPE_simple_sprad_v3")
    assert "did you mean MPE_simple_spread_v3" in msg
    assert "HeuristicEnemySMAX" in msg


def test_continuous_actions_rejected():
    _one_line_error("Box action space.*discrete", "MPE_simple_spread_v3", action_type="Continuous")


@pytest.mark.parametrize("bad", [0, -2, True, 2.5])
def test_bad_num_agents(bad):
    _one_line_error("num_agents must be a positive integer", "MPE_simple_spread_v3", num_agents=bad)


def test_bad_horizon_and_size_arguments():
    _one_line_error("horizon must be a positive integer", "MPE_simple_spread_v3", horizon=0)
    _one_line_error("does not take num_agents", "HeuristicEnemySMAX", num_agents=3)
    _one_line_error("unknown SMAX map '4m'; known: .*3m", "SMAX", scenario="4m")
    _one_line_error("horizon or max_steps", "MPE_simple_spread_v3", horizon=5, max_steps=5)
    _one_line_error("only supports 2 agents", "MPE_simple_reference_v3", num_agents=4)
