"""The continuous-time queue link model: free-flow times independent of dt, conservation,
flow capacity, spillback, gridlock detection, turn restrictions, per-episode demand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import leed_jax
from leed_jax.envs.demand import Demand
from leed_jax.envs.network import RoadNetwork, grid_network, read_sumo
from leed_jax.envs.registry import _data_path
from leed_jax.envs.traffic import ARRIVED, AT_NODE, ON_LINK, WAITING, TrafficEnv, TrafficParams


def _has_sumo():
    try:
        import sumolib  # noqa: F401
    except ImportError:
        return False
    return True


def _run(env, steps, policy="fastest", seed=0):
    """Scan ``steps`` steps; returns the final state and the per-step (state, info)."""

    @jax.jit
    def go(key):
        _, s = env.reset(key)

        def body(s, k):
            if policy == "fastest":
                a = env.fastest_slot(s)
            else:
                a = jax.random.categorical(k, jnp.where(env.avail_actions(s), 0.0, -jnp.inf))
            _, s, r, d, info = env.step(k, s, a)
            return s, (s, info, r)

        return jax.lax.scan(body, s, jax.random.split(key, steps))

    return go(jax.random.PRNGKey(seed))


def _chain(caps_vph, storage, length=100.0, speed=10.0):
    """One-way chain 0 -> 1 -> ... with the given flow capacities and storages per link."""
    e = len(caps_vph)
    return RoadNetwork(
        "chain", np.stack([np.arange(e + 1) * length, np.zeros(e + 1)], 1), [f"n{i}" for i in range(e + 1)],
        np.arange(e), np.arange(1, e + 1), np.full(e, length), np.full(e, speed), np.ones(e), np.full(e, 4.0),
        link_flow_capacity=np.asarray(caps_vph, float), link_storage=np.asarray(storage, float),
    )


def _uncongested(net: RoadNetwork) -> RoadNetwork:
    """The same network with capacities and storages so large that vehicles never interact."""
    import dataclasses

    fields = {f.name: getattr(net, f.name) for f in dataclasses.fields(net) if f.init}
    fields.update(link_flow_capacity=np.full(net.num_links, 1e7), link_storage=np.full(net.num_links, 1e6))
    return RoadNetwork(**fields)


@pytest.mark.parametrize("dt", [10.0, 2.0, 0.5])
@pytest.mark.parametrize("where", ["grid", "sumo"])
def test_lone_vehicles_take_continuous_free_flow_time(dt, where):
    if where == "sumo":
        if not _has_sumo():
            pytest.skip("needs the 'sumo' extra")
        base = leed_jax.make_env("traffic-sumo-drt").network
    else:
        base = grid_network(5, 5, link_length=130.0, speed=9.0)  # 14.4 s links: not multiples of dt
    net = _uncongested(base)
    rng = np.random.default_rng(1)
    n = 40
    o = rng.integers(0, net.num_nodes, n)
    d = (o + 1 + rng.integers(0, net.num_nodes - 1, n)) % net.num_nodes
    free = net.tt[o, d]
    horizon = int(np.ceil((free.max() + 3 * dt) / dt)) + 1
    dep = rng.integers(0, 3, n)
    env = TrafficEnv(net, Demand(o.astype(np.int32), d.astype(np.int32), dep.astype(np.int32)),
                     TrafficParams(dt=dt, horizon=horizon, moves=0))
    final, (_, info, _) = _run(env, horizon)
    assert (np.asarray(final.status) == ARRIVED).all()
    assert int(np.asarray(info["pending_moves"]).max()) == 0
    np.testing.assert_allclose(np.asarray(final.travel_time), free, rtol=2e-5, atol=2e-4)
    np.testing.assert_allclose(np.asarray(final.arrive_time), dep * dt + free, rtol=2e-5, atol=2e-3)


def test_conservation_every_step_and_consistent_counters():
    env = leed_jax.make_env("traffic-grid", num_agents=300, departure_window=20, hotspots=4)  # queues form
    final, (states, info, _) = _run(env, env.spec.horizon, policy="random")
    status = np.asarray(states.status)
    departed = (np.asarray(states.depart) < np.asarray(states.t)[:, None]) | (status != WAITING)
    on, at_origin, arrived = status == ON_LINK, status == AT_NODE, status == ARRIVED
    np.testing.assert_array_equal(departed.sum(1), on.sum(1) + at_origin.sum(1) + arrived.sum(1))
    counts = np.asarray(info["link_counts"])
    np.testing.assert_array_equal(counts.sum(1), on.sum(1))  # entries - exits = vehicles on links
    storage = env.network.link_storage
    assert (counts <= storage[None] + 1e-6).all()  # storage is never exceeded
    # each link holds tail - head vehicles with distinct entry tickets below tail (they leave
    # in order of reaching the link's end, so the tickets left need not be contiguous)
    s = jax.tree_util.tree_map(lambda x: np.asarray(x)[30], states)
    for e in np.unique(s.link[s.status == ON_LINK]):
        tickets = s.ticket[(s.status == ON_LINK) & (s.link == e)]
        assert len(np.unique(tickets)) == len(tickets) == s.tail[e] - s.head[e]
        assert tickets.max() < s.tail[e]
    assert (np.diff(arrived.astype(int), axis=0) >= 0).all()
    assert arrived[-1].mean() > 0.3 and float(np.asarray(info["metrics"]["unfinished"])[-1]) >= 0


def test_bottleneck_passes_at_most_capacity():
    q = 600.0  # veh/h on the bottleneck: one vehicle per 6 s
    net = _chain([36000.0, q], [200.0, 200.0])
    n = 40
    env = TrafficEnv(net, Demand(np.zeros(n, np.int32), np.full(n, 2, np.int32), np.zeros(n, np.int32)),
                     TrafficParams(dt=10.0, horizon=40))
    final, (states, info, _) = _run(env, 40)
    arrive = np.sort(np.asarray(final.arrive_time)[np.asarray(final.status) == ARRIVED])
    assert len(arrive) >= 30
    gaps = np.diff(arrive)
    assert gaps.min() >= 6.0 - 1e-3  # never faster than the capacity
    # ... and the bottleneck runs at capacity while it has a queue
    assert (len(arrive) - 1) / (arrive[-1] - arrive[0]) == pytest.approx(q / 3600.0, rel=0.02)
    # counted in steps: no step passes more than q * dt (+1 for the fractional carry)
    per_step = np.diff(np.concatenate([[0], (np.asarray(states.status) == ARRIVED).sum(1)]))
    assert per_step.max() <= int(np.ceil(q / 3600.0 * 10.0)) + 1


def test_spillback_fills_upstream_link_and_holds_departures():
    net = _chain([36000.0, 36000.0, 360.0], [50.0, 5.0, 5.0])  # link 2 lets one vehicle out per 10 s
    n = 30
    env = TrafficEnv(net, Demand(np.zeros(n, np.int32), np.full(n, 3, np.int32), np.zeros(n, np.int32)),
                     TrafficParams(dt=5.0, horizon=60))
    final, (states, info, _) = _run(env, 60)
    counts = np.asarray(info["link_counts"])  # [T, 3]
    assert counts[:, 2].max() == 5 and counts[:, 1].max() == 5  # the queue spilled back into link 1
    full_both = (counts[:, 2] == 5) & (counts[:, 1] == 5)
    assert full_both.any()
    assert (counts[:, 1:] <= 5).all()
    assert counts[full_both, 0].max() > 5  # and backs up further upstream


def test_gridlock_is_reported_as_stuck():
    # One-way ring of 4 links holding 2 vehicles each; every vehicle wants to go 3 links on.
    ring = RoadNetwork(
        "ring", np.array([[0, 0], [1, 0], [1, 1], [0, 1]], float) * 15, [f"r{i}" for i in range(4)],
        [0, 1, 2, 3], [1, 2, 3, 0], np.full(4, 15.0), np.full(4, 5.0), np.ones(4), np.ones(4),
        link_flow_capacity=np.full(4, 1800.0), link_storage=np.full(4, 2.0),
    )
    o = np.repeat(np.arange(4), 2).astype(np.int32)
    env = TrafficEnv(ring, Demand(o, ((o + 3) % 4).astype(np.int32), np.zeros(8, np.int32)),
                     TrafficParams(dt=5.0, horizon=40, stuck_time=60.0))
    final, (_, info, _) = _run(env, 40)
    m = {k: np.asarray(v) for k, v in info["metrics"].items()}
    assert m["arrival_rate"][-1] == 0.0
    assert m["stuck"][-1] == 8.0 and m["stuck"][5] == 0.0
    assert m["mean_travel_time"][-1] == pytest.approx(200.0)  # counted to the horizon
    # A ring that is not full flows: nobody stuck.
    env2 = TrafficEnv(ring, Demand(o[::2], ((o[::2] + 3) % 4).astype(np.int32), np.zeros(4, np.int32)),
                      TrafficParams(dt=5.0, horizon=40, stuck_time=60.0))
    _, (_, info2, _) = _run(env2, 40)
    assert float(np.asarray(info2["metrics"]["stuck"])[-1]) == 0.0
    assert float(np.asarray(info2["metrics"]["arrival_rate"])[-1]) == 1.0


def test_metrics_count_unfinished_vehicles_to_the_horizon():
    env = leed_jax.make_env("traffic-grid", num_agents=400, horizon=12, departure_window=5)
    final, (states, info, _) = _run(env, 12, policy="random")
    m = {k: float(np.asarray(v)[-1]) for k, v in info["metrics"].items()}
    s = jax.tree_util.tree_map(np.asarray, final)
    dep_s = s.depart * env.params.dt
    end = 12 * env.params.dt
    tt = np.where(s.status == ARRIVED, s.arrive_time - dep_s, end - dep_s)
    assert m["unfinished"] == float((s.status != ARRIVED).sum()) > 0
    assert m["mean_travel_time"] == pytest.approx(tt.mean(), rel=1e-4)
    assert m["total_travel_time"] == pytest.approx(tt.sum(), rel=1e-4)
    arrived = s.status == ARRIVED
    assert m["mean_travel_time_arrived"] == pytest.approx(tt[arrived].mean(), rel=1e-4)
    assert m["mean_travel_time"] > m["mean_travel_time_arrived"]


@pytest.mark.skipif(not _has_sumo(), reason="needs the 'sumo' extra")
def test_turn_restrictions_respected_and_nobody_trapped():
    env = leed_jax.make_env("traffic-sumo-drt", num_agents=200, dt=0.5, horizon=400)
    net = env.network
    allowed = set(map(tuple, net.connections.tolist()))
    assert len(allowed) < (net.turn_allowed.shape[0] * net.max_out_degree)  # some turns are banned
    assert not net.turn_allowed[net.out_links[net.link_dst] >= 0].all()
    final, (states, info, _) = _run(env, 400, policy="random")
    link, prev = np.asarray(states.link), np.asarray(states.prev_link)
    turned = (link >= 0) & (prev >= 0)
    pairs = set(zip(prev[turned].tolist(), link[turned].tolist()))
    assert len(pairs) > 100 and pairs <= allowed
    # crossings inside a step that follow the fastest path obey the turns as well
    nxt = net.link_next[net.link_next >= 0]
    src = np.nonzero(net.link_next >= 0)[0]
    assert set(zip(src.tolist(), nxt.tolist())) <= allowed
    # every vehicle can still reach its destination from wherever it is
    s = jax.tree_util.tree_map(lambda x: np.asarray(x)[-1], states)
    on = s.status == ON_LINK
    assert np.isfinite(net.link_tt[s.link[on], s.dest[on]]).all()


@pytest.mark.skipif(not _has_sumo(), reason="needs the 'sumo' extra")
def test_sumo_cut_is_strongly_connected_under_turns():
    path = _data_path("sumo:tools/game/DRT/osm.net.xml", __import__("pathlib").Path("."))
    net = read_sumo(path)
    assert np.isfinite(net.link_tt).all() and np.isfinite(net.tt).all()


def test_episodes_draw_their_own_demand_unless_fixed():
    env = leed_jax.make_env("traffic-grid")
    assert env.resample
    _, s1 = env.reset(jax.random.PRNGKey(1))
    _, s2 = env.reset(jax.random.PRNGKey(2))
    _, s1b = env.reset(jax.random.PRNGKey(1))
    assert (np.asarray(s1.origin) != np.asarray(s2.origin)).any()
    np.testing.assert_array_equal(s1.origin, s1b.origin)
    o, d = np.asarray(s1.origin), np.asarray(s1.dest)
    assert (o != d).all() and np.isfinite(env.network.tt[o, d]).all()
    assert set(np.unique(d)) <= set(env.demand_model.pool.tolist())  # the scenario's hotspots
    fixed = leed_jax.make_env("traffic-grid", resample=False)
    _, f1 = fixed.reset(jax.random.PRNGKey(1))
    _, f2 = fixed.reset(jax.random.PRNGKey(2))
    np.testing.assert_array_equal(f1.origin, f2.origin)
    np.testing.assert_array_equal(f1.origin, fixed.demand.origin)


@pytest.mark.parametrize("model", ["bpr", "step"])
def test_other_link_models_run_and_conserve(model):
    env = leed_jax.make_env("traffic-grid", num_agents=100, link_model=model, departure_window=20, hotspots=4)
    final, (states, info, _) = _run(env, env.spec.horizon)
    status = np.asarray(states.status)
    np.testing.assert_array_equal(np.asarray(info["link_counts"]).sum(1), (status == ON_LINK).sum(1))
    assert (status[-1] == ARRIVED).mean() > 0.5
