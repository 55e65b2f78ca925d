"""The classical expert: congestion-aware traffic routes and the MPE assignment."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from leed_jax.dg.instructions import parse_instructions
from leed_jax.dg.planner import bpr_time, routes_to_text, spread_assignment, traffic_routes
from leed_jax.envs.network import RoadNetwork, grid_network


def grid_graph(rows: int, cols: int, capacity: float = 10.0) -> RoadNetwork:
    """A two-way grid (200 m links at 13.9 m/s) holding ``capacity`` vehicles per link."""
    net = grid_network(rows, cols, link_length=200.0, speed=13.9)
    return dataclasses.replace(net, link_capacity=np.full(net.num_links, float(capacity)))


def test_routes_are_valid_paths():
    g = grid_graph(4, 4)
    rng = np.random.default_rng(0)
    o = rng.integers(0, 16, 200)
    d = (o + rng.integers(1, 16, 200)) % 16
    dep = rng.integers(0, 10, 200)
    paths = traffic_routes(g, o, d, dep, dt=10.0, alpha=0.15, beta=4.0)
    for p, oo, dd in zip(paths, o, d):
        assert p[0] == oo and p[-1] == dd
        assert all(g.link_index(u, v) >= 0 for u, v in itertools.pairwise(p))
    # The text round-trips through the reader: one line per hop.
    text = routes_to_text(paths)
    assert len(parse_instructions(text).instructions) == sum(len(p) - 1 for p in paths)


def test_congestion_spreads_simultaneous_vehicles():
    g = grid_graph(3, 3, capacity=2.0)
    n = 30  # all from corner 0 to corner 8 at once: the free-flow router piles them up
    paths = traffic_routes(g, np.zeros(n, int), np.full(n, 8), np.zeros(n, int), dt=10.0,
                           alpha=0.15, beta=4.0, increments=n)
    assert len({tuple(p) for p in paths}) >= 4  # at least 4 of the 6 shortest routes used
    first_links = {p[1] for p in paths}
    assert first_links == {1, 3}
    # Without congestion (alpha = 0) every vehicle takes one route.
    same = traffic_routes(g, np.zeros(n, int), np.full(n, 8), np.zeros(n, int), dt=10.0,
                          alpha=0.0, beta=4.0, increments=n)
    assert len({tuple(p) for p in same}) == 1


def test_vehicles_that_left_do_not_load_the_network():
    g = grid_graph(3, 3, capacity=1.0)
    # Vehicle 0 departs long before vehicle 1: they never meet, so both take the same route.
    paths = traffic_routes(g, np.array([0, 0]), np.array([8, 8]), np.array([0, 100]),
                           dt=10.0, alpha=0.15, beta=4.0)
    assert paths[0] == paths[1]


def test_bpr_time():
    g = grid_graph(2, 2, capacity=4.0)
    t = bpr_time(g, np.full(g.num_links, 4.0), alpha=0.15, beta=4.0)
    np.testing.assert_allclose(t, g.link_tfree * 1.15)


def test_spread_assignment_is_optimal():
    rng = np.random.default_rng(1)
    for _ in range(20):
        a, lm = rng.uniform(-1, 1, (4, 2)), rng.uniform(-1, 1, (4, 2))
        got = spread_assignment(a, lm)

        def cost(perm, a=a, lm=lm):
            return sum(np.linalg.norm(a[i] - lm[perm[i]]) for i in range(4))

        best = min(itertools.permutations(range(4)), key=cost)
        assert sorted(got.tolist()) == [0, 1, 2, 3]
        assert np.isclose(cost(got), cost(best))
    # More agents than landmarks: the extra agents take their nearest landmark.
    got = spread_assignment(np.array([[0, 0], [0.1, 0], [5, 5]]), np.array([[0, 0], [5, 5]]))
    assert got.tolist() == [0, 0, 1]
