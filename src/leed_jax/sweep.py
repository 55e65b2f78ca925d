"""Scaling sweeps: ``python -m leed_jax.sweep``.

    python -m leed_jax.sweep --agents 10,100,1000 --algos leed,ippo --seeds 3 \
        [--scenario traffic-grid] [--total-steps 200000] [--config base.toml] --out DIR

With ``--distributed`` (started by ``python -m leed_jax.launch`` or a cluster launcher) every
cell runs as one program sharded over all processes' devices (``--mesh-data -1`` unless a mesh
is given); process 0 alone writes the tables, the plot and the cells' run directories.

Runs every (algo, N) cell of the grid with ``leed_jax.train`` (its seeds vmapped into one
program), each in its own run directory ``DIR/cells/<algo>-n<N>``, and writes
``DIR/results.csv``, ``DIR/results.json`` and ``DIR/scaling.png`` (final return, mean travel
time and training throughput against N). Traffic cells also report the user-equilibrium and
system-optimum yardsticks planned on the cell's evaluation episodes and the gaps to them
(``leed_jax.dg.yardsticks``; cells of the same N share them through its cache). Resumable: a cell whose ``summary.json`` says it
finished is read back, never recomputed; a cell that was interrupted resumes from its last
checkpoint.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import pathlib
import sys
import time

from leed_jax.config import (
    ALGOS,
    ConfigError,
    DemoOptions,
    OneLineParser,
    TrainConfig,
    add_flags,
    flat_fields,
    load_config,
)

RESULT_COLUMNS = [
    "algo",
    "num_agents",
    "seeds",
    "final_return",
    "final_return_std",
    "mean_travel_time",
    "ue_mean_travel_time",  # traffic yardsticks on the same episodes (leed_jax.dg.yardsticks)
    "so_mean_travel_time",
    "gap_to_ue_pct",
    "gap_to_so_pct",
    "arrival_rate",
    "env_steps",
    "env_steps_per_s",
    "agent_steps_per_s",
    "compile_s",
    "wall_s",
    "devices",
    "run_dir",
]


def cell_dir(out: pathlib.Path, algo: str, n: int) -> pathlib.Path:
    return out / "cells" / f"{algo}-n{n}"


def _finished(cell: pathlib.Path) -> dict | None:
    path = cell / "summary.json"
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return summary if summary.get("finished") else None


def result_row(algo: str, n: int, cell: pathlib.Path, summary: dict) -> dict:
    seeds_ret = summary.get("final_return_seeds") or [summary["final_return"]]
    mean = sum(seeds_ret) / len(seeds_ret)
    std = math.sqrt(sum((x - mean) ** 2 for x in seeds_ret) / len(seeds_ret))
    sps = summary.get("env_steps_per_s", float("nan"))
    return {
        "algo": algo,
        "num_agents": summary.get("num_agents", n),
        "seeds": summary.get("seeds", len(seeds_ret)),
        "final_return": round(mean, 5),
        "final_return_std": round(std, 5),
        "mean_travel_time": summary.get("mean_travel_time", float("nan")),
        # None (JSON null, an empty CSV cell) where a cell has no yardsticks: NaN != NaN would
        # make a read-back row differ from itself.
        **{k: summary.get(k) for k in ("ue_mean_travel_time", "so_mean_travel_time",
                                       "gap_to_ue_pct", "gap_to_so_pct")},
        "arrival_rate": summary.get("arrival_rate", float("nan")),
        "env_steps": summary.get("env_steps"),
        "env_steps_per_s": sps,
        "agent_steps_per_s": round(sps * summary.get("num_agents", n), 1),
        "compile_s": summary.get("compile_s"),
        "wall_s": summary.get("wall_s"),
        "devices": summary.get("devices", 1),
        "run_dir": str(cell),
    }


def run_sweep(
    base: TrainConfig,
    agents: list[int],
    algos: list[str],
    out: str | pathlib.Path,
    say=None,
) -> list[dict]:
    """Run (or read back) every cell; write the tables and the plot; return the rows."""
    from leed_jax.dg.yardsticks import describe
    from leed_jax.io.rundir import check_writable, lock_run_dir
    from leed_jax.parallel import is_writer, sync
    from leed_jax.po import loop

    writer = is_writer()  # multi-process: every process runs every cell; process 0 writes
    say = (say or (lambda m: print(m, file=sys.stderr))) if writer else (lambda m: None)
    out = pathlib.Path(out)
    check_writable(out)
    if writer:
        out.mkdir(parents=True, exist_ok=True)
        lock_run_dir(out)
    sync("leed_jax sweep directory")
    rows = []
    total = len(agents) * len(algos)
    for i, n in enumerate(agents):
        for algo in algos:
            cell = cell_dir(out, algo, n)
            summary = _finished(cell)
            tag = f"[{len(rows) + 1}/{total}] {algo} N={n}"
            if summary is not None:
                say(f"{tag}: finished earlier, read from {cell}")
            else:
                t0 = time.perf_counter()
                cfg = base.replace(algo=algo, num_agents=n, out=str(cell), compare=False)
                cell_say = lambda m, tag=tag: say(f"{tag}: {m}")
                try:
                    # One assembly per cell (prepare): resumed from its checkpoint if it has one.
                    summary = loop.train(cfg, resume="auto", say=cell_say).summary
                except loop.OutOfMemoryError as exc:
                    if cfg.seeds == 1:
                        raise
                    say(f"{tag}: {cfg.seeds} vmapped seeds do not fit ({exc}); running them one by one")
                    summary = _seeds_one_by_one(cfg, cell, say)
                say(f"{tag}: done in {time.perf_counter() - t0:.1f} s, return {summary['final_return']:.3f}"
                    + (f", {describe(summary)}" if describe(summary) else ""))
            rows.append(result_row(algo, n, cell, summary))
            if writer:
                write_results(out, rows)
            sync("leed_jax sweep cell")  # the next cell's "finished?" reads the same files
    if writer:
        plot_scaling(rows, out / "scaling.png")
    return rows


def _seeds_one_by_one(cfg: TrainConfig, cell: pathlib.Path, say) -> dict:
    """Run the seeds of a cell as separate runs (``cell/seed-k``) and merge their summaries
    into ``cell/summary.json``: used when the vmapped seeds do not fit in memory."""
    from leed_jax.po import loop

    parts = []
    for k in range(cfg.seeds):
        sub = cell / f"seed-{k}"
        done = _finished(sub)
        if done is None:
            one = cfg.replace(seeds=1, seed=cfg.seed + k, out=str(sub))
            done = loop.train(one, resume="auto", say=say).summary
        parts.append(done)
    merged = dict(parts[0])
    for key, value in parts[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "num_agents":
            merged[key] = sum(p[key] for p in parts) / len(parts)
    merged.update(
        seeds=cfg.seeds,
        final_return_seeds=[p["final_return"] for p in parts],
        wall_s=sum(p["wall_s"] for p in parts),
        env_steps=parts[0]["env_steps"],
        finished=all(p.get("finished") for p in parts),
    )
    cell.mkdir(parents=True, exist_ok=True)
    (cell / "summary.json").write_text(json.dumps(merged, indent=1) + "\n")
    return merged


def write_results(out: pathlib.Path, rows: list[dict]) -> None:
    with (out / "results.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=RESULT_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    (out / "results.json").write_text(json.dumps(rows, indent=1) + "\n")


def plot_scaling(rows: list[dict], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("final_return", "final return (per agent)"),
        ("mean_travel_time", "mean travel time, all vehicles (s)"),
        ("agent_steps_per_s", "training agent-steps/s"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (key, label) in zip(axes, panels):
        for algo in dict.fromkeys(r["algo"] for r in rows):
            pts = sorted((r["num_agents"], r[key]) for r in rows if r["algo"] == algo)
            xs = [p[0] for p in pts]
            ys = [p[1] if p[1] is not None else float("nan") for p in pts]
            ax.plot(xs, ys, marker="o", label=algo)
        if key == "mean_travel_time":  # traffic yardsticks of the same episodes, where present
            for ykey, style, label in (("ue_mean_travel_time", "--", "user equilibrium"),
                                       ("so_mean_travel_time", ":", "system optimum")):
                pts = sorted({(r["num_agents"], r[ykey]) for r in rows if r.get(ykey) is not None})
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], style, color="gray", label=label)
            if any(r.get("ue_mean_travel_time") is not None for r in rows):
                ax.legend(fontsize=7)
        ax.set_xscale("log")
        if key == "agent_steps_per_s":
            ax.set_yscale("log")
        ax.set_xlabel("number of agents N")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--{what} must be a comma-separated list of integers, got {text!r}") from None
    if not values or min(values) <= 0:
        raise ConfigError(f"--{what} needs positive integers, got {text!r}")
    return values


# TrainConfig fields the sweep sets itself, per cell (--agents and --algos are lists here).
_PER_CELL = {"num_agents", "algo", "out", "compare"}


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m leed_jax.sweep", allow_abbrev=False,
                      description="Scaling sweep over N and algorithms. Every other TrainConfig "
                                  "field is a flag too, applied to every cell (defaults: the "
                                  "config's, as in python -m leed_jax.run).")
    p.add_argument("--agents", default="10,100,1000", help="comma-separated numbers of agents (default: 10,100,1000)")
    p.add_argument("--algos", default="leed,ippo", help=f"comma-separated, from {', '.join(ALGOS)} (default: leed,ippo)")
    p.add_argument("--config", default=None, metavar="FILE", help="base TrainConfig TOML for every cell")
    p.add_argument("--out", required=True, metavar="DIR", help="sweep directory (rerun to resume)")
    p.add_argument("--distributed", action="store_true",
                   help="join a multi-process run first (see python -m leed_jax.launch): every "
                        "cell runs sharded over all processes' devices (--mesh-data -1 unless "
                        "given); process 0 writes")
    add_flags(p, TrainConfig, skip=_PER_CELL | set(flat_fields(DemoOptions)), title="every cell")
    add_flags(p, DemoOptions, title="demonstrations of the leed/bc cells and their LLM")
    return p


def main(argv: list[str] | None = None) -> int:
    try:  # a mistyped flag is one line and exit 2 at once, before the imports of jax below
        args = vars(build_parser().parse_args(argv))
    except ValueError as err:  # UsageError, or a flag value a type rejects
        print(f"python -m leed_jax.sweep: error: {err}", file=sys.stderr)
        return 2
    from leed_jax.envs.base import ScenarioError
    from leed_jax.io.checkpoint import CheckpointError
    from leed_jax.io.rundir import RunDirError

    try:
        distributed = args.pop("distributed")
        if distributed:
            from leed_jax.parallel import initialize_distributed

            initialize_distributed()
        config_file, agents_text, algos_text, out = (
            args.pop(k) for k in ("config", "agents", "algos", "out"))
        if distributed and "mesh_data" not in args:
            args["mesh_data"] = -1
        base = (load_config(config_file) if config_file else TrainConfig()).replace(**args)
        base.validate()
        from leed_jax.envs.registry import load_scenario

        load_scenario(base.scenario)  # an unknown scenario fails now, not at the first cell
        agents = _int_list(agents_text, "agents")
        algos = [a.strip() for a in algos_text.split(",") if a.strip()]
        bad = [a for a in algos if a not in ALGOS]
        if bad or not algos:
            raise ConfigError(f"--algos: unknown {', '.join(bad) or 'none given'}; choose from {', '.join(ALGOS)}")
        rows = run_sweep(base, agents, algos, out)
    except (ConfigError, ScenarioError, FileNotFoundError, ValueError, CheckpointError,
            RunDirError) as exc:
        print(f"python -m leed_jax.sweep: error: {exc}", file=sys.stderr)
        return 2
    from leed_jax.parallel import is_writer

    if is_writer():
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
