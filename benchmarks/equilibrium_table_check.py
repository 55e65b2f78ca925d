"""How faithfully the equilibrium planner's link-time tables price routes (one episode).

    python benchmarks/equilibrium_table_check.py traffic-grid [--key 0] [--trials 10]

1. On the incremental planner's plan, simulated once: the error Σ|simulated − priced| / Σ
   simulated of the mean table (mean experienced time per link and entry bin) for several
   bin widths, priced two ways — on the route's own clock (as the planner does) and link by
   link at the vehicle's true entry time (no drift: what is left is the bin mean itself) —
   and of the queue table (``leed_jax.dg.equilibrium.QueueTable``).
2. After planning (the default config, 30 rounds): the ``--trials`` vehicles with the largest
   predicted gain each switch alone to their best candidate, and the plan is simulated again:
   predicted against simulated own time, and the change in the other vehicles' total.
Last line JSON.
"""

import argparse
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from leed_jax.dg import equilibrium as eq
from leed_jax.dg.executor import pad_targets
from leed_jax.dg.planner import traffic_routes
from leed_jax.envs.registry import make_env

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("scenario", nargs="?", default="traffic-grid")
ap.add_argument("--key", type=int, default=0)
ap.add_argument("--trials", type=int, default=10)
args = ap.parse_args()
if args.trials < 0:
    ap.error(f"--trials {args.trials}: must be ≥ 0")
env = make_env(args.scenario)
g, p = env.network, env.params
key = jax.random.PRNGKey(args.key)
obs, state = env.reset(key)
n = int(np.asarray(state.origin).shape[0])
dep = np.asarray(state.depart, np.float64) * p.dt
horizon_s = env.spec.horizon * p.dt
inc = traffic_routes(g, np.asarray(state.origin), np.asarray(state.dest), np.asarray(state.depart),
                     dt=p.dt, alpha=p.alpha, beta=p.beta)
sim, _ = eq._compiled(env, int(np.ceil(horizon_s / (6 * p.dt))) + 1, 6 * p.dt)


def simulate(paths):
    out = jax.device_get(sim(jax.random.fold_in(key, 1), obs, state,
                             jnp.asarray(pad_targets([x[1:] or x for x in paths]))))
    return out[3], out[5], out[6], out[7]  # tt [N], route, entry, exit [N, L]


def queue_table(route, ent, ext):
    return eq.QueueTable(route, ent, ext, dep, g.link_tfree, eq.link_headways(g), g.link_storage, horizon_s)


def err(pred, tt):
    return round(float(np.abs(pred - tt).sum() / tt.sum()), 4)


tt, route, ent, ext = simulate(inc)
ok = (route >= 0) & np.isfinite(ent) & np.isfinite(ext)
out = {"scenario": args.scenario, "key": args.key, "vehicles": n, "mean_table": {}}
for bin_s in (60.0, 30.0, 10.0, 2.0):
    nb = int(np.ceil(horizon_s / bin_s)) + 1
    b = np.clip((np.nan_to_num(ent) / bin_s).astype(int), 0, nb - 1)
    s, c = np.zeros((g.num_links, nb)), np.zeros((g.num_links, nb))
    np.add.at(s, (route[ok], b[ok]), (ext - ent)[ok])
    np.add.at(c, (route[ok], b[ok]), 1)
    tab = np.where(c > 0, s / np.maximum(c, 1), g.link_tfree[:, None])
    local = np.where(ok, tab[np.maximum(route, 0), b], 0).sum(1) + np.nan_to_num(ent[:, 0] - dep)
    clock = dep.copy()
    for j in range(route.shape[1]):
        e = route[:, j]
        clock = np.where(e >= 0, clock + tab[np.maximum(e, 0), np.clip((clock / bin_s).astype(int), 0, nb - 1)], clock)
    out["mean_table"][f"{bin_s:g}s"] = {"own_clock": err(clock - dep, tt), "true_entry": err(local, tt)}
own, _ = queue_table(route, ent, ext).cost(route[:, None, :], dep, np.ones((n, 1), bool), np.arange(n))
out["queue_table"] = err(own[:, 0], tt)

res = eq.plan_routes(env, key=key, obs=obs, state=state, initial=inc)
paths = res.paths
tt, route, ent, ext = simulate(paths)
conn = getattr(g, "connections", None)
_, inverse, per_pair = eq.candidate_paths(g, np.asarray(state.origin), np.asarray(state.dest), 6, 1.6, connections=conn)
cands = [[paths[i]] + [c for c in per_pair[inverse[i]] if c != paths[i]] for i in range(n)]
length = max(len(c) for cs in cands for c in cs)
links = -np.ones((n, max(len(cs) for cs in cands), length), np.int32)
valid = np.zeros(links.shape[:2], bool)
for i, cs in enumerate(cands):
    for c, path in enumerate(cs):
        ls = eq._links_of(g, path)
        links[i, c, :len(ls)], valid[i, c] = ls, True
own, _ = queue_table(route, ent, ext).cost(links, dep, valid, np.arange(n))
gain = own[:, 0] - own.min(1)
out["plan"] = {"total": float(tt.sum()), "gap": round(float(gain.sum() / own[:, 0].sum()), 4),
               "improvers": int((gain > 1e-3).sum()),
               "gain_quantiles_s": [round(float(x), 1) for x in np.percentile(gain[gain > 1e-3], [10, 50, 90, 100])]
               if (gain > 1e-3).any() else []}
trials = []
for i in np.argsort(-gain)[: args.trials]:
    if gain[i] <= 1e-3:
        break
    alt = list(paths)
    alt[i] = cands[i][int(own[i].argmin())]
    tt2 = simulate(alt)[0]
    trials.append({"vehicle": int(i), "simulated": float(tt[i]), "priced": float(own[i, 0]),
                   "alternative_priced": float(own[i].min()), "alternative_simulated": float(tt2[i]),
                   "others_change": float(tt2.sum() - tt2[i] - (tt.sum() - tt[i]))})
    print(json.dumps(trials[-1]), flush=True)
if trials:
    out["unilateral"] = {"predicted_gain_s": sum(t["simulated"] - t["alternative_priced"] for t in trials),
                         "simulated_gain_s": sum(t["simulated"] - t["alternative_simulated"] for t in trials),
                         "mean_abs_miss_s": float(np.mean([abs(t["alternative_priced"] - t["alternative_simulated"]) for t in trials])),
                         "others_change_s": [t["others_change"] for t in trials]}
out["loadavg"] = os.getloadavg()
print(json.dumps(out))
