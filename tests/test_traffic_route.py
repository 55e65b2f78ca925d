"""In-step moves along a planned route (``TrafficEnv.step(..., route=...)``, the DG executor):
a vehicle crossing several nodes within one step follows its plan, not the fastest links."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from leed_jax.dg.executor import executor_for, pad_targets, traffic_route
from leed_jax.envs.demand import Demand
from leed_jax.envs.network import grid_network
from leed_jax.envs.traffic import TrafficEnv, TrafficParams

# 4x4 grid of 30 m links at 10 m/s (3 s each): a 10 s step crosses three nodes. Plans that are
# not fastest paths (detours), so the old in-step rule (fastest links) would shorten them.
PLANS = [
    [0, 1, 2, 6, 5, 9, 10, 14, 15],  # 8 links (the fastest path has 6)
    [3, 7, 6, 2, 1, 5, 9, 13, 12],  # 8 links (fastest 6)
    [12, 8, 9, 13, 14, 10, 6, 7, 3],  # 8 links (fastest 6)
]


def _env(net, plans, dt, impl, depart=None):
    o = np.array([p[0] for p in plans], np.int32)
    d = np.array([p[-1] for p in plans], np.int32)
    dep = np.zeros(len(plans), np.int32) if depart is None else np.asarray(depart, np.int32)
    horizon = int(np.ceil(60.0 / dt)) + int(dep.max()) + 2
    return TrafficEnv(net, Demand(o, d, dep), TrafficParams(dt=dt, horizon=horizon, queue_impl=impl))


def _execute(env, plans):
    key = jax.random.PRNGKey(0)
    obs, state = env.reset(key)
    return jax.device_get(executor_for(env)(key, obs, state, jnp.asarray(pad_targets([p[1:] for p in plans]))))


@pytest.mark.parametrize("dt", [10.0, 0.5])
def test_lone_vehicles_follow_their_plan_within_a_step(dt):
    net = grid_network(4, 4, link_length=30.0, speed=10.0, flow_per_lane=1e7, jam_spacing=1e-3)
    # Departures far apart: each vehicle is alone on the network.
    env = _env(net, PLANS, dt, "vehicles", depart=[0, int(40 / dt), int(80 / dt)])
    out = _execute(env, PLANS)
    assert np.asarray(out.extras["arrived"]).all()
    planned = [3.0 * (len(p) - 1) for p in PLANS]  # every link takes 3 s
    np.testing.assert_allclose(np.asarray(out.extras["travel_time"]), planned, rtol=1e-5)
    assert min(planned) > net.tt[PLANS[0][0], PLANS[0][-1]] + 5.0  # the plans are real detours


def test_route_links_of_node_paths():
    net = grid_network(4, 4, link_length=30.0, speed=10.0)
    env = _env(net, PLANS, 10.0, "vehicles")
    targets = jnp.asarray(pad_targets([p[1:] for p in PLANS]))
    links = np.asarray(traffic_route(env, jnp.asarray([p[0] for p in PLANS]), targets))
    for p, row in zip(PLANS, links):
        k = len(p) - 1
        assert [(int(net.link_src[x]), int(net.link_dst[x])) for x in row[:k]] == list(zip(p[:-1], p[1:]))
        assert (row[k:] == -1).all()  # padding repeats the destination: no link


def test_routed_hops_same_in_both_queue_implementations():
    """Jammed: 60 vehicles on 3 detour plans (and their reverses) at once, short storage;
    ``heads`` and ``vehicles`` give the same travel times and final states with routes."""
    net = grid_network(4, 4, link_length=30.0, speed=10.0, lanes=1.0, flow_per_lane=900.0)
    plans = [list(p) for p in PLANS] + [list(reversed(p)) for p in PLANS]
    plans = [plans[i % len(plans)] for i in range(60)]
    dep = np.arange(60) % 3
    a = _env(net, plans, 10.0, "vehicles", depart=dep)
    b = _env(net, plans, 10.0, "heads", depart=dep)
    assert b._heads and not a._heads
    ra, rb = _execute(a, plans), _execute(b, plans)
    np.testing.assert_array_equal(ra.extras["travel_time"], rb.extras["travel_time"])
    np.testing.assert_array_equal(ra.extras["peak_link_counts"], rb.extras["peak_link_counts"])
    assert (ra.extras["peak_link_counts"] >= net.link_storage - 1e-6).any()  # some link filled up
