"""Multi-process training over loopback: 2 processes x 2 forced CPU devices each (gloo
collectives, a coordinator on 127.0.0.1 at a free port) train a LEED run sharded over the 4
devices, and reach the parameters of the single-process run on 4 devices. Process 0 alone
writes the run directory; process 1 prints nothing; a run whose processes are all SIGKILLed
resumes to the same parameters. Every launch has a timeout and kills all its processes when
one fails."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_run_cli import TINY

from leed_jax.io.checkpoint import checkpoint_steps, load_leaves
from leed_jax.launch import free_port, process_env

TESTS = Path(__file__).parent
ARGS = [
    "--agents", "4", "--num-envs", "4", "--num-steps", "8", "--total-steps", "128",
    "--num-minibatches", "2", "--update-epochs", "1", "--log-every", "1", "--eval-envs", "2",
    "--expert-batch-size", "8", "--no-progress", "--mesh-data", "2", "--mesh-agent", "2",
]  # 4 updates, a checkpoint after each (the last two kept)
TIMEOUT = 240


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Scenario file and a compile cache shared by every process of this module."""
    root = tmp_path_factory.mktemp("mp")
    (root / "tiny.toml").write_text(TINY)
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")]),
        JAX_COMPILATION_CACHE_DIR=str(root / "xla-cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    env.pop("LEED_TEST_KILL_AT", None)
    return root, env


def _kill_all(procs):
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    for p in procs:
        p.wait()


def run_processes(env, argv, n=2, extra_env=None, timeout=TIMEOUT):
    """Start ``_mp_run.py argv`` as ``n`` cooperating processes; wait for all (all are
    SIGKILLed when one fails or the timeout passes). Returns [(returncode, stdout, stderr)]."""
    port = free_port()
    procs, logs = [], []
    for i in range(n):
        penv = process_env(dict(env, **(extra_env or {})), port, n, i, devices=2)
        logs.append((Path(env["MP_LOGS"]) / f"p{i}.out", Path(env["MP_LOGS"]) / f"p{i}.err"))
        procs.append(subprocess.Popen(
            [sys.executable, str(TESTS / "_mp_run.py"), "--distributed", *argv], env=penv,
            stdout=logs[-1][0].open("w"), stderr=logs[-1][1].open("w"), start_new_session=True,
        ))
    deadline = time.monotonic() + timeout
    try:
        while any(p.poll() is None for p in procs):
            if any(p.poll() not in (None, 0) for p in procs):
                time.sleep(3)  # a dead partner: the others cannot finish; give them a moment
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
    finally:
        _kill_all(procs)
    return [(p.returncode, o.read_text(), e.read_text()) for p, (o, e) in zip(procs, logs)]


def single_process(env, argv, devices=4, timeout=TIMEOUT):
    penv = dict(env, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return subprocess.run([sys.executable, str(TESTS / "_mp_run.py"), *argv], env=penv,
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def reference(work):
    """The single-process run on 4 forced devices (same mesh)."""
    root, env = work
    out = root / "reference"
    proc = single_process(env, ["--scenario", str(root / "tiny.toml"), *ARGS, "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _max_diff(a: Path, b: Path) -> float:
    """Largest difference over every leaf of the final checkpoints (the whole trainer state:
    parameters, optimiser state, env states, keys)."""
    x, y = load_leaves(a / "checkpoints"), load_leaves(b / "checkpoints")
    return max(float(np.max(np.abs(u.astype(np.float64) - v.astype(np.float64))))
               for u, v in zip(x, y, strict=True))


def test_two_processes_train_like_one_survive_sigkill_and_only_process_0_writes(work, reference, tmp_path):
    """One multi-process run, SIGKILLed in all its processes after the checkpoint of update 2,
    then resumed by two new processes: its final state equals the single-process run's.
    (An uninterrupted multi-process run is not launched separately to keep the suite short:
    the resumed run trains updates 1-2 and 3-4 across processes and restores the sharded
    checkpoint in between, so it covers both.)"""
    root, env = work
    env = dict(env, MP_LOGS=str(tmp_path))
    out = root / "multi"
    argv = ["--scenario", str(root / "tiny.toml"), *ARGS, "--out", str(out)]
    results = run_processes(env, argv, extra_env={"LEED_TEST_KILL_AT": "2"})
    assert results[0][0] == -signal.SIGKILL, results[0][2][-2000:]
    assert all(rc is not None and rc < 0 for rc, _, _ in results)  # nothing survived
    assert results[1][1] == results[1][2] == ""  # process 1: nothing but errors
    assert "run directory" in results[0][2] and "demonstrations" in results[0][2]
    assert (out / "demos" / "demos.npz").is_file()  # generated by process 0, read by both
    assert checkpoint_steps(out / "checkpoints") == [1, 2]

    (rc0, out0, err0), (rc1, out1, err1) = run_processes(env, ["--resume", str(out)])
    assert (rc0, rc1) == (0, 0), err0[-2000:] + err1[-2000:]
    assert out1 == err1 == ""
    assert "resuming" in err0 and "from update 2" in err0 and "evaluation" in out0
    for name in ("config.toml", "metrics.jsonl", "summary.json", "learning_curve.png"):
        assert (out / name).is_file(), name
    updates = [json.loads(x)["update"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert updates == [1, 2, 3, 4]  # one writer: no duplicated or interleaved lines
    assert checkpoint_steps(out / "checkpoints") == [3, 4]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] and summary["env_steps"] == 128
    assert _max_diff(out, reference) <= 1e-6
