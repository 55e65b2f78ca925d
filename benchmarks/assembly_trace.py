"""How often one ``python -m leed_jax.run`` passes its data through the same assembly step.

Runs ``leed_jax.run.main`` in-process on a tiny traffic scenario twice (LEED with planner
demos; then the same with ``--compare``, which adds an IPPO run on the same budget and env)
under ``sys.setprofile`` and counts the calls of
the functions that assemble a run: config validation, the default run directory, the resume
and writability checks, the run-directory lock, the env factory, demo loading and fit checks,
the device mesh, demo generation and trainer construction. Works on any checkout (it looks the
functions up by name), so the same command measures the code before and after a change:

    PYTHONPATH=old/src python benchmarks/assembly_trace.py --save /tmp/before.npz
    PYTHONPATH=new/src python benchmarks/assembly_trace.py --compare /tmp/before.npz

``--save`` keeps the final parameters (from the last checkpoints), the metrics lines and the
summaries (timings left out) of the ``--compare`` invocation's LEED and IPPO runs;
``--compare`` says whether they are equal bit for bit. JSON last.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import sys
import tempfile

# The smallest traffic scenario (the example of a custom scenario file).
TINY = (pathlib.Path(__file__).parents[1] / "docs" / "examples" / "tiny-grid.toml").read_text()

# Assembly steps: (file, function name) -> label.
WATCH = {
    ("config.py", "validate"): "TrainConfig.validate",
    ("rundir.py", "default_run_dir"): "default run directory",
    ("checkpoint.py", "has_checkpoint"): "resume check (has_checkpoint)",
    ("rundir.py", "check_writable"): "writability check",
    ("rundir.py", "lock_run_dir"): "run-directory lock",
    ("registry.py", "make_env"): "env factory (make_env)",
    ("buffer.py", "load_demos"): "demo buffer read (load_demos)",
    ("buffer.py", "check_fits"): "demo fit check (buffer.check_fits)",
    ("trainer.py", "check_demos"): "demo fit check (trainer.check_demos)",
    ("parallel.py", "make_mesh"): "device mesh (make_mesh)",
    ("parallel.py", "check_fits"): "mesh fit check (parallel.check_fits)",
    ("generate.py", "run_dg"): "demo generation (run_dg)",
    ("trainer.py", "make_train"): "trainer construction (make_train)",
    ("trainer.py", "build"): "trainer construction (Trainer.build)",
    ("rundir.py", "write_config"): "config.toml written",
}


def _module(filename: str) -> str:
    p = pathlib.Path(filename)
    parts = p.parts[p.parts.index("leed_jax"):] if "leed_jax" in p.parts else (p.name,)
    return ".".join(parts)[: -len(".py")]


def trace(argv: list[str]):
    counts: collections.Counter = collections.Counter()
    sequence: list[str] = []  # assembly steps in call order, with their module

    def profile(frame, event, arg):
        if event != "call":
            return
        code = frame.f_code
        label = WATCH.get((pathlib.Path(code.co_filename).name, code.co_name))
        if label is None or "leed_jax" not in code.co_filename:
            return
        counts[label] += 1
        sequence.append(f"{_module(code.co_filename)}.{code.co_name}")

    from leed_jax.run import main

    sys.setprofile(profile)
    try:
        code = main(argv)
    finally:
        sys.setprofile(None)
    return code, dict(counts), sequence


def final_params(run_dir: pathlib.Path) -> dict:
    import numpy as np

    from leed_jax.io.checkpoint import load_leaves

    return {f"{i}": np.asarray(x) for i, x in enumerate(load_leaves(run_dir / "checkpoints"))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--save", help="write the runs' final parameters and metrics here (.npz)")
    p.add_argument("--compare", help="an earlier --save file: are the results bit-identical?")
    args = p.parse_args()
    import numpy as np

    work = pathlib.Path(tempfile.mkdtemp(prefix="leed-trace-"))
    scenario = work / "tiny.toml"
    scenario.write_text(TINY)
    common = ["--scenario", str(scenario), "--total-steps", "512", "--num-envs", "4",
              "--num-steps", "16", "--num-minibatches", "2", "--update-epochs", "2",
              "--log-every", "2", "--eval-envs", "2", "--yardsticks", "0", "--no-progress"]
    result = {}
    # One run (LEED, demos generated), then the same with --compare (a second, IPPO run on
    # the same env): the steps of one run should each happen once.
    for case, extra in (("leed", []), ("leed_compare", ["--compare"])):
        out = work / case
        code, counts, sequence = trace([*common, *extra, "--out", str(out)])
        result[case] = {"exit": code, "calls": counts, "calls_total": sum(counts.values()),
                        "sequence": sequence}
    result["load"] = os.getloadavg()
    if args.save or args.compare:
        arrays = {}
        for tag, d in (("leed", out), ("ippo", out / "compare-ippo")):
            arrays.update({f"{tag}/{k}": v for k, v in final_params(d).items()})
            lines = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
            drop = ("wall_s", "env_steps_per_s")  # timings differ run to run
            kept = [{k: v for k, v in r.items() if k not in drop} for r in lines]
            arrays[f"{tag}/metrics"] = np.asarray(json.dumps(kept, sort_keys=True))
            summary = json.loads((d / "summary.json").read_text())
            summary = {k: v for k, v in summary.items() if k not in (*drop, "compile_s")}
            arrays[f"{tag}/summary"] = np.asarray(json.dumps(summary, sort_keys=True))
        if args.save:
            np.savez(args.save, **arrays)
        if args.compare:
            before = np.load(args.compare)
            same = sorted(before.files) == sorted(arrays) and all(
                np.array_equal(before[k], arrays[k]) for k in before.files)
            result["bit_identical_to"] = {args.compare: bool(same)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
