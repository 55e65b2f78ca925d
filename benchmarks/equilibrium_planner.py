"""Equilibrium / optimum planner vs the incremental planner, per episode (reset keys).

    python benchmarks/equilibrium_planner.py traffic-grid-large [--keys 0,1] \
        [--set rounds=30] [--set 'table="mean"'] [--set 'switch="gain"'] [--set turn_aware=false]

For each episode: total travel time (vehicle-seconds) of each plan as executed by the DG
executor, planning seconds, rounds, the relative gap (first round = the incremental warm
start, least, last, and ``plan_gap``: that of the returned plan, from round ``plan_round``),
the simulated total of the first, best and last round, and the link-time
table's error on the current routes (Σ|simulated − predicted| / Σ simulated, first and last
round: the gap cannot fall much below it; ``table`` "queue" prices routes from each vehicle's
place in the links' FIFO queues, "mean" by the mean time per link and entry bin). ``--set``
changes an ``EquilibriumConfig`` field (JSON values: strings in double quotes).
Planning seconds of the first episode include compilation. Last line JSON.
"""

import argparse
import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from leed_jax.dg.equilibrium import EquilibriumConfig, plan_routes
from leed_jax.dg.executor import executor_for, pad_targets
from leed_jax.dg.planner import traffic_routes
from leed_jax.envs.registry import make_env

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("scenario", nargs="?", default="traffic-grid")
ap.add_argument("--keys", default="0")
ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
args = ap.parse_args()
fields = {}
for item in args.set:
    k, _, v = item.partition("=")
    try:
        fields[k] = json.loads(v)
    except json.JSONDecodeError:
        ap.error(f"--set {item}: the value is not JSON (strings need double quotes: {k}='\"...\"')")
try:
    base = EquilibriumConfig(**fields)
except (TypeError, ValueError) as exc:
    ap.error(f"--set: {exc}")
env = make_env(args.scenario)
g, p = env.network, env.params
run = executor_for(env)
out = {"scenario": args.scenario, "config": {k: getattr(base, k) for k in base.__dataclass_fields__},
       "episodes": []}
for k in [int(x) for x in args.keys.split(",")]:
    key = jax.random.PRNGKey(k)
    obs, state = env.reset(key)

    def total(paths):
        r = jax.device_get(run(key, obs, state, jnp.asarray(pad_targets([x[1:] or x for x in paths]))))
        return float(r.metrics["total_travel_time"])

    t = time.perf_counter()
    inc = traffic_routes(g, np.asarray(state.origin), np.asarray(state.dest), np.asarray(state.depart),
                         dt=p.dt, alpha=p.alpha, beta=p.beta)
    ep = {"key": k, "vehicles": len(inc),
          "incremental": {"total_travel_time": total(inc), "seconds": round(time.perf_counter() - t, 2)}}
    for obj in ("equilibrium", "optimum"):
        res = plan_routes(env, key=key, config=dataclasses.replace(base, objective=obj), initial=inc)
        tt = total(res.paths)
        ep[obj] = {"total_travel_time": tt, "seconds": round(res.seconds, 2), "rounds": len(res.gaps),
                   "vs_incremental_pct": round(100 * (tt / ep["incremental"]["total_travel_time"] - 1), 2),
                   "first_gap": round(res.gaps[0], 4), "least_gap": round(min(res.gaps), 4),
                   "last_gap": round(res.gaps[-1], 4), "plan_gap": round(res.gaps[res.best_round], 4),
                   "plan_round": res.best_round + 1,
                   "totals_first_least_last": [round(res.totals[0]), round(min(res.totals)), round(res.totals[-1])],
                   "table_error_first_last": [round(res.table_errors[0], 4), round(res.table_errors[-1], 4)]}
    print(json.dumps(ep), flush=True)
    out["episodes"].append(ep)
out["loadavg"] = os.getloadavg()
print(json.dumps(out))
