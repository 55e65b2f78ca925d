"""Yardsticks (dynamic user equilibrium / system optimum on the evaluation episodes) on a tiny
3x3 grid: they are the env's own metric of the planned routes, the trainer's evaluation keys
are the ones priced, the cache is keyed by the episode and survives a corrupt file, and the
tables carry them."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from leed_jax.dg import yardsticks as ys
from leed_jax.dg.equilibrium import EquilibriumConfig, plan_routes
from leed_jax.dg.executor import executor_for, pad_targets
from leed_jax.dg.planner import traffic_routes
from leed_jax.envs.registry import make_env

ROUNDS = 4


@pytest.fixture(scope="module")
def env():
    return make_env("traffic-grid", rows=3, cols=3, num_agents=24, horizon=30)


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LEED_YARDSTICK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(ys, "DEFAULT_ROUNDS", ROUNDS)
    return tmp_path / "cache"


def _replay_equilibrium(env, key) -> float:
    """Mean travel time of the equilibrium plan, executed by the DG executor (a policy that
    reproduces the UE routes, hence the UE flows)."""
    obs, state = ys._reset(env, key)
    p = env.params
    inc = traffic_routes(env.network, np.asarray(state.origin),
                         np.asarray(state.dest), np.asarray(state.depart),
                         dt=p.dt, alpha=p.alpha, beta=p.beta)
    plan = plan_routes(env, key=key, state=state, obs=obs, config=EquilibriumConfig(rounds=ROUNDS),
                       initial=inc)
    rollout = executor_for(env)(key, obs, state, jnp.asarray(pad_targets([x[1:] or x for x in plan.paths])))
    return float(jax.device_get(rollout.metrics["mean_travel_time"]))


def test_a_policy_reproducing_the_equilibrium_scores_it_and_the_optimum_is_not_above(env):
    keys = ys.evaluation_keys(0, 2)
    yard = ys.yardsticks(env, keys)
    assert yard["cached"] == 0 and len(yard["ue_mean_travel_time"]) == 2
    for ue, so in zip(yard["ue_mean_travel_time"], yard["so_mean_travel_time"]):
        assert so <= ue + 1e-6  # the optimum yardstick: the least total found
    policy = [_replay_equilibrium(env, k) for k in keys]
    # The trainer's path: its metrics [K=1, E=2] of the evaluation episodes → summary fields.
    fields = ys.for_evaluation(env, 0, 2, {"mean_travel_time": np.array([policy])}, episodes=2)
    assert fields["yardstick_episodes"] == 2
    assert abs(fields["gap_to_ue_pct"]) < 0.5
    assert fields["gap_to_so_pct"] >= fields["gap_to_ue_pct"] - 1e-9
    assert fields["yardstick_s"] < yard["seconds"]  # the second call was served by the cache
    # A policy 10 % slower than the equilibrium on every episode is +10 % behind it.
    slower = ys.compare([1.1 * x for x in yard["ue_mean_travel_time"]], yard)
    assert slower["gap_to_ue_pct"] == pytest.approx(10.0, abs=1e-6)


def test_evaluation_keys_are_the_trainers_resets(env):
    from leed_jax.po.rollout import reset_envs

    # Trainer.evaluate(params, PRNGKey(eval_seed), E) resets with split(key)[0].
    k_reset, _ = jax.random.split(jax.random.PRNGKey(3))
    carry = jax.jit(lambda k: reset_envs(env, k, 3))(k_reset)
    for j, key in enumerate(ys.evaluation_keys(3, 3)):
        _, state = ys._reset(env, key)
        np.testing.assert_array_equal(np.asarray(state.origin), np.asarray(carry.state.origin[j]))
        np.testing.assert_array_equal(np.asarray(state.depart), np.asarray(carry.state.depart[j]))


def test_corrupt_cache_entry_is_recomputed_not_fatal(env, cache_dir):
    key = ys.evaluation_keys(0, 2)[0]
    ys._MEMORY.clear()
    first = ys.episode_yardstick(env, key)
    files = list(cache_dir.glob("*.json"))
    assert len(files) == 1
    files[0].write_text("{not json")
    ys._MEMORY.clear()
    again = ys.episode_yardstick(env, key)
    assert not again["cached"] and again["ue_total"] == first["ue_total"]
    assert json.loads(files[0].read_text())["ue_total"] == first["ue_total"]  # rewritten
    assert ys.episode_yardstick(env, key)["cached"]


def test_off_switches_and_fixed_demand(env, monkeypatch):
    metrics = {"mean_travel_time": np.ones((1, 4))}
    assert ys.for_evaluation(env, 0, 4, metrics, episodes=0) == {}
    monkeypatch.setenv("LEED_YARDSTICKS", "0")
    assert ys.for_evaluation(env, 0, 4, metrics) == {}
    monkeypatch.setenv("LEED_YARDSTICKS", "3")
    assert ys.resolve_episodes(-1) == 3 and ys.resolve_episodes(2) == 2
    monkeypatch.setenv("LEED_YARDSTICKS", "many")
    assert ys.resolve_episodes(-1) == ys.DEFAULT_EPISODES

    class NotTraffic:
        family = "mpe"

    assert ys.for_evaluation(NotTraffic(), 0, 4, metrics, episodes=2) == {}
    env.resample = False  # a fixed draw: every evaluation episode is the same one
    try:
        fields = ys.for_evaluation(env, 0, 4, metrics, episodes=4)
    finally:
        env.resample = True
    assert fields["yardstick_episodes"] == 1


def test_tables_carry_the_yardsticks(tmp_path):
    from leed_jax.run import print_table
    from leed_jax.sweep import RESULT_COLUMNS, plot_scaling, result_row

    s = {"final_return": -1.0, "mean_travel_time": 90.0, "env_steps": 10, "wall_s": 1.0,
         **ys.compare([90.0], {"ue_mean_travel_time": [80.0], "so_mean_travel_time": [75.0],
                               "incremental_mean_travel_time": [85.0]})}
    rows = [{"policy": "LEED", "return": -1.0, "mean_travel_time": 90.0}]
    cols = ys.add_to_table(rows, {"leed": s}, ["mean_travel_time"])
    assert cols == ["mean_travel_time", "gap_to_ue_pct", "gap_to_so_pct"]
    assert rows[0]["gap_to_ue_pct"] == pytest.approx(12.5) and rows[0]["gap_to_so_pct"] == pytest.approx(20.0)
    assert [r["mean_travel_time"] for r in rows[1:]] == [90.0, 80.0, 75.0]  # LEED, UE, SO on those episodes
    print_table(rows, cols)
    assert ys.describe(s) == "vs UE +12.5 %, vs SO +20.0 % (1 ep.)"
    row = result_row("leed", 24, "cell", s)
    assert {"ue_mean_travel_time", "gap_to_so_pct"} <= set(RESULT_COLUMNS) and row["gap_to_ue_pct"] == s["gap_to_ue_pct"]
    row.update(agent_steps_per_s=1.0)
    plot_scaling([row, {**row, "num_agents": 48, "ue_mean_travel_time": None}], tmp_path / "scaling.png")
    assert (tmp_path / "scaling.png").stat().st_size > 1000
    assert ys.add_to_table([{}], {"mpe": {"final_return": 0.0}}, ["m"]) == ["m"]
