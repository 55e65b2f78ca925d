"""How much of the DG stage's output a real language model writes (opt-in: needs a model).

    python benchmarks/dg_llm.py --model local                    # SmolLM2-135M, llama.cpp
    python benchmarks/dg_llm.py --model openai/smollm2 --api-base http://127.0.0.1:8765/v1
    python benchmarks/dg_llm.py --model openai/gpt-4o-mini --granularity route

For ``traffic-grid`` (50 vehicles) and ``mpe-spread`` (4 random starts), one run of the DG
stage each with the LLM source and the run's defaults, then per scenario:

  share_from_model          agents (× episodes) whose final plan came from the model, repaired
                            or not — not the planner fallback
  share_valid_before_repair plans the model wrote that needed no repair
  share_with_a_model_decision  (next-hop) model plans with at least one choice the model made
  next_hop.picked_fastest / chance_fastest  (next-hop) answers that chose an option of least
                            free-flow time to the destination, and what uniform guessing gives
  next_hop.picked_least_loaded / chance_least_loaded  the same for the least loaded option
  repairs_by_kind           problems found, by kind (dropped instructions, invalid choices, ...)
  requests / calls / failed_requests / prompt_tokens / completion_tokens / wall_s
  return_llm / return_planner / return_random
                            mean per-agent return of the demonstrations, of the classical
                            planner on the same episodes, and of uniformly random *valid*
                            actions (16 episodes from the same reset keys' distribution)
  crashes                   exceptions other than the provider failing (then ``error``)

A fresh reply cache is used unless ``--cache-dir`` is given (a rerun with it is free). The
machine's load average goes into the JSON, because a shared CPU slows a local server 3–5x.
Prints one JSON object last.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import leed_jax
from leed_jax.dg.generate import DemoConfig, run_dg
from leed_jax.dg.local_server import is_local_model, local_server

SCENARIOS = {"traffic-grid": {"num_agents": 50}, "mpe-spread": {}}


def random_valid_return(env, episodes: int = 16, seed: int = 123) -> float:
    """Mean per-agent return of uniformly random available actions (counted until done)."""

    @jax.jit
    def one(key):
        k0, k1 = jax.random.split(key)
        _, state = env.reset(k0)
        n = env.spec.num_agents

        def body(carry, k):
            state, alive, ret = carry
            ka, ks = jax.random.split(k)
            avail = env.avail_actions(state)
            logits = jnp.where(avail, 0.0, -jnp.inf)
            a = jax.random.categorical(ka, logits, axis=-1).astype(jnp.int32)
            _, state, r, done, _ = env.step(ks, state, a)
            return (state, alive & ~done, ret + r * alive), None

        (_, _, ret), _ = jax.lax.scan(body, (state, jnp.ones(n, bool), jnp.zeros(n)),
                                      jax.random.split(k1, env.spec.horizon))
        return ret.mean()

    return float(np.mean([one(jax.random.PRNGKey(seed + i)) for i in range(episodes)]))


def bench(scenario: str, args, model: str, api_base: str | None, cache: Path) -> dict:
    env = leed_jax.make_env(scenario, **SCENARIOS[scenario])
    out: dict = {"scenario": scenario, "agents": env.spec.num_agents, "crashes": 0}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = DemoConfig(scenario=scenario, out=Path(tmp) / "llm", source="llm", model=model,
                         api_base=api_base, rounds=args.rounds, seed=args.seed,
                         granularity=args.granularity, structured=args.structured,
                         timeout=args.timeout, cache_dir=cache, progress=False)
        t0 = time.perf_counter()
        try:
            res = run_dg(cfg, env=env)
        except Exception as e:  # noqa: BLE001 — reported, not raised: the JSON must come out
            from leed_jax.dg.errors import LLMError

            out["wall_s"] = round(time.perf_counter() - t0, 1)
            out["error"] = " ".join(str(e).split())[:400]
            if not isinstance(e, LLMError):
                out["crashes"] = 1
                traceback.print_exc()
            return out
        wall = time.perf_counter() - t0
        planner = run_dg(DemoConfig(scenario=scenario, out=Path(tmp) / "planner",
                                    source="planner", seed=args.seed,
                                    episodes=res.meta["episodes"], progress=False), env=env)
    s, llm, meta = res.meta["dg_report"], res.meta["llm"], res.meta
    plans = s["plans"]
    out.update({
        "episodes": meta["episodes"],
        "llm_mode": {k: v for k, v in (meta["llm_mode"] or {}).items() if k != "next_hop"},
        "share_from_model": s["covered_by_model"] / plans,
        "share_valid_before_repair": s["model_unchanged"] / plans,
        "plans": plans, "from_model": s["covered_by_model"], "repaired": s["repaired"],
        "planner_fallback": s["fell_back_to_planner"],
        "fallback_reasons": s["fallback_reasons"],
        "repairs_by_kind": s["issues_by_kind"],
        "requests": llm["requests"], "calls": llm["calls"], "cache_hits": llm["cache_hits"],
        "retries": llm["retries"], "failed_requests": llm["failed_requests"],
        "prompt_tokens": llm["prompt_tokens"], "completion_tokens": llm["completion_tokens"],
        "wall_s": round(wall, 1),
        "return_llm": meta["metrics"]["mean_return"],
        "return_planner": planner.meta["metrics"]["mean_return"],
        "return_random": random_valid_return(env),
        "metrics_llm": meta["metrics"], "metrics_planner": planner.meta["metrics"],
    })
    nh = (meta["llm_mode"] or {}).get("next_hop")
    if nh:
        out["next_hop"] = {k: sum(r[k] for r in nh) for k in nh[0] if k not in ("round",
                                                                                 "episode")}
        # Model plans in which the model made at least one choice (the rest had only one
        # road at every intersection: their route was forced, though it counts as the model's).
        forced_only = out["next_hop"]["vehicles_without_choice"]
        out["share_with_a_model_decision"] = (s["covered_by_model"] - forced_only) / plans
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="litellm model, or 'local'")
    p.add_argument("--api-base")
    p.add_argument("--scenarios", default="traffic-grid,mpe-spread")
    p.add_argument("--granularity", default="auto", choices=("auto", "route", "next-hop"))
    p.add_argument("--structured", default="auto",
                   choices=("auto", "json_schema", "json_object", "off"))
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=None)
    p.add_argument("--cache-dir", type=Path, help="reuse replies (default: a fresh cache)")
    args = p.parse_args()
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        cache = args.cache_dir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        model, api_base = args.model, args.api_base
        if is_local_model(model):
            model, api_base = stack.enter_context(local_server(model))
        results = []
        for name in args.scenarios.split(","):
            r = bench(name.strip(), args, model, api_base, cache)
            results.append(r)
            print(json.dumps(r), file=sys.stderr, flush=True)  # progress, one line each
    doc = {"benchmark": "dg_llm", "model": args.model, "granularity": args.granularity,
           "structured": args.structured, "rounds": args.rounds,
           "loadavg_start": load0, "loadavg_end": os.getloadavg(),
           "cpu_count": os.cpu_count(), "total_s": round(time.perf_counter() - t0, 1),
           "results": results}
    print(json.dumps(doc))


if __name__ == "__main__":
    main()
