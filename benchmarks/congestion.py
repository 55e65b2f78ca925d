"""How congested a traffic scenario is under its link model.

    python benchmarks/congestion.py traffic-grid ['{"hotspots": 2}']

Over 4 episodes (seeded draws of the scenario's demand): the mean free-flow time, the mean
travel time (all vehicles) when everyone takes the free-flow fastest path, the same for the
DG stage's planner (its demonstrations, 4 episodes), arrival rates, and the peak link flow
over capacity (most vehicles leaving one link in 60 s over q_e · 60 s, fastest paths), and
the yardsticks of the same 4 episodes (``leed_jax.dg.yardsticks``: the simulated dynamic user
equilibrium's and system optimum's mean travel time) with the fastest-path policy's gap to them.
Prints one JSON object last.
"""
import json
import sys
import tempfile
import time

import jax
import numpy as np

import leed_jax
from leed_jax.dg.generate import DemoConfig, run_dg

def measure(name, episodes=4, **ov):
    env = leed_jax.make_env(name, **ov)
    p = env.params
    q = env.network.link_flow_capacity / 3600.0
    @jax.jit
    def go(key):
        _, s = env.reset(key)
        def body(s, k):
            _, s, r, d, info = env.step(k, s, env.fastest_slot(s))
            return s, (s.head, info["metrics"])
        return jax.lax.scan(body, s, jax.random.split(key, p.horizon))
    out = {"scenario": name, **ov}
    ff, fast, ratio, arr = [], [], [], []
    for ep in range(episodes):
        s, (head, m) = go(jax.random.PRNGKey(100 + ep))
        ff.append(float(np.mean(np.asarray(s.free_od))))
        fast.append(float(m["mean_travel_time"][-1])); arr.append(float(m["arrival_rate"][-1]))
        h = np.asarray(head)  # [T, E]
        w = max(1, int(round(60.0 / p.dt)))
        flows = (h[w:] - h[:-w]) / (q[None] * w * p.dt)
        ratio.append(float(flows.max()))
    out.update(free_flow=np.mean(ff), fastest=np.mean(fast), fastest_arrival=np.mean(arr), peak_flow_ratio=np.mean(ratio))
    from leed_jax.dg.yardsticks import compare, yardsticks

    yard = yardsticks(env, [jax.random.PRNGKey(100 + ep) for ep in range(episodes)])
    cmp = compare(fast, yard)
    out.update(ue=cmp["ue_mean_travel_time"], so=cmp["so_mean_travel_time"],
               fastest_gap_to_ue_pct=cmp["gap_to_ue_pct"], fastest_gap_to_so_pct=cmp["gap_to_so_pct"],
               yardstick_s=cmp["yardstick_s"])
    t = time.time()
    r = run_dg(DemoConfig(scenario=name, out=tempfile.mkdtemp(prefix=f"congestion-{name}-"), source="planner", progress=False, episodes=episodes), env=env)
    out.update(planner=r.meta["metrics"]["mean_travel_time"], planner_arrival=r.meta["metrics"]["arrival_rate"], dg_s=round(time.time()-t,1))
    out["planner_vs_free"] = out["planner"] / out["free_flow"]
    return out

if __name__ == "__main__":
    usage = "usage: " + __doc__.strip().splitlines()[2].strip()
    if sys.argv[1:2] in (["-h"], ["--help"]):
        print(usage)
        sys.exit(0)
    if len(sys.argv) not in (2, 3):
        print(usage, file=sys.stderr)
        sys.exit(2)
    name = sys.argv[1]
    try:
        ov = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    except json.JSONDecodeError as exc:
        print(f"congestion.py: overrides {sys.argv[2]!r} are not JSON ({exc.msg})", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(measure(name, **ov), default=float))
