"""Static traffic assignment: leed_jax.assign against the published solutions and AequilibraE.

    python benchmarks/assignment.py [--data ../shared/data/tntp] [--repeats 3] [--no-aequilibrae]

For Sioux Falls and Anaheim (TNTP files; Transportation Networks for Research, research use
only): user equilibrium by bi-conjugate Frank–Wolfe to relative gap 1e-4 — time, iterations,
Beckmann objective against the published one, link flows against the published ``*_flow.tntp``
(within 1 % or 1 vehicle) — for leed_jax (bfw with both all-or-nothing backends, and the
path-based ``gp``) and AequilibraE's
``bfw`` on the same files, timed in this process, alternating, median of ``--repeats``
(compilation excluded and reported apart). Then Anaheim until every link flow is within 1 % /
1 vehicle of the published solution (a much tighter gap), and the system optimum. The machine
may be shared: ``load_before`` / ``load_after`` are ``os.getloadavg()``. JSON last.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from leed_jax.assign import problem_from_tntp, solve
from leed_jax.envs.tntp import default_tntp_dir, read_tntp_flow, read_tntp_network, read_tntp_trips

# Published Beckmann objective of Sioux Falls (SOURCE.md): 42.31335287107440 in units of 1e5.
SIOUX_FALLS_BECKMANN = 42.31335287107440e5


def flow_check(flow: np.ndarray, published: np.ndarray) -> dict:
    err = np.abs(flow - published)
    bad = err > np.maximum(0.01 * published, 1.0)
    rel = err / np.maximum(published, 1.0)
    return {"links_off": int(bad.sum()), "max_abs_err": float(err.max()), "max_rel_err": float(rel.max())}


def beckmann_of(problem, flow) -> float:
    r = flow / problem.capacity
    return float(np.sum(problem.t0 * flow * (1.0 + problem.b * r ** problem.power / (problem.power + 1.0))))


class Aequilibrae:
    """AequilibraE's bfw on the same TNTP files (a reference; not a dependency of leed_jax)."""

    def __init__(self, net_file: Path, trips_file: Path):
        os.environ.setdefault("AEQ_SHOW_PROGRESS", "FALSE")  # its tqdm bars would flood the log
        import aequilibrae  # noqa: F401
        import pandas as pd

        self.tn = read_tntp_network(net_file, split_centroids=False)
        self.od = read_tntp_trips(trips_file)
        tn, e = self.tn, self.tn.net.num_links
        self.network = pd.DataFrame({
            "link_id": np.arange(1, e + 1), "a_node": tn.node_ids[tn.net.link_src],
            "b_node": tn.node_ids[tn.net.link_dst], "direction": np.ones(e, np.int64),
            "free_flow_time": tn.link_fftime, "capacity": tn.link_capacity, "b": tn.link_b, "power": tn.link_power,
        })
        self.network["id"] = self.network["link_id"]
        from importlib.metadata import version

        self.version = version("aequilibrae")

    def solve(self, gap: float, max_iter: int = 20_000) -> dict:
        from aequilibrae.matrix import AequilibraeMatrix
        from aequilibrae.paths import Graph, TrafficAssignment, TrafficClass

        t0 = time.perf_counter()
        z = self.tn.num_zones
        g = Graph()
        g.network = self.network.copy()
        g.prepare_graph(np.arange(1, z + 1))
        g.set_graph("free_flow_time")
        g.set_skimming([])  # no skims: they are not needed and cost time every iteration
        g.set_blocked_centroid_flows(self.tn.first_thru_node > 1)  # <FIRST THRU NODE>
        m = AequilibraeMatrix()
        m.create_empty(zones=z, matrix_names=["matrix"], memory_only=True)
        m.index[:] = np.arange(1, z + 1)
        m.matrices[:, :, 0] = self.od
        m.computational_view(["matrix"])
        a = TrafficAssignment()
        a.set_classes([TrafficClass("car", g, m)])
        a.set_vdf("BPR")
        a.set_vdf_parameters({"alpha": "b", "beta": "power"})
        a.set_capacity_field("capacity")
        a.set_time_field("free_flow_time")
        a.set_algorithm("bfw")
        a.set_cores(os.cpu_count() or 1)
        a.max_iter = max_iter
        a.rgap_target = gap
        t1 = time.perf_counter()
        a.execute()
        seconds = time.perf_counter() - t1
        report = a.report()
        flow = a.results().loc[np.arange(1, len(self.network) + 1), "matrix_tot"].to_numpy()
        return {"seconds": seconds, "setup_seconds": t1 - t0, "iterations": len(report),
                "relative_gap": float(report["rgap"].iloc[-1]), "flow": flow}


def ours(problem, gap, backend, **kw) -> dict:
    """leed_jax: bfw with the given all-or-nothing backend, or ``backend="gp"``: path-based GP."""
    if backend == "gp":
        r = solve(problem, objective="ue", method="gp", gap=gap, **kw)
    else:
        r = solve(problem, objective="ue", method="bfw", gap=gap, backend=backend, **kw)
    return {"seconds": r.seconds, "compile_seconds": r.compile_seconds, "iterations": r.iterations,
            "relative_gap": r.relative_gap, "flow": r.flow, "backend": r.backend}


def summarise(runs: list[dict], problem, published, reference_beckmann) -> dict:
    last = runs[-1]
    out = {
        "seconds_median": statistics.median(r["seconds"] for r in runs),
        "seconds_min": min(r["seconds"] for r in runs),
        "iterations": last["iterations"],
        "relative_gap": last["relative_gap"],
        "beckmann": beckmann_of(problem, last["flow"]),
    }
    out["beckmann_rel_err"] = out["beckmann"] / reference_beckmann - 1.0
    out.update(flow_check(last["flow"], published))
    if "compile_seconds" in last:
        out["compile_seconds_first_run"] = runs[0]["compile_seconds"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(default_tntp_dir()), help="folder with the TNTP files")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--gap", type=float, default=1e-4)
    p.add_argument("--max-iterations", type=int, default=6000, help="cap for the flow-accuracy run")
    p.add_argument("--aeq-max-iterations", type=int, default=500,
                   help="cap for AequilibraE's flow-accuracy run (about 0.2 s an iteration on Anaheim here)")
    p.add_argument("--no-aequilibrae", action="store_true")
    args = p.parse_args()
    data = Path(args.data)
    if not (data / "SiouxFalls_net.tntp").is_file():
        print(f"TNTP data not found in {data} (give --data DIR with SiouxFalls_*.tntp and Anaheim_*.tntp)", file=sys.stderr)
        sys.exit(2)
    out = {"load_before": os.getloadavg(), "cpu_count": os.cpu_count(), "gap": args.gap, "networks": {}}
    for name in ("SiouxFalls", "Anaheim"):
        net_f, trips_f = data / f"{name}_net.tntp", data / f"{name}_trips.tntp"
        problem = problem_from_tntp(net_f, trips_f)
        _, _, published, _ = read_tntp_flow(data / f"{name}_flow.tntp")
        ref_bk = SIOUX_FALLS_BECKMANN if name == "SiouxFalls" else beckmann_of(problem, published)
        aeq = None
        if not args.no_aequilibrae:
            try:
                aeq = Aequilibrae(net_f, trips_f)
            except ImportError as exc:
                out["aequilibrae"] = f"not installed ({exc}); pip install 'leed_jax[reference]'"
        runs: dict[str, list] = {"jax": [], "scipy": [], "gp": [], "aequilibrae": []}
        for rep in range(args.repeats):  # alternating, so a load change hits all alike
            for key, done in runs.items():
                if key == "aequilibrae":
                    if aeq is not None:
                        done.append(aeq.solve(args.gap))
                else:
                    done.append(ours(problem, args.gap, key))
                if done:
                    print(f"# {name} {key} run {rep + 1}: {done[-1]['seconds']:.3f} s", flush=True)
        res = {k: summarise(v, problem, published, ref_bk) for k, v in runs.items() if v}
        res["published_beckmann"] = ref_bk
        if aeq is not None:
            res["aequilibrae_version"] = aeq.version
            best = min(res["jax"]["seconds_median"], res["scipy"]["seconds_median"])
            res["speedup_vs_aequilibrae"] = res["aequilibrae"]["seconds_median"] / best
        # System optimum (leed_jax only): total travel time below the equilibrium's.
        so = solve(problem, objective="so", gap=args.gap)
        ue = solve(problem, objective="ue", gap=args.gap)
        res["system_optimum"] = {"tstt": so.tstt, "ue_tstt": ue.tstt, "relative_gap": so.relative_gap,
                                 "iterations": so.iterations, "seconds": so.seconds,
                                 "so_saving": 1.0 - so.tstt / ue.tstt}
        if name == "Anaheim":
            res["flows_within_1pct"] = flows_run(problem, published, args.max_iterations, aeq, args.aeq_max_iterations)
        out["networks"][name] = res
    out["load_after"] = os.getloadavg()
    print(json.dumps(out))


def flows_run(problem, published, max_iterations, aeq, aeq_max_iterations) -> dict:
    """Time until every Anaheim link flow is within 1 % (or 1 vehicle) of the published solution."""
    res = {}
    for backend in ("scipy", "jax", "gp"):
        t0 = time.perf_counter()
        hit = {}

        def check(it, gap, flow, hit=hit, t0=t0):
            c = flow_check(flow, published)
            if c["links_off"] == 0 and not hit:
                hit.update(iterations=it, relative_gap=gap, seconds=time.perf_counter() - t0)
            return c["links_off"] == 0

        if backend == "gp":  # one iteration is a pass over all origins: far fewer, far costlier
            r = solve(problem, method="gp", gap=1e-14, max_iterations=max(1, max_iterations // 30), callback=check)
        else:
            r = solve(problem, gap=1e-14, backend=backend, max_iterations=max_iterations, chunk=20, callback=check)
        res[backend] = {**flow_check(r.flow, published), "reached": bool(hit), "iterations": r.iterations,
                        "relative_gap": r.relative_gap, "seconds": r.seconds, "compile_seconds": r.compile_seconds}
        print(f"# Anaheim flows {backend}: {res[backend]}", flush=True)
    if aeq is not None:
        # AequilibraE has no callback: run it to the gap at which our bfw first met the criterion.
        target = min((res[k]["relative_gap"] for k in ("scipy", "jax") if res[k]["reached"]), default=1e-8)
        a = aeq.solve(target, max_iter=aeq_max_iterations)
        res["aequilibrae"] = {**flow_check(a["flow"], published), "target_gap": target,
                              "relative_gap": a["relative_gap"], "iterations": a["iterations"], "seconds": a["seconds"]}
        print(f"# Anaheim flows aequilibrae: {res['aequilibrae']}", flush=True)
    return res


if __name__ == "__main__":
    main()
