"""python -m leed_jax.sweep: a small grid end to end, resumable, with its tables and plot."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from leed_jax.config import TrainConfig
from leed_jax.po.loop import train
from leed_jax.sweep import cell_dir, main, run_sweep

BASE = TrainConfig(
    scenario="traffic-grid", total_steps=4 * 16 * 3, num_envs=4, num_steps=16, num_minibatches=2,
    update_epochs=1, seeds=2, log_every=1, eval_envs=2, progress=False,
)


def test_sweep_runs_grid_and_resumes(tmp_path):
    out = tmp_path / "sweep"
    # An interrupted cell: one chunk of the N=6 run, as if the sweep had been killed there.
    interrupted = cell_dir(out, "ippo", 6)
    train(BASE.replace(algo="ippo", num_agents=6, out=str(interrupted)), max_chunks=1, say=lambda m: None)
    assert not json.loads((interrupted / "summary.json").read_text())["finished"]

    said = []
    rows = run_sweep(BASE, [4, 6], ["ippo"], out, say=said.append)
    assert [(r["algo"], r["num_agents"], r["seeds"]) for r in rows] == [("ippo", 4, 2), ("ippo", 6, 2)]
    assert any("resuming" in m and "N=6" in m for m in said)
    for r in rows:
        assert r["env_steps"] == BASE.total_steps  # IPPO: no warm start uses up budget
        assert r["agent_steps_per_s"] > 0 and 0.0 <= r["arrival_rate"] <= 1.0
    with (out / "results.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert [int(r["num_agents"]) for r in table] == [4, 6]
    assert json.loads((out / "results.json").read_text()) == rows
    assert (out / "scaling.png").stat().st_size > 1000

    # A rerun recomputes nothing: every cell is read back from its summary.
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("cells/*/summary.json")}
    said.clear()
    again = run_sweep(BASE, [4, 6], ["ippo"], out, say=said.append)
    assert again == rows
    assert all("finished earlier" in m for m in said) and len(said) == 2
    assert {p: p.stat().st_mtime_ns for p in out.glob("cells/*/summary.json")} == stamps


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--agents", "10,x"], "--agents must be a comma-separated list of integers"),
        (["--agents", "0"], "--agents needs positive integers"),
        (["--algos", "ppo"], "--algos: unknown ppo"),
        (["--scenario", "nowhere"], "unknown scenario 'nowhere'"),
    ],
)
def test_sweep_cli_errors(tmp_path, argv, message, capsys):
    code = main(argv + ["--out", str(tmp_path / "s"), "--total-steps", "4096", "--num-envs", "4"])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_sweep_cli_module_exit_status(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "leed_jax.sweep", "--algos", "nope", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 2 and proc.stderr.strip().startswith("python -m leed_jax.sweep: error:")


def test_seeds_that_do_not_fit_run_one_by_one(tmp_path, monkeypatch):
    import leed_jax.po.loop as loop_mod

    real_train = loop_mod.train
    calls = []

    def train_without_room_for_vmapped_seeds(cfg, **kw):
        calls.append((cfg.seeds, cfg.seed))
        if cfg.seeds > 1:
            raise loop_mod.OutOfMemoryError("out of device memory (simulated)")
        return real_train(cfg, **kw)

    monkeypatch.setattr(loop_mod, "train", train_without_room_for_vmapped_seeds)
    said = []
    (row,) = run_sweep(BASE, [4], ["ippo"], tmp_path / "s", say=said.append)
    assert calls == [(2, 0), (1, 0), (1, 1)]
    assert any("one by one" in m for m in said)
    assert row["seeds"] == 2
    assert row["env_steps"] == BASE.total_steps  # IPPO: no warm start takes steps out of the budget
    summary = json.loads((cell_dir(tmp_path / "s", "ippo", 4) / "summary.json").read_text())
    assert summary["finished"] and len(summary["final_return_seeds"]) == 2
    assert summary["final_return"] == pytest.approx(sum(summary["final_return_seeds"]) / 2)
