"""Export of env episodes to SUMO (leed_jax.envs.sumo_io): recorded routes, network and route
files that SUMO loads without errors, a tiny env-vs-SUMO case end to end, and --export-sumo."""

from __future__ import annotations

import numpy as np
import pytest

import leed_jax
from leed_jax.envs import sumo_io
from leed_jax.envs.base import ScenarioError
from leed_jax.envs.demand import Demand
from leed_jax.envs.network import grid_network
from leed_jax.envs.traffic import TrafficEnv, TrafficParams

needs_sumo = pytest.mark.skipif(not sumo_io.has_sumo(), reason="needs the 'sumo' extra (sumo, netconvert)")


def _grid_env(n=8, rows=3, cols=3, dt=10.0, horizon=40, spread=3):
    """A small grid whose vehicles depart ``spread`` steps apart: they never meet."""
    net = grid_network(rows, cols, link_length=200.0, speed=10.0)
    rng = np.random.default_rng(0)
    o = rng.integers(0, net.num_nodes, n)
    d = (o + 1 + rng.integers(0, net.num_nodes - 1, n)) % net.num_nodes
    dep = np.arange(n) * spread
    return TrafficEnv(net, Demand(o.astype(np.int32), d.astype(np.int32), dep.astype(np.int32)),
                      TrafficParams(dt=dt, horizon=horizon))


def _random_policy(env):
    import jax
    import jax.numpy as jnp

    def policy(key, obs, state):
        avail = env.avail_actions(state)
        return jax.random.categorical(key, jnp.where(avail, 0.0, -1e9))

    return policy


def test_fixed_routes_are_driven_and_recorded_exactly():
    """Vehicle 0 drives out, back through its origin, then on to its destination (a node passed
    twice); the others their fastest routes. The recording gives back exactly those links."""
    env = _grid_env()
    net = env.network
    routes = sumo_io.shortest_routes(net, env.demand.origin, env.demand.destination)
    assert sumo_io.check_routes(net, routes, env.demand.origin, env.demand.destination) == []
    free = np.array([net.link_tfree[r].sum() for r in routes])
    np.testing.assert_allclose(free, net.tt[env.demand.origin, env.demand.destination])
    o = int(env.demand.origin[0])
    first = int(net.out_links[o][0])
    back = int(next(l for l in net.out_links[net.link_dst[first]] if l >= 0 and net.link_dst[l] == o))
    routes[0] = [first, back, *routes[0]]
    ep = sumo_io.record_episode(env, sumo_io.route_policy(env, routes))
    assert ep.arrived.all()
    assert ep.routes == routes and ep.filled_links == 0
    # Lone vehicles drive at free flow (vehicle 0 took a detour).
    np.testing.assert_allclose(ep.travel_time[1:], free[1:], atol=1e-3)


def test_gaps_between_observations_are_closed_along_links():
    net = grid_network(1, 4)  # 0 - 1 - 2 - 3
    link = {(int(s), int(t)): i for i, (s, t) in enumerate(zip(net.link_src, net.link_dst))}
    # chose 0->1 and was seen on it, then standing at node 3: crossed 1->2 and 2->3 unseen
    chosen = np.array([link[0, 1], link[1, 2], -1])
    route, filled = sumo_io._assemble_route(
        net, 0, 3, chosen, np.array([True, False, False]), np.array([link[0, 1], -1, -1]), np.array([1, 3, 3])
    )
    assert route == [link[0, 1], link[1, 2], link[2, 3]]
    assert filled == (0 if hasattr(net, "link_next") else 2)


def test_bad_routes_are_named():
    env = _grid_env(n=2)
    net = env.network
    routes = sumo_io.shortest_routes(net, env.demand.origin, env.demand.destination)
    broken = [routes[0][1:] or routes[0], routes[1]]
    problems = sumo_io.check_routes(net, broken, env.demand.origin, env.demand.destination)
    if routes[0][1:]:
        assert problems and "vehicle 0" in problems[0]
    with pytest.raises(ScenarioError, match="routes for"):
        sumo_io.route_policy(env, routes[:1])


def test_corrupt_tripinfo_is_one_clear_error(tmp_path):
    bad = tmp_path / "tripinfo.xml"
    bad.write_text("<tripinfos><tripinfo id='veh0' depart=")
    with pytest.raises(sumo_io.SumoError, match="unreadable tripinfo"):
        sumo_io.read_tripinfo(bad)
    with pytest.raises(sumo_io.SumoError, match="no tripinfo"):
        sumo_io.read_tripinfo(tmp_path / "missing.xml")


@needs_sumo
def test_exported_grid_episode_loads_in_sumo_and_matches_free_flow(tmp_path):
    """A random-policy episode on a generated grid: netconvert keeps link ids, lengths and
    speeds; SUMO (meso) loads the routes without errors; every route is connected in SUMO's
    own network; lone vehicles take their free-flow time in both simulators."""
    import sumolib

    env = _grid_env(n=8, spread=60, horizon=560)  # one vehicle on the road at a time
    ep = sumo_io.record_episode(env, _random_policy(env))
    assert ep.arrived.all()
    files = sumo_io.export_episode(env, ep, tmp_path)
    net = sumolib.net.readNet(str(files["net"]))
    for e, lid in enumerate(env.network.link_ids):
        edge = net.getEdge(lid)
        assert edge.getLength() == pytest.approx(env.network.link_length[e], abs=0.01)
        assert edge.getSpeed() == pytest.approx(env.network.link_speed[e], abs=0.01)
    for r in ep.routes:
        edges = [net.getEdge(env.network.link_ids[l]) for l in r]
        for a, b in zip(edges, edges[1:]):
            assert b in a.getOutgoing(), (a.getID(), b.getID())
    res = sumo_io.run_sumo(files["net"], files["routes"], tmp_path / "out", meso=True)
    assert res.warnings == [] and res.unfinished == []
    assert sorted(res.travel_time) == list(range(env.spec.num_agents))
    sumo_tt = np.array([res.travel_time[i] for i in range(env.spec.num_agents)])
    free = np.array([env.network.link_tfree[r].sum() for r in ep.routes])
    np.testing.assert_allclose(sumo_tt, free, atol=1.0)  # SUMO's 1 s step
    np.testing.assert_allclose(ep.travel_time, free, atol=1e-3)


@needs_sumo
def test_sumo_network_export_copies_the_net_and_routes_use_its_edges(tmp_path):
    """A random policy on the OSM network: the env's turn restrictions make every realised
    route a route SUMO accepts on its own network, which is copied unchanged."""
    env = leed_jax.make_env("traffic-sumo-drt", num_agents=12)
    ep = sumo_io.record_episode(env, _random_policy(env))
    assert sumo_io.check_routes(env.network, ep.routes, ep.origin, None) == []
    files = sumo_io.export_episode(env, ep, tmp_path)
    assert files["net"].read_bytes() == sumo_io.network_source(env).read_bytes()
    res = sumo_io.run_sumo(files["net"], files["routes"], tmp_path / "out", meso=True, end_s=3600)
    assert [w for w in res.warnings if w.startswith("Error")] == []
    assert len(res.travel_time) + len(res.unfinished) == sum(1 for r in ep.routes if r)


@needs_sumo
@pytest.mark.skipif(not hasattr(TrafficParams(), "link_model"), reason="needs the env's queue link model (flow capacity)")
def test_bottleneck_passes_its_capacity_in_both_simulators(tmp_path):
    """Tiny end-to-end validation: 12 vehicles through a 600 veh/h link. SUMO meso with the
    headways derived from the same capacity; both release one vehicle per ~6 s."""
    import dataclasses

    from leed_jax.envs.network import RoadNetwork

    net = RoadNetwork(
        name="bn", node_xy=np.array([[0.0, 0], [200, 0], [400, 0]]), node_names=["a", "b", "c"],
        link_src=np.array([0, 1]), link_dst=np.array([1, 2]), link_length=np.full(2, 200.0),
        link_speed=np.full(2, 10.0), link_lanes=np.ones(2), link_capacity=np.full(2, 4.0),
    )
    net = dataclasses.replace(net, link_flow_capacity=np.array([1800.0, 600.0]))
    n = 12
    env = TrafficEnv(net, Demand(np.zeros(n, np.int32), np.full(n, 2, np.int32), np.arange(n, dtype=np.int32)),
                     TrafficParams(dt=2.0, horizon=200))
    routes = sumo_io.shortest_routes(net, env.demand.origin, env.demand.destination)
    ep = sumo_io.record_episode(env, sumo_io.route_policy(env, routes))
    net_file = sumo_io.write_network(net, tmp_path, name="bn")
    add, info = sumo_io.meso_types_file(net, net_file, tmp_path / "types.add.xml")
    assert info["meso_types"] == 2 and info["tau_max_s"] == pytest.approx(6.0 - 0.75)
    rou = sumo_io.write_routes(net, ep, tmp_path / "bn.rou.xml")
    res = sumo_io.run_sumo(net_file, rou, tmp_path / "out", additional=[add])
    arrival = np.sort([ep.depart_s[i] + t for i, t in res.travel_time.items()])
    assert len(arrival) == n
    # SUMO: the bottleneck's headway is 6 s (3600 / 600): 11 gaps of 6 s (1 s steps).
    assert np.diff(arrival).mean() == pytest.approx(6.0, abs=0.5)
    sumo_tt = np.array([res.travel_time[i] for i in range(n)])
    assert ep.arrived.all()
    # The env, with the same capacity, within 10 % of SUMO on the mean.
    assert ep.travel_time.mean() / sumo_tt.mean() == pytest.approx(1.0, abs=0.1)



@needs_sumo
def test_export_trained_policy_writes_a_greedy_episode_sumo_can_run(tmp_path):
    """What ``--export-sumo`` calls, on an (untrained) actor-critic: the files run in SUMO."""
    import subprocess
    import types

    import jax

    from leed_jax.config import TrainConfig
    from leed_jax.po.trainer import make_train

    env = _grid_env(n=6, horizon=60)
    config = TrainConfig(algo="ippo", num_envs=2, num_steps=8, actor_hidden=(16,), critic_hidden=(16,))
    trainer = make_train(config, env)
    params = jax.tree_util.tree_map(lambda x: x[None], jax.jit(trainer.policy.init)(jax.random.PRNGKey(0)))
    result = types.SimpleNamespace(params=params, trainer=trainer, config=config)
    files, ep = sumo_io.export_trained_policy(env, result, tmp_path / "sumo")
    assert ep.num_vehicles == 6 and all(ep.routes)
    proc = subprocess.run([sumo_io.sumo_binary("sumo"), "-c", str(files["config"]), "--mesosim", "--no-step-log"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "Error" not in proc.stderr, proc.stderr
    tt, unfinished = sumo_io.read_tripinfo(files["config"].parent / "traffic.tripinfo.xml")
    assert len(tt) + len(unfinished) == 6


def test_run_export_sumo_refuses_a_non_traffic_scenario_before_training(tmp_path, capsys):
    from leed_jax.run import main

    assert main(["--scenario", "mpe-spread", "--algo", "ippo", "--out", str(tmp_path / "r"),
                 "--export-sumo", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--export-sumo needs a traffic scenario" in err
    assert not (tmp_path / "r").exists()
