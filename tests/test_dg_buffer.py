"""Demo buffer: compaction of decision steps, the file format, fit checks, sampling."""

from __future__ import annotations

import json
from types import SimpleNamespace

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from leed_jax.dg.buffer import (
    DemoBuffer,
    from_transitions,
    load_demos,
    read_demo_meta,
    sample_demos,
    save_demos,
)
from leed_jax.dg.errors import DemoBufferError
from leed_jax.envs.base import EnvSpec
from leed_jax.types import Transition


def _transitions(t=6, n=3, d=4, a=5):
    rng = np.random.default_rng(0)
    decision = np.zeros((t, n), bool)
    decision[[0, 2, 5], 0] = True  # agent 0 decides 3 times
    decision[[1], 1] = True  # agent 1 once, agent 2 never
    return Transition(
        obs=rng.normal(size=(t, n, d)).astype(np.float32),
        action=rng.integers(0, a, (t, n)).astype(np.int32),
        avail=np.ones((t, n, a), bool),
        reward=np.ones((t, n), np.float32),
        done=np.zeros((t, n), bool),
        decision=decision,
    )


def _env(n=3, d=4, a=5, name="toy", family="toy"):
    return SimpleNamespace(spec=EnvSpec(n, d, a, 1, 6), name=name, family=family,
                           scenario=SimpleNamespace(hash="abc"))


def test_from_transitions_keeps_decisions_in_time_order():
    tr = _transitions()
    buf = from_transitions([tr], [np.array([1.0, 2.0, 3.0])])
    chex.assert_shape(buf.obs, (3, 3, 4))
    chex.assert_shape(buf.avail, (3, 3, 5))
    assert buf.valid.tolist() == [[True] * 3, [True, False, False], [False] * 3]
    np.testing.assert_array_equal(buf.obs[0], tr.obs[[0, 2, 5], 0])
    np.testing.assert_array_equal(buf.action[1, :1], tr.action[[1], 1])
    assert buf.avail[2].any(-1).all()  # padding keeps a legal action
    # Two episodes: rows concatenate, returns average.
    two = from_transitions([tr, tr], [np.zeros(3), np.full(3, 2.0)])
    assert two.counts().tolist() == [6, 2, 0]
    np.testing.assert_allclose(two.agent_return, [1, 1, 1])


def test_save_load_roundtrip_and_format(tmp_path):
    buf = from_transitions([_transitions()], [np.zeros(3)])
    path = save_demos(tmp_path / "b", buf, {"scenario": {"name": "toy", "family": "toy",
                                                         "hash": "abc"}},
                      report={"summary": {}}, plan_text="[MoveTo, Landmark_0, Agent_0]\n")
    assert sorted(p.name for p in path.iterdir()) == ["demos.npz", "dg_report.json",
                                                     "meta.json", "plan.txt"]
    meta = read_demo_meta(path / "meta.json")
    assert meta["schema_version"] == 1 and meta["arrays"]["decisions"] == 4
    got = load_demos(path, _env())
    for a, b in zip(got, buf):
        np.testing.assert_array_equal(a, b)


def test_load_names_every_difference(tmp_path):
    buf = from_transitions([_transitions()], [np.zeros(3)])
    path = save_demos(tmp_path / "b", buf, {"scenario": {"name": "toy", "family": "toy"}})
    with pytest.raises(DemoBufferError) as e:
        load_demos(path, _env(n=4, d=4, a=6, name="other"))
    msg = str(e.value)
    assert "num_agents 3 in the buffer vs 4" in msg and "num_actions 5 in the buffer vs 6" in msg
    assert "obs_dim" not in msg and "\n" not in msg
    save_demos(path, buf, {"scenario": {"name": "toy", "family": "toy", "hash": "zzz"}})
    with pytest.warns(UserWarning, match="hash"):
        load_demos(path, _env())


def test_load_rejects_missing_and_foreign_files(tmp_path):
    with pytest.raises(DemoBufferError, match="no meta.json"):
        load_demos(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(DemoBufferError, match="schema_version 99"):
        load_demos(tmp_path)


def test_sample_demos_is_pure_and_jittable():
    buf = from_transitions([_transitions()], [np.zeros(3)])
    jbuf = DemoBuffer(*map(jnp.asarray, buf))
    sample = jax.jit(sample_demos, static_argnums=2)
    obs, act, avail, w = sample(jax.random.PRNGKey(0), jbuf, 64)
    chex.assert_shape([obs, act, avail, w], [(3, 64, 4), (3, 64), (3, 64, 5), (3, 64)])
    assert w[:2].min() == 1 and w[2].max() == 0  # agent 2 has no demonstrations
    # Only real decisions are drawn, and all of them are.
    rows = {tuple(r) for r in np.asarray(obs[0])}
    assert rows == {tuple(r) for r in np.asarray(buf.obs[0])}
    assert np.all(np.asarray(obs[1]) == np.asarray(buf.obs[1, 0]))
    again = sample(jax.random.PRNGKey(0), jbuf, 64)
    np.testing.assert_array_equal(again[0], obs)
