"""In-step moves along a planned route (``TrafficEnv.step(..., route=...)``, the DG executor):
a vehicle crossing several nodes within one step follows its plan, not the fastest links.
(Both queue implementations with routes: tests/test_traffic_heads.py.)"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from leed_jax.dg.executor import executor_for, pad_targets, traffic_route
from leed_jax.envs.demand import Demand
from leed_jax.envs.network import grid_network
from leed_jax.envs.traffic import TrafficEnv, TrafficParams

# 4x4 grid of 30 m links at 10 m/s (3 s each): a 10 s step crosses three nodes. Detour plans
# (8 links where the fastest path has 6), so fastest in-step links would shorten them.
DETOURS = [
    [0, 1, 2, 6, 5, 9, 10, 14, 15],
    [3, 7, 6, 2, 1, 5, 9, 13, 12],
    [12, 8, 9, 13, 14, 10, 6, 7, 3],
]


def test_executed_plans_are_followed_within_a_step():
    """60 vehicles on the detours and their reverses at once (1-lane links, 4 s headway, storage
    4: queues and full links), then the 3 detours again, each alone: those take exactly their
    plan's free-flow time (24 s, not the 18 s of a fastest path; without the route the first
    one loops round and takes 30 s)."""
    net = grid_network(4, 4, link_length=30.0, speed=10.0, lanes=1.0, flow_per_lane=900.0)
    jam = [list(p) for p in DETOURS] + [list(reversed(p)) for p in DETOURS]
    plans = [jam[i % len(jam)] for i in range(60)] + DETOURS
    dep = np.concatenate([np.arange(60) % 3, [30, 34, 38]]).astype(np.int32)
    demand = Demand(np.array([p[0] for p in plans], np.int32), np.array([p[-1] for p in plans], np.int32), dep)
    targets = jnp.asarray(pad_targets([p[1:] for p in plans]))
    env = TrafficEnv(net, demand, TrafficParams(dt=10.0, horizon=44, queue_impl="vehicles"))
    key = jax.random.PRNGKey(0)
    obs, state = env.reset(key)
    out = jax.device_get(executor_for(env)(key, obs, state, targets))
    # The plans' links, as the executor hands them to the env.
    links = np.asarray(traffic_route(env, jnp.asarray(demand.origin), targets))
    for p, row in zip(DETOURS, links[-3:]):
        assert [(int(net.link_src[x]), int(net.link_dst[x])) for x in row[:8]] == list(itertools.pairwise(p))
        assert (row[8:] == -1).all()  # the padding repeats the destination: no link
    assert out.extras["arrived"].all()
    tt = np.asarray(out.extras["travel_time"])
    assert (dep[:60] * 10.0 + tt[:60]).max() < 300.0  # the jam has cleared before the lone ones leave
    np.testing.assert_allclose(tt[60:], 24.0, rtol=1e-5)  # 8 links x 3 s, crossed 3 per step
    assert tt[:60].max() > 30.0 and (out.extras["peak_link_counts"] >= net.link_storage).any()  # it was a jam


def test_route_of_the_wrong_shape_is_one_clear_error():
    net = grid_network(2, 2)
    env = TrafficEnv(net, Demand(np.zeros(3, np.int32), np.full(3, 3, np.int32), np.zeros(3, np.int32)))
    _, state = env.reset(jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=r"route must be \[num_agents=3, L\].*\(2, 4\)"):
        env.step(None, state, jnp.zeros(3, jnp.int32), route=jnp.zeros((2, 4), jnp.int32))
