"""queue_impl="heads" (O(E) per pass) gives the same trajectories as the reference "vehicles"
implementation (O(N) per pass), on jammed random cases, with and without planned routes for the
in-step hops; read_sumo's junction crossings."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from leed_jax.envs.base import ScenarioError
from leed_jax.envs.demand import Demand
from leed_jax.envs.network import grid_network
from leed_jax.envs.traffic import TrafficEnv, TrafficParams

FIELDS = ("status", "node", "link", "prev_link", "enter", "ready", "ticket", "blocked", "last_move", "arrive_time",
          "travel_time", "head", "tail", "free_at", "progress")


def _walks(net, n, length, rng):
    """``[n, length]`` random walks of links (consecutive links joined, no immediate U-turn
    where avoidable); rows from ``n // 2`` on are −1 (no route: the fastest-link fallback)."""
    out = -np.ones((n, length), np.int32)
    for i in range(n // 2):
        link = int(rng.integers(net.num_links))
        for j in range(length):
            out[i, j] = link
            nxt = [x for x in net.out_links[net.link_dst[link]] if x >= 0 and net.link_dst[x] != net.link_src[link]]
            link = int(rng.choice(nxt))
    return out


def _trajectory(env, steps, seed, route):
    """Every step's state under random valid actions (one jit); in-step hops follow ``route``
    (walks that contain many links, so a vehicle's chosen link is often in its row)."""

    @jax.jit
    def go(key):
        _, s = env.reset(key)

        def body(s, k):
            a = jax.random.categorical(k, jnp.where(env.avail_actions(s), 0.0, -jnp.inf))
            _, s, _, _, info = env.step(k, s, a, route=route)
            return s, (s, info["decision"], info["pending_moves"])

        return jax.lax.scan(body, s, jax.random.split(key, steps))[1]

    return go(jax.random.PRNGKey(seed))


# 4x4 grid of 2-lane 30 m links (storage 8, 6 s at 5 m/s) in 10 s steps, 300 vehicles from 16
# nodes within 3 steps: jammed (departers refused by full links, blocked heads, spillback), and
# vehicles cross several nodes per step (links that empty and refill within a step).
CASE = dict(link_length=30.0, speed=5.0, dt=10.0, n=300, window=3, steps=25)


def test_heads_matches_vehicles(case=CASE):
    net = grid_network(4, 4, link_length=case["link_length"], speed=case["speed"], lanes=2.0, flow_per_lane=900.0)
    rng = np.random.default_rng(3)
    n = case["n"]
    o = rng.integers(0, net.num_nodes, n)
    d = (o + 1 + rng.integers(0, net.num_nodes - 1, n)) % net.num_nodes
    dep = rng.integers(0, case["window"], n)
    demand = Demand(o.astype(np.int32), d.astype(np.int32), dep.astype(np.int32))
    params = TrafficParams(dt=case["dt"], horizon=case["steps"] + 5, queue_impl="vehicles")
    ref = TrafficEnv(net, demand, params)
    fast = TrafficEnv(net, demand, dataclasses.replace(params, queue_impl="heads"))
    assert fast._heads and not ref._heads
    route = jnp.asarray(_walks(net, n, 40, rng))
    (sa, da, pa), (sb, db, pb) = _trajectory(ref, case["steps"], 0, route), _trajectory(fast, case["steps"], 0, route)
    for f in FIELDS:
        np.testing.assert_array_equal(np.asarray(getattr(sa, f)), np.asarray(getattr(sb, f)), err_msg=f)
    np.testing.assert_array_equal(np.asarray(da), np.asarray(db))
    np.testing.assert_array_equal(np.asarray(pa), np.asarray(pb))
    # The case is what it claims: vehicles were refused by full links and some arrived.
    assert np.asarray(sa.blocked).any()
    assert (np.asarray(sa.status[-1]) == 3).any()


def test_heads_only_for_the_free_running_queue():
    net = grid_network(3, 3)
    demand = Demand(np.zeros(4, np.int32), np.full(4, 8, np.int32), np.zeros(4, np.int32))
    with pytest.raises(ScenarioError, match="queue_impl"):
        TrafficEnv(net, demand, TrafficParams(queue_impl="heads", queue_running="bpr"))
    with pytest.raises(ScenarioError, match="queue_impl"):
        TrafficParams(queue_impl="fast")
    # auto: few vehicles on many links keep the per-vehicle passes.
    assert not TrafficEnv(net, demand, TrafficParams()).__dict__["_heads"]


def test_read_sumo_adds_junction_crossings():
    pytest.importorskip("sumolib")
    from leed_jax.envs import sumo_io
    from leed_jax.envs.network import read_sumo

    from leed_jax.envs.registry import _data_path

    path = _data_path("sumo:tools/game/DRT/osm.net.xml", None)
    with_j, without = read_sumo(path), read_sumo(path, junctions=False)
    assert with_j.link_ids == without.link_ids
    np.testing.assert_allclose(with_j.link_length - with_j.link_junction, without.link_length)
    np.testing.assert_allclose(with_j.link_storage, without.link_storage)  # no queueing inside a junction
    assert (without.link_junction == 0).all()
    assert 3.0 < with_j.link_junction.mean() < 20.0  # metres per link: a junction's size
    assert sumo_io.jam_spacing(with_j) == pytest.approx(7.5)
