"""Equilibrium / optimum planner vs the incremental planner on one episode (reset key 0).

    python benchmarks/equilibrium_planner.py traffic-grid-large

Total travel time of each plan as executed by the DG executor, and planning seconds. Last line JSON.
"""

import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from leed_jax.dg.equilibrium import EquilibriumConfig, plan_routes
from leed_jax.dg.executor import executor_for, pad_targets
from leed_jax.dg.graph import RouteGraph
from leed_jax.dg.planner import traffic_routes
from leed_jax.envs.registry import make_env

name = sys.argv[1] if len(sys.argv) > 1 else "traffic-grid"
env = make_env(name)
key = jax.random.PRNGKey(0)
obs, state = env.reset(key)
g, p = RouteGraph.from_network(env.network), env.params
run = executor_for(env)


def total(paths):
    r = jax.device_get(run(key, obs, state, jnp.asarray(pad_targets([x[1:] or x for x in paths]))))
    return float(r.metrics["total_travel_time"])


t = time.perf_counter()
inc = traffic_routes(g, np.asarray(state.origin), np.asarray(state.dest), np.asarray(state.depart),
                     dt=p.dt, alpha=p.alpha, beta=p.beta)
out = {"scenario": name, "vehicles": len(inc), "incremental": {"total_travel_time": total(inc),
       "seconds": time.perf_counter() - t}}
for obj in ("equilibrium", "optimum"):
    res = plan_routes(env, key=key, config=EquilibriumConfig(objective=obj), initial=inc)
    out[obj] = {"total_travel_time": total(res.paths), "seconds": res.seconds,
                "rounds": len(res.gaps), "last_gap": res.gaps[-1]}
out["loadavg"] = os.getloadavg()
print(json.dumps(out))
