"""Learning benchmark: methods of the one trainer at equal env-step budgets, K seeds each.

    python benchmarks/learning_compare.py --scenario traffic-grid --algos leed,ippo \
        --total-steps 300000 --seeds 3

Every method trains on the same scenario, the same budget and the same seeds (vmapped into
one program per method); LEED and BC use one demo buffer (generated once, or --demos). The
last line printed is JSON: per method the final greedy evaluation (mean and per seed), the
training curve (return and env metrics against env steps, means over seeds), the value at
fixed fractions of the budget, throughput; and the demonstrations' own figures.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np

from leed_jax.config import TrainConfig
from leed_jax.envs.registry import make_env
from leed_jax.io.plots import plot_learning_curves
from leed_jax.po.trainer import train

FRACTIONS = (0.1, 0.25, 0.5, 1.0)


def at_fraction(history: list[dict], key: str, frac: float, total: int):
    """Mean of ``key`` over the log lines in the 5% of the budget ending at ``frac``."""
    lo, hi = (frac - 0.05) * total, frac * total
    vals = [r[key] for r in history if lo < r["env_steps"] <= hi + 1 and r.get(key) is not None]
    return float(np.mean(vals)) if vals else None


def parse(argv=None, **defaults):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenario", default="traffic-grid")
    p.add_argument("--algos", default="leed,ippo")
    p.add_argument("--total-steps", type=int, default=300_000)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--agents", type=int, default=None)
    p.add_argument("--demos", default=None, help="demo buffer (default: planner, generated once)")
    p.add_argument("--out", default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other TrainConfig field, e.g. --set lr=0.001 (JSON values)")
    p.set_defaults(**defaults)
    return p.parse_args(argv)


def main(argv=None, **defaults) -> dict:
    args = parse(argv, **defaults)
    algos = [a.strip() for a in args.algos.split(",") if a.strip()]
    out = pathlib.Path(args.out or f"runs/bench-{pathlib.Path(args.scenario).stem}")
    out.mkdir(parents=True, exist_ok=True)
    extra = {}
    for item in args.set:
        key, _, value = item.partition("=")
        try:
            extra[key] = json.loads(value)
        except json.JSONDecodeError:
            extra[key] = value
        if isinstance(extra[key], list):
            extra[key] = tuple(extra[key])
    base = TrainConfig(scenario=args.scenario, total_steps=args.total_steps, seeds=args.seeds,
                       num_agents=args.agents, progress=False, **extra)
    env = make_env(base.scenario, num_agents=base.num_agents)
    demo_path = args.demos
    needs_demos = any(a in ("leed", "bc") for a in algos)
    result: dict = {"scenario": env.name, "num_agents": env.spec.num_agents,
                    "total_steps": args.total_steps, "seeds": args.seeds, "config": extra,
                    "methods": {}}
    if needs_demos and demo_path is None:
        from leed_jax.dg.generate import generate_demos

        t = time.perf_counter()
        overrides = {"num_agents": args.agents} if args.agents else None
        demo_path = str(generate_demos(base.scenario, source="planner", out=out / "demos",
                                       overrides=overrides, progress=False))
        result["demo_generation_s"] = round(time.perf_counter() - t, 2)
    if demo_path:
        from leed_jax.dg.buffer import read_demo_meta

        meta = read_demo_meta(demo_path)
        result["demonstrations"] = {"source": meta.get("source"), **(meta.get("metrics") or {})}
    histories = {}
    for algo in algos:
        cfg = base.replace(algo=algo, out=str(out / algo), demos=demo_path)
        print(f"training {algo} ({args.seeds} seeds, {args.total_steps:,} steps each)",
              file=sys.stderr, flush=True)
        r = train(cfg, say=lambda msg: None)
        s = r.summary
        names = s.get("metric_names", [])
        curve_keys = ["return", *names]
        step = max(1, len(r.history) // 20)
        result["methods"][algo] = {
            "final_return": s["final_return"],
            "final_return_seeds": s["final_return_seeds"],
            **{m: s.get(m) for m in names},
            **{f"{m}_seeds": s.get(f"{m}_seeds") for m in names if s.get(f"{m}_seeds")},
            "train_return_at": {str(f): at_fraction(r.history, "return", f, args.total_steps)
                                for f in FRACTIONS},
            **{f"train_{m}_at": {str(f): at_fraction(r.history, m, f, args.total_steps)
                                 for f in FRACTIONS} for m in names},
            "curve": [{k: h.get(k) for k in ["env_steps", *curve_keys]}
                      for h in r.history[step - 1::step]],
            "wall_s": s["wall_s"],
            "compile_s": s["compile_s"],
            "env_steps_per_s": s["env_steps_per_s"],
        }
        histories[algo] = r.history
        print(f"  {algo}: final return {s['final_return']:.3f}  "
              + "  ".join(f"{m} {s.get(m):.4g}" for m in names)
              + f"  ({s['wall_s']:.0f} s)", file=sys.stderr, flush=True)
    refs = {}
    if "demonstrations" in result:
        d = result["demonstrations"]
        refs["demonstrations"] = {"return": d.get("mean_return"),
                                  "mean_travel_time": d.get("mean_travel_time")}
    plot = plot_learning_curves(histories, out / "learning_curves.png",
                                title=f"{env.name}, N={env.spec.num_agents}, "
                                      f"{args.seeds} seeds (band: min..max)",
                                references=refs)
    result["plot"] = str(plot)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
