"""DG-stage throughput with the planner source: plan → text → parse/validate → execute.

    python benchmarks/demos_throughput.py [--scenario traffic-grid] [--agents 50,1000,10000]

Per N (num_agents override), timed separately on a fresh env:
  planner_s   congestion-aware incremental assignment + writing the instruction text
  validate_s  reading the text back and validating/repairing it (the path LLM replies take)
  compile_s   jit of the executor (first call) ; executor_s: a second, compiled call
  buffer_s    compaction of the decision steps into the demo buffer arrays
  wall_s      python -m leed_jax.demos-equivalent run_dg wall time (env build excluded)
Prints one JSON list last.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import jax
import jax.numpy as jnp

import leed_jax
from leed_jax.dg.buffer import from_transitions
from leed_jax.dg.executor import executor_for
from leed_jax.dg.family import family_for
from leed_jax.dg.generate import DemoConfig, run_dg
from leed_jax.dg.instructions import parse_instructions
from leed_jax.dg.prompts import load_prompts
from leed_jax.dg.report import DGReport
from leed_jax.dg.validate import Request


def bench(scenario: str, n: int) -> dict:
    env = leed_jax.make_env(scenario, num_agents=n)
    obs, state = env.reset(jax.random.PRNGKey(0))
    fam = family_for(env, load_prompts(env.family), obs, state)
    t = time.perf_counter()
    text = fam.planner_text()
    planner_s = time.perf_counter() - t
    t = time.perf_counter()
    report = DGReport(n, "planner")
    plans = fam.validate([Request(0, range(n), parse_instructions(text))], "planner", report)
    targets = jnp.asarray(fam.targets(plans))
    validate_s = time.perf_counter() - t
    run = executor_for(env)
    t = time.perf_counter()
    out = jax.block_until_ready(run(jax.random.PRNGKey(1), obs, state, targets))
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    out = jax.device_get(run(jax.random.PRNGKey(1), obs, state, targets))
    executor_s = time.perf_counter() - t
    t = time.perf_counter()
    buf = from_transitions([out.transitions], [out.returns])
    buffer_s = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        fresh = leed_jax.make_env(scenario, num_agents=n)  # a cold executor, as in the CLI
        t = time.perf_counter()
        result = run_dg(DemoConfig(scenario=scenario, out=tmp, source="planner",
                                   progress=False), env=fresh)
        wall_s = time.perf_counter() - t
    m = result.meta["metrics"]
    return {
        "num_agents": n,
        "instructions": text.count("\n"),
        "planner_s": round(planner_s, 3),
        "validate_s": round(validate_s, 3),
        "compile_s": round(compile_s, 3),
        "executor_s": round(executor_s, 3),
        "buffer_s": round(buffer_s, 3),
        "wall_s": round(wall_s, 3),
        "decisions": int(buf.valid.sum()),
        "arrival_rate": round(m.get("arrival_rate", float("nan")), 3),
        "mean_travel_time_s": round(m.get("mean_travel_time", float("nan")), 1),
        "device": jax.devices()[0].platform,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenario", default="traffic-grid")
    p.add_argument("--agents", default="50,1000,10000")
    args = p.parse_args()
    rows = []
    for n in (int(x) for x in args.agents.split(",")):
        row = bench(args.scenario, n)
        print(f"N={n}: " + ", ".join(f"{k}={v}" for k, v in row.items() if k != "num_agents"),
              flush=True)
        rows.append(row)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
