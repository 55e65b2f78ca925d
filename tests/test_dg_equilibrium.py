"""The simulation-based equilibrium planner on a 2-route network (2x2 grid, 0 -> 3 via 1 or 2)."""

import jax
import numpy as np

from leed_jax.dg.equilibrium import EquilibriumConfig, plan_routes
from leed_jax.envs.demand import Demand
from leed_jax.envs.network import grid_network
from leed_jax.envs.traffic import TrafficEnv, TrafficParams


def _two_routes(n=24):
    """A 2x2 grid whose n vehicles all leave node 0 at once for node 3: two symmetric routes."""
    net = grid_network(2, 2, link_length=200.0, speed=10.0, capacity_per_lane_km=20.0)
    demand = Demand(np.zeros(n, np.int32), np.full(n, 3, np.int32), np.zeros(n, np.int32))
    return TrafficEnv(net, demand, TrafficParams(dt=10.0, horizon=60))


def test_symmetric_two_routes_split_and_beat_all_on_one():
    n = 24
    env = _two_routes(n)
    key = jax.random.PRNGKey(0)
    one = plan_routes(env, key=key, config=EquilibriumConfig(rounds=1))  # all on route 0
    eq = plan_routes(env, key=key, config=EquilibriumConfig(rounds=15, gap_tol=0.0))
    used = {tuple(p) for p in eq.paths}
    assert len(used) == 2  # both routes carry vehicles at the equilibrium
    share = sum(p == eq.paths[0] for p in eq.paths) / n
    assert 0.25 <= share <= 0.75  # symmetric routes: a roughly even split
    assert eq.total_travel_time < one.total_travel_time
    assert eq.gaps[-1] < eq.gaps[0]


def test_queue_table_prices_a_fixed_plan_exactly_where_the_mean_table_cannot():
    # 24 vehicles leave together onto one route: they enter each link in one bin and leave one
    # headway apart, so the bin's mean misprices each by up to half the queue; the queue
    # table (each vehicle's place in the FIFO queue) prices every one of them.
    env = _two_routes(24)
    key = jax.random.PRNGKey(0)
    mean = plan_routes(env, key=key, config=EquilibriumConfig(rounds=1, table="mean"))
    queue = plan_routes(env, key=key, config=EquilibriumConfig(rounds=1))  # auto: queue links
    assert mean.totals == queue.totals  # the same plan, simulated once each
    assert mean.table_errors[0] > 0.1
    assert queue.table_errors[0] < 1e-3
