"""Validate the JAX traffic env against real traffic simulators on the same fixed routes.

    python benchmarks/validate_traffic.py                       # all cases, SUMO meso + UXsim
    python benchmarks/validate_traffic.py --cases bottleneck --sims sumo --out /tmp/val

For every case the same network, vehicles, departure times and fixed routes (each vehicle's
free-flow fastest route that respects the network's turns) run in

* the env (``leed_jax``, its default link model), one episode driven by
  :class:`leed_jax.envs.sumo_io.RoutePolicy`;
* SUMO's mesoscopic model (``sumo --mesosim``; extra ``leed_jax[sumo]``): queues per edge
  segment (Eissfeldt's model), no junction control (the env has none either);
* UXsim (extra ``leed_jax[validate]``): Newell's simplified kinematic-wave (X-)model on links
  with the incremental node model, one vehicle per platoon (``deltan = 1``).

Every simulator's parameters come from the same physical values of the env's network: link
lengths, free speeds and lanes; jam spacing (vehicle length + gap: SUMO's vType, UXsim's jam
density); flow capacity per lane (SUMO: meso headways ``tau = 3600/q − spacing/v`` per edge
type, see :func:`leed_jax.envs.sumo_io.meso_types_file`; UXsim: the reaction time of the
median link, so its fundamental diagram reaches ``q`` there, and each link's outflow capped
at its ``q``). Nothing is fitted to the env's results.

Cases: ``grid-uncongested`` (6x6 grid, 50 vehicles), ``bottleneck`` (60 vehicles into a
600 veh/h link), ``traffic-grid-large`` (shipped, congested), ``traffic-sumo-drt`` (shipped,
congested) and ``traffic-sumo-drt+junctions``
(its links lengthened by SUMO's junction crossings). ``--sims sumo-jc`` adds SUMO meso with
junction control (traffic lights, right of way), which the env does not model.

Per case and simulator: vehicles, how many arrived in each, mean travel time of the vehicles
that arrived in both (env and reference), their ratio (env / reference; target 0.9–1.1), the
Pearson correlation of per-vehicle travel times (target ≥ 0.8), and the all-vehicle mean with
unfinished vehicles counted up to the env's horizon. JSON on the last line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

import leed_jax
from leed_jax.envs import sumo_io
from leed_jax.envs.demand import Demand, random_demand
from leed_jax.envs.network import RoadNetwork, grid_network
from leed_jax.envs.traffic import TrafficEnv, TrafficParams

CASES = (
    "grid-uncongested", "bottleneck", "traffic-grid-large", "traffic-sumo-drt", "traffic-sumo-drt-nojunctions",
)
SIMS = ("sumo", "uxsim", "sumo-jc")  # sumo-jc: SUMO meso with junction control (not by default)
DEFAULT_SIMS = ("sumo", "uxsim")
LANE_CAPACITY = 1800.0  # veh/h/lane, urban street (the value issue #8 names)


def _with_flow_capacity(net: RoadNetwork, per_lane: np.ndarray | float) -> RoadNetwork:
    """``net`` with ``link_flow_capacity = per_lane · lanes`` (veh/h)."""
    cap = np.broadcast_to(np.asarray(per_lane, np.float64), (net.num_links,)) * net.link_lanes
    return dataclasses.replace(net, link_flow_capacity=cap)


def _params(dt: float, horizon: int) -> TrafficParams:
    return TrafficParams(dt=dt, horizon=horizon)


def build_case(name: str) -> TrafficEnv:
    """The env of a validation case (its network, demand and step)."""
    if name == "grid-uncongested":
        # 6x6 grid, 1-lane 200 m streets at 10 m/s, 1,800 veh/h/lane; 50 vehicles over 5 min:
        # the busiest link sees a small fraction of its capacity.
        net = _with_flow_capacity(grid_network(6, 6, link_length=200.0, speed=10.0, lanes=1.0), LANE_CAPACITY)
        demand = random_demand(net, 50, departure_window=30, seed=1)
        return TrafficEnv(net, demand, _params(10.0, 90), name=name)
    if name == "bottleneck":
        # A 4-node corridor 0->1->2->3 of 200 m 1-lane links at 10 m/s; link 1->2 passes
        # 600 veh/h, the others 1,800. 60 vehicles enter at 1,800 veh/h (one per 2 s), all
        # from node 0 to node 3: a queue grows upstream of the bottleneck at 1,200 veh/h.
        net = RoadNetwork(
            name="bottleneck",
            node_xy=np.array([[0.0, 0.0], [200.0, 0.0], [400.0, 0.0], [600.0, 0.0]]),
            node_names=[f"Intersection_{i}" for i in range(4)],
            link_src=np.array([0, 1, 2]),
            link_dst=np.array([1, 2, 3]),
            link_length=np.full(3, 200.0),
            link_speed=np.full(3, 10.0),
            link_lanes=np.ones(3),
            link_capacity=np.full(3, 4.0),
        )
        net = _with_flow_capacity(net, np.array([LANE_CAPACITY, 600.0, LANE_CAPACITY]))
        n = 60
        dep = np.arange(n, dtype=np.int32)  # steps of dt = 2 s: one vehicle per step
        demand = Demand(np.zeros(n, np.int32), np.full(n, 3, np.int32), dep)
        return TrafficEnv(net, demand, _params(2.0, 400), name=name)
    if name == "traffic-sumo-drt-nojunctions":
        # The shipped DRT scenario read without SUMO's junction crossings (internal lanes):
        # each link as long as its edge alone, as read_sumo did before it added them.
        env = leed_jax.make_env("traffic-sumo-drt")
        net = env.network
        net2 = dataclasses.replace(net, link_length=net.link_length - net.link_junction,
                                   link_junction=np.zeros(net.num_links))
        o, d, dep = sumo_io.episode_demand(env, env.reset(jax.random.PRNGKey(0))[1])  # the same vehicles
        env2 = TrafficEnv(net2, Demand(o, d, dep), env.params, name=name)
        env2.scenario = env.scenario  # same source .net.xml for SUMO
        return env2
    # The shipped scenarios, as they are.
    return leed_jax.make_env(name)


# ---------------------------------------------------------------------------- the env
@dataclasses.dataclass
class EnvRun:
    origin: np.ndarray  # [N] this episode's demand
    dest: np.ndarray  # [N]
    depart_s: np.ndarray  # [N] s
    routes: list[list[int]]
    travel_time: np.ndarray  # [N] s
    arrived: np.ndarray  # [N] bool
    deviated: int  # vehicles whose realised route differs from the fixed one
    filled_links: int
    wall_s: float


def run_env(env) -> EnvRun:
    """One episode of ``env`` (seed 0) with every vehicle on its fixed fastest route."""
    net = env.network
    _, state = env.reset(jax.random.PRNGKey(0))
    origin, dest, depart = sumo_io.episode_demand(env, state)
    routes = sumo_io.shortest_routes(net, origin, dest)
    t0 = time.perf_counter()
    ep = sumo_io.record_episode(env, sumo_io.route_policy(env, routes, origin, dest), state=state)
    wall = time.perf_counter() - t0
    deviated = sum(
        1 for r, got, a in zip(routes, ep.routes, ep.arrived) if (got != r if a else got != r[: len(got)])
    )
    return EnvRun(origin, dest, ep.depart_s, routes, ep.travel_time, ep.arrived, deviated, ep.filled_links, wall)


# ---------------------------------------------------------------------------- SUMO
def run_sumo_case(env, run: EnvRun, work: Path, junction_control: bool = False) -> dict:
    net = env.network
    spacing = sumo_io.jam_spacing(net)
    routes = run.routes
    ep = sumo_io.Episode(
        origin=run.origin,
        destination=run.dest,
        depart_s=run.depart_s,
        routes=routes,
        travel_time=np.zeros(env.spec.num_agents),
        arrived=np.zeros(env.spec.num_agents, bool),
        dt=env.params.dt,
        horizon_s=env.params.dt * env.spec.horizon,
    )
    net_file = sumo_io.write_network(net, work, sumo_io.network_source(env), name="case")
    add, info = sumo_io.meso_types_file(net, net_file, work / "meso_types.add.xml", spacing)
    rou = sumo_io.write_routes(net, ep, work / "case.rou.xml", vehicle_length=spacing * 2 / 3, min_gap=spacing / 3)
    end = 20 * ep.horizon_s  # long enough for every vehicle SUMO can finish
    extra = ["--meso-junction-control", "true"] if junction_control else []
    res = sumo_io.run_sumo(net_file, rou, work / "sumo", meso=True, end_s=end, additional=[add], extra_args=extra)
    tt = np.full(env.spec.num_agents, np.nan)
    for i, t in res.travel_time.items():
        tt[i] = t
    info.update(sumo_wall_s=res.wall_s, sumo_warnings=len(res.warnings), sumo_first_warnings=res.warnings[:3])
    # The same routes driven alone (departures far apart): SUMO's free-flow time of each route,
    # which separates differences in the network (lengths, junctions) from the traffic model.
    free = np.array([net.link_tfree[r].sum() for r in routes])
    gap = 4.0 * float(free.max()) + 60.0
    lone = dataclasses.replace(ep, depart_s=np.arange(len(routes)) * gap)
    rou_lone = sumo_io.write_routes(net, lone, work / "lone.rou.xml", vehicle_length=spacing * 2 / 3, min_gap=spacing / 3)
    res_lone = sumo_io.run_sumo(net_file, rou_lone, work / "sumo-lone", meso=True, additional=[add], extra_args=extra)
    lone_tt = np.array([res_lone.travel_time.get(i, np.nan) for i in range(len(routes))])
    info.update(
        lone_mean_tt_sumo=float(np.nanmean(lone_tt)),
        lone_mean_tt_env_free_flow=float(free.mean()),
        lone_ratio=float(free.mean() / np.nanmean(lone_tt)),
    )
    return {"travel_time": tt, "info": info}


# ---------------------------------------------------------------------------- UXsim
def run_uxsim_case(env, run: EnvRun, tau: float | None = None) -> dict:
    import uxsim

    net = env.network
    spacing = sumo_io.jam_spacing(net)
    lanes = np.maximum(np.round(net.link_lanes), 1).astype(int)
    q = net.link_flow_capacity / lanes / 3600.0  # veh/s/lane
    # Reaction time of the median link: there the triangular diagram's capacity
    # 1 / (tau + spacing / v) equals q; every link's outflow is capped at its own q. (An upper
    # clip at 2 s, kept until stop 17, broke that equality at 900 veh/h/lane, where tau is
    # about 3.5 s: the diagram's capacity became ~1,400 veh/h/lane and its backward wave 1.7x
    # as fast, and UXsim's congested travel times came out 15-20 % lower.) The lower clip only
    # guards against a zero or negative time step.
    if tau is None:
        tau = float(max(np.median(1.0 / q - spacing / net.link_speed), 0.2))
    horizon = env.params.dt * env.spec.horizon
    w = uxsim.World(
        name="", deltan=1, reaction_time=tau, tmax=20 * horizon, print_mode=0, save_mode=0,
        show_mode=0, random_seed=0,
    )
    names = [f"n{i}" for i in range(net.num_nodes)]
    for i, (x, y) in enumerate(net.node_xy.tolist()):
        w.addNode(names[i], x, y)
    for e in range(net.num_links):
        w.addLink(
            f"l{e}", names[net.link_src[e]], names[net.link_dst[e]], length=float(net.link_length[e]),
            free_flow_speed=float(net.link_speed[e]), jam_density_per_lane=1.0 / spacing,
            number_of_lanes=int(lanes[e]), capacity_out=float(q[e] * lanes[e]),
        )
    vehs = []
    routes = run.routes
    for i, r in enumerate(routes):
        v = w.addVehicle(names[run.origin[i]], names[run.dest[i]], float(run.depart_s[i]), name=f"veh{i}")
        v.enforce_route([f"l{e}" for e in r])
        vehs.append(v)
    t0 = time.perf_counter()
    w.exec_simulation()
    wall = time.perf_counter() - t0
    tt = np.array([v.travel_time if v.travel_time is not None and v.travel_time >= 0 else np.nan for v in vehs])
    off_route = sum(
        1 for v, r in zip(vehs, routes) if v.travel_time is not None and v.travel_time >= 0
        and [l.name for l in v.traveled_route()[0].links] != [f"l{e}" for e in r]
    )
    return {"travel_time": tt, "info": {"uxsim_reaction_time_s": tau, "uxsim_wall_s": wall, "uxsim_off_route": off_route}}


# ---------------------------------------------------------------------------- comparison
def compare(env, env_run: EnvRun, ref_tt: np.ndarray) -> dict:
    horizon = env.params.dt * env.spec.horizon
    dep = env_run.depart_s
    env_tt = env_run.travel_time
    env_ok = env_run.arrived
    ref_ok = np.isfinite(ref_tt)
    both = env_ok & ref_ok
    out = {
        "vehicles": int(env.spec.num_agents),
        "arrived_env": int(env_ok.sum()),
        "arrived_ref": int(ref_ok.sum()),
        "arrived_both": int(both.sum()),
    }
    if both.sum() >= 2:
        e, r = env_tt[both], ref_tt[both]
        out.update(
            mean_tt_env=float(e.mean()),
            mean_tt_ref=float(r.mean()),
            ratio=float(e.mean() / r.mean()),
            corr=float(np.corrcoef(e, r)[0, 1]) if e.std() > 0 and r.std() > 0 else None,
        )
    # All vehicles, unfinished ones counted up to the horizon (what the env's metrics report).
    ref_cens = np.where(ref_ok, np.minimum(ref_tt, horizon - dep), horizon - dep)
    env_cens = np.where(env_ok, env_tt, horizon - dep)
    out["mean_tt_all_env"] = float(env_cens.mean())
    out["mean_tt_all_ref"] = float(ref_cens.mean())
    out["ratio_all"] = float(env_cens.mean() / ref_cens.mean())
    out["target_met"] = bool(
        out.get("ratio") is not None and 0.9 <= out["ratio"] <= 1.1 and (out.get("corr") or 0.0) >= 0.8
    )
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {', '.join(CASES)}")
    p.add_argument("--sims", default=",".join(DEFAULT_SIMS),
                   help="comma-separated: sumo, uxsim, sumo-jc (meso with --meso-junction-control: "
                        "traffic lights and right of way, which the env does not model)")
    p.add_argument("--out", default=None, help="keep SUMO's files here (default: a temporary directory)")
    p.add_argument("--uxsim-tau", type=float, default=None, metavar="S",
                   help="UXsim's reaction time in seconds (default: the one whose diagram has the "
                        "links' flow capacity); a smaller one keeps the capped outflow but speeds "
                        "up the backward wave (spacing / tau): a probe of how much spillback decides")
    args = p.parse_args(argv)
    if args.uxsim_tau is not None and not args.uxsim_tau > 0:
        print(f"validate_traffic: --uxsim-tau must be > 0, got {args.uxsim_tau}", file=sys.stderr)
        return 2
    cases = [c for c in args.cases.split(",") if c]
    sims = [s for s in args.sims.split(",") if s]
    bad = [c for c in cases if c not in CASES] + [s for s in sims if s not in SIMS]
    if bad:
        print(f"validate_traffic: unknown case or simulator {bad[0]!r}", file=sys.stderr)
        return 2
    if any(s.startswith("sumo") for s in sims) and not sumo_io.has_sumo():
        print("validate_traffic: SUMO not found; install leed_jax[sumo] or pass --sims uxsim", file=sys.stderr)
        return 2
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="leed-validate-"))
    results = {}
    for case in cases:
        t0 = time.perf_counter()
        env = build_case(case)
        env_run = run_env(env)
        free = np.array([env.network.link_tfree[r].sum() for r in env_run.routes])
        row = {
            "dt": env.params.dt,
            "horizon_s": env.params.dt * env.spec.horizon,
            "mean_free_flow_s": float(free.mean()),
            "env_route_deviations": env_run.deviated,
            "env_filled_links": env_run.filled_links,
            "env_wall_s": env_run.wall_s,
        }
        for sim in sims:
            if sim in ("sumo", "sumo-jc"):
                ref = run_sumo_case(env, env_run, root / case / sim, junction_control=sim == "sumo-jc")
            else:
                ref = run_uxsim_case(env, env_run, args.uxsim_tau)
            row[sim] = {**compare(env, env_run, ref["travel_time"]), **ref["info"]}
            r = row[sim]
            print(
                f"{case:20s} {sim:6s} env {r.get('mean_tt_env', float('nan')):7.1f} s  ref "
                f"{r.get('mean_tt_ref', float('nan')):7.1f} s  ratio {r.get('ratio', float('nan')):.3f}  "
                f"corr {r.get('corr') if r.get('corr') is not None else float('nan'):.3f}  "
                f"arrived env/ref/both {r['arrived_env']}/{r['arrived_ref']}/{r['arrived_both']} of {r['vehicles']}",
                file=sys.stderr, flush=True,
            )
        row["wall_s"] = time.perf_counter() - t0
        results[case] = row
    summary = {
        "benchmark": "validate_traffic",
        "cases": results,
        "all_targets_met": {s: all(results[c][s]["target_met"] for c in cases) for s in sims},
        "loadavg": list(os.getloadavg()),
        "files": str(root),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
