"""Static traffic assignment from the command line.

    python -m leed_jax.assign NET.tntp TRIPS.tntp [--objective ue|so] [--gap 1e-4] [--out flows.csv]
    python -m leed_jax.assign --scenario traffic-grid [--objective so]

Prints progress to stderr and the result summary as JSON on the last line of stdout;
``--out`` writes one row per link (from, to — the file's node numbers —, flow, cost). Bad input: one line, exit status 2.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys

from leed_jax.assign.problem import problem_from_scenario, problem_from_tntp
from leed_jax.assign.solver import BACKENDS, METHODS, OBJECTIVES, solve
from leed_jax.envs.base import ScenarioError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m leed_jax.assign", description=__doc__.splitlines()[0])
    p.add_argument("net", nargs="?", help="TNTP network file (*_net.tntp)")
    p.add_argument("trips", nargs="?", help="TNTP trips file (*_trips.tntp)")
    p.add_argument("--scenario", help="an env scenario instead: its network and vehicles as flows")
    p.add_argument("--objective", choices=OBJECTIVES, default="ue")
    p.add_argument("--method", choices=METHODS, default="bfw")
    p.add_argument("--backend", choices=BACKENDS, default="auto")
    p.add_argument("--gap", type=float, default=1e-4)
    p.add_argument("--max-iterations", type=int, default=10_000)
    p.add_argument("--out", help="write link flows and costs to this CSV")
    args = p.parse_args(argv)
    try:
        if args.scenario:
            problem = problem_from_scenario(args.scenario)
        elif args.net and args.trips:
            problem = problem_from_tntp(args.net, args.trips)
        else:
            raise ScenarioError("give NET.tntp TRIPS.tntp, or --scenario NAME")
        r = solve(problem, objective=args.objective, method=args.method, gap=args.gap,
                  max_iterations=args.max_iterations, backend=args.backend, verbose=True)
    except ScenarioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.out:
        with open(args.out, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["from", "to", "flow", "cost"])
            label = problem.node_labels if problem.node_labels is not None else range(problem.num_nodes)
            for a, b, f, c in zip(problem.link_src, problem.link_dst, r.flow, r.cost):
                w.writerow([int(label[a]), int(label[b]), f"{f:.6f}", f"{c:.6f}"])
    print(json.dumps({**r.summary(), "time_unit": problem.time_unit, "flow_unit": problem.flow_unit}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
