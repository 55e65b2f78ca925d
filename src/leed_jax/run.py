"""The main job: ``python -m leed_jax.run``.

With no arguments it runs the default traffic scenario end to end: demonstrations (from the
LLM when one is configured, from the built-in planner otherwise), LEED training, evaluation,
and a table of the trained policy against its demonstrations (--compare: and against IPPO
trained on the same budget); on traffic, beside the user-equilibrium and system-optimum yardsticks
planned on the same evaluation episodes (--yardsticks N). Every field of the config tree (leed_jax.config: training, demonstrations,
LLM) is a flag (--total-steps, --lr, --model, --api-base, --timeout, ...); --config FILE reads a
TOML file first, flags override it.

Exit status: 0 done; 1 training stopped (NaN in the loss); 2 bad input (a flag, a config
value, a scenario, a demo buffer that does not fit, nothing to resume).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

from leed_jax.config import (
    ConfigError,
    DemoOptions,
    OneLineParser,
    TrainConfig,
    UsageError,
    add_flags,
    flat_fields,
    load_config,
)

PROG = "python -m leed_jax.run"
# Flags of TrainConfig fields that `--resume` still accepts (they change no result).
_RESUME_OK = {"progress"}


def build_parser() -> argparse.ArgumentParser:
    parts = __doc__.split("\n\n")
    p = OneLineParser(prog=PROG, description=parts[1], epilog=parts[2], allow_abbrev=False)
    p.add_argument("--config", metavar="FILE", help="TOML config; flags override it")
    p.add_argument("--resume", metavar="DIR", help="continue the interrupted run in DIR")
    p.add_argument("--distributed", action="store_true",
                   help="join a multi-host run first (jax.distributed.initialize; see "
                        "leed_jax.parallel)")
    p.add_argument("--export-sumo", metavar="DIR", dest="export_sumo", default=argparse.SUPPRESS,
                   help="after the evaluation, write one greedy episode (network, routes, "
                        ".sumocfg) to DIR for SUMO (traffic scenarios; see leed_jax.envs.sumo_io)")
    add_flags(p, TrainConfig, skip=set(flat_fields(DemoOptions)), title="training")
    add_flags(p, DemoOptions, title="demonstrations (generated when --demos is unset) and their LLM")
    return p


def resolve_config(argv: list[str] | None) -> tuple[TrainConfig, pathlib.Path | None]:
    """The config of a command line and the run directory to resume, if any (``prepare``
    validates the config and resolves the default run directory)."""
    return _resolve(vars(build_parser().parse_args(argv)))


def _resolve(args: dict) -> tuple[TrainConfig, pathlib.Path | None]:
    """``resolve_config`` of an already parsed command line (``vars`` of the namespace)."""
    args = dict(args)
    if args.pop("distributed", False):
        from leed_jax.parallel import initialize_distributed

        initialize_distributed()
    config_file = args.pop("config", None)
    resume = args.pop("resume", None)
    args.pop("export_sumo", None)  # read by main(), not a TrainConfig field
    if resume:
        resume_dir = pathlib.Path(resume)
        if not (resume_dir / "config.toml").is_file():
            raise FileNotFoundError(f"no run to resume in {resume_dir} (no config.toml)")
        extra = sorted(set(args) - _RESUME_OK)
        if config_file or extra:
            names = ", ".join(["--config"] * bool(config_file) + ["--" + e.replace("_", "-") for e in extra])
            raise UsageError(f"--resume continues a run with its own config; drop {names}")
        config = load_config(resume_dir / "config.toml").replace(out=str(resume_dir), **args)
        return config, resume_dir
    config = (load_config(config_file) if config_file else TrainConfig()).replace(**args)
    return config, None


def _say(msg: str) -> None:
    """Progress for the user: from process 0 only (every process of a multi-process run
    executes this file)."""
    from leed_jax.parallel import is_writer

    if is_writer():
        print(msg, file=sys.stderr, flush=True)


def _error(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _fmt(value, digits=3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}" if abs(value) < 1000 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def print_table(rows: list[dict], metric_names: list[str]) -> None:
    """Trained policies and demonstrations side by side (rich table on stdout)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="evaluation: mean per agent (trained policies act greedily)")
    for col in ["policy", "return", *metric_names, "env steps", "wall s"]:
        table.add_column(col.replace("_", " "), justify="left" if col == "policy" else "right",
                         no_wrap=col == "policy")
    for row in rows:
        table.add_row(
            row["policy"], _fmt(row.get("return")),
            *[_fmt(row.get(m)) for m in metric_names],
            _fmt(row.get("env_steps")), _fmt(row.get("wall_s"), 1),
        )
    console = Console()
    if not console.is_terminal:  # a log file: no reason to squeeze the table into 80 columns
        console = Console(width=160)
    console.print(table)


def _summary_row(label: str, summary: dict, metric_names: list[str]) -> dict:
    row = {"policy": label, "return": summary.get("final_return")}
    row.update({m: summary.get(m) for m in metric_names})
    row.update(env_steps=summary.get("env_steps"), wall_s=summary.get("wall_s"))
    return row


def _demo_row(demo_path: pathlib.Path, demos, metric_names: list[str]) -> dict:
    import numpy as np

    from leed_jax.dg.buffer import read_demo_meta

    meta = read_demo_meta(demo_path)
    source = meta.get("source", "demos")
    label = f"demonstrations ({'LLM ' + str(meta.get('model')) if source == 'llm' else source})"
    row = {"policy": label, "return": float(np.asarray(demos.agent_return).mean())}
    found = meta.get("metrics") or {}
    row.update({m: found.get(m, meta.get(m)) for m in metric_names})
    return row


def run(config: TrainConfig, resume_dir: pathlib.Path | None, export_dir: str | None = None) -> int:
    from leed_jax.po.prepare import prepare

    if export_dir:  # checked before anything is built or trained
        from leed_jax.envs import sumo_io
        from leed_jax.envs.registry import load_scenario

        scenario = load_scenario(config.scenario)
        if scenario.family != "traffic":
            raise UsageError(f"--export-sumo needs a traffic scenario; {config.scenario!r} is {scenario.family}")
        if scenario.tables["network"].get("kind", "grid") != "sumo" and not sumo_io.has_sumo():
            raise UsageError("--export-sumo needs SUMO's netconvert for this network: pip install 'leed_jax[sumo]'")
    # The one assembly of the run: validation, run directory, resume, env, demos, mesh.
    prepared = prepare(config, resume=resume_dir is not None, say=_say)
    try:
        return _train_and_report(prepared, export_dir)
    except KeyboardInterrupt:
        _error(f"{PROG}: interrupted; continue with --resume {prepared.run.path}")
        return 130


def _train_and_report(prepared, export_dir: str | None) -> int:
    from leed_jax.io.plots import plot_learning_curves
    from leed_jax.io.rundir import RunDir
    from leed_jax.parallel import is_writer
    from leed_jax.po.loop import run_prepared, train

    config, env, demos, out = prepared.config, prepared.env, prepared.demos, prepared.run.path
    writer = is_writer()
    result = run_prepared(prepared)
    summaries = {config.algo: result.summary}
    histories = {config.algo: result.history}
    if config.compare and config.algo != "ippo":
        sub = config.replace(algo="ippo", out=str(out / "compare-ippo"), compare=False,
                             demos=None)
        _say(f"training IPPO on the same budget for comparison -> {sub.out}")
        ippo = train(sub, env=env, resume="auto" if prepared.resume else False, say=_say)
        summaries["ippo"] = ippo.summary
        histories["ippo"] = ippo.history

    metric_names = list(result.summary.get("metric_names", []))
    rows = [_summary_row(algo.upper(), s, metric_names) for algo, s in summaries.items()]
    from leed_jax.dg.yardsticks import add_to_table, describe  # traffic: UE / SO rows and gaps

    table_names = add_to_table(rows, summaries, metric_names)
    references = {}
    if demos is not None:
        demo_row = _demo_row(pathlib.Path(config.demos), demos, metric_names)
        rows.append(demo_row)
        references["demonstrations"] = {
            "return": demo_row["return"], "mean_travel_time": demo_row.get("mean_travel_time")
        }
    if not writer:
        return 0
    if len(histories) > 1 or references:
        plot_learning_curves(histories, RunDir(out).plot_path, title=f"{env.name}, N={env.spec.num_agents}",
                             references=references)
    print_table(rows, table_names)
    for algo, s in summaries.items():
        if describe(s):
            _say(f"{algo.upper()} mean travel time {s['policy_mean_travel_time_on_yardstick_episodes']:.1f} s "
                 f"on the yardstick episodes: {describe(s)}; user equilibrium "
                 f"{s['ue_mean_travel_time']:.1f} s, system optimum {s['so_mean_travel_time']:.1f} s "
                 f"(planned in {s['yardstick_s']:.0f} s; --yardsticks 0 skips them)")
    if export_dir:
        from leed_jax.envs.sumo_io import export_trained_policy

        files, episode = export_trained_policy(env, result, export_dir)
        _say(f"one greedy episode for SUMO ({int(episode.arrived.sum())}/{episode.num_vehicles} arrived "
             f"in the env): sumo -c {files['config']}")
    _say(f"results in {out} (summary.json, metrics.jsonl, learning_curve.png)")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:  # a mistyped flag is one line and exit 2 at once, before the imports of jax below
        args = vars(build_parser().parse_args(argv))
    except UsageError as err:
        _error(f"{PROG}: error: {err}")
        return 2
    from leed_jax.dg.errors import DGError
    from leed_jax.envs.base import ScenarioError
    from leed_jax.envs.sumo_io import SumoError
    from leed_jax.po.loop import TrainingError

    # DGError covers demo buffers that are missing or do not fit, and LLM provider failures.
    bad_input = (UsageError, ConfigError, ScenarioError, DGError, FileNotFoundError)
    from leed_jax.io.checkpoint import CheckpointError
    from leed_jax.io.rundir import RunDirError

    bad_input += (CheckpointError, RunDirError)
    try:
        from leed_jax.parallel import MeshError

        bad_input += (MeshError,)
    except ImportError:  # pragma: no cover - parallel.py is optional here
        pass
    out = "DIR"
    try:
        config, resume_dir = _resolve(args)
        out = config.out or out
        export_dir = args.get("export_sumo")
        return run(config, resume_dir, export_dir)
    except bad_input as err:
        if os.environ.get("LEED_DEBUG"):
            raise
        _error(f"{PROG}: error: {err}")
        return 2
    except TrainingError as err:
        _error(f"{PROG}: {err}")
        return 1
    except SumoError as err:  # training and its results are already saved
        _say(f"{PROG}: --export-sumo failed: {err}")
        return 1
    except KeyboardInterrupt:
        _error(f"{PROG}: interrupted; continue with --resume {out}")
        return 130


if __name__ == "__main__":
    sys.exit(main())
