"""Multi-process training over loopback: 2 processes x 2 forced CPU devices each (gloo
collectives, a coordinator on 127.0.0.1 at a free port) train a LEED run sharded over the 4
devices (2 x 2 data x agent mesh), and reach the state of the single-process run on 4 devices.
Process 0 alone writes the run directory; process 1 prints nothing; a run whose processes are
all SIGKILLed resumes to the same state. Every launch has a timeout and kills all its
processes when one fails.

Kept short for the suite (about 35 s on 2 idle cores): the smallest env (MPE simple spread,
4 agents, 8-step episodes), 2 updates, and three launches only — the single-process
reference runs alongside the first multi-process launch, and the resumed launch reads its
compiled programs from the compile cache the first one filled.
(``jax_share_binary_between_hosts``, process 0 compiling for both, would halve the compile
work but deadlocked the first gloo collective here with jax 0.10 on CPU.)"""

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

from leed_jax.io.checkpoint import checkpoint_steps, load_leaves
from leed_jax.launch import free_port, process_env

TESTS = Path(__file__).parent
MPE_TINY = """
name = "mpe-tiny"
family = "mpe"
description = "MPE simple spread, 4 agents, 8-step episodes (multi-process test)"
prompt = "mpe"
[jaxmarl]
env_name = "MPE_simple_spread_v3"
num_agents = 4
horizon = 8
"""
ARGS = [
    "--num-envs", "4", "--num-steps", "4", "--total-steps", "32", "--num-minibatches", "1",
    "--update-epochs", "1", "--log-every", "1", "--eval-envs", "2", "--expert-batch-size", "8",
    "--no-progress", "--mesh-data", "2", "--mesh-agent", "2", "--warm-start-steps", "0",
    "--episodes", "8",
]  # 2 updates, a checkpoint after each (no warm start, 8 demo episodes: this test is about
#    the processes)
TIMEOUT = 180
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


@pytest.fixture
def env(tmp_path):
    """Environment of every launched process: CPU only, the worktree's sources, one compile
    cache for all launches (the resumed launch reads the programs the first one compiled)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")]),
        JAX_COMPILATION_CACHE_DIR=str(tmp_path / "xla-cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        # Compiling dominates these tiny runs: XLA's cheapest CPU back end settings about halve
        # it (every process uses the same, so the programs still match).
        XLA_FLAGS=FAST_COMPILE,
        MP_LOGS=str(tmp_path))
    env.pop("LEED_TEST_KILL_AT", None)
    (tmp_path / "mpe-tiny.toml").write_text(MPE_TINY)
    return env


def _args(tmp_path, out):
    return ["--scenario", str(tmp_path / "mpe-tiny.toml"), *ARGS, "--out", str(out)]


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


def start_single_process(env, argv, devices=4):
    """The single-process run on ``devices`` forced devices, started in the background (its
    own session, so that a failing test can kill it with its children)."""
    penv = dict(env, XLA_FLAGS=f"{FAST_COMPILE} --xla_force_host_platform_device_count={devices}")
    return subprocess.Popen([sys.executable, str(TESTS / "_mp_run.py"), *argv], env=penv,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _max_diff(a: Path, b: Path) -> float:
    """Largest difference over every leaf of the final checkpoints (the whole trainer state:
    parameters, optimiser state, env states, keys)."""
    x, y = load_leaves(a / "checkpoints"), load_leaves(b / "checkpoints")
    return max(float(np.max(np.abs(u.astype(np.float64) - v.astype(np.float64))))
               for u, v in zip(x, y, strict=True))


@pytest.mark.slow  # deselect with -m "not slow"
def test_two_processes_train_like_one_survive_sigkill_and_only_process_0_writes(env, tmp_path):
    """One multi-process run, SIGKILLed in all its processes after the checkpoint of update 1,
    then resumed by two new processes: its final state equals the single-process run's on 4
    devices (same mesh). The resumed run trains update 1 and update 2 across processes and
    restores the sharded checkpoint in between, so an uninterrupted multi-process run is not
    launched separately."""
    reference = tmp_path / "reference"
    single = start_single_process(env, _args(tmp_path, reference))
    try:
        out = tmp_path / "multi"
        results = run_processes(env, _args(tmp_path, out), extra_env={"LEED_TEST_KILL_AT": "1"})
        assert results[0][0] == -signal.SIGKILL, results[0][2][-2000:]
        assert all(rc is not None and rc < 0 for rc, _, _ in results)  # nothing survived
        # Process 1 prints nothing on stdout; on stderr it may report process 0's death (an
        # error) if it notices before its own SIGKILL. The resumed launch checks it says nothing.
        assert results[1][1] == ""
        assert "run directory" not in results[1][2] and "demonstrations" not in results[1][2]
        assert "run directory" in results[0][2] and "demonstrations" in results[0][2]
        assert (out / "demos" / "demos.npz").is_file()  # generated by process 0, read by both
        assert checkpoint_steps(out / "checkpoints") == [1]

        (rc0, out0, err0), (rc1, out1, err1) = run_processes(env, ["--resume", str(out)])
        assert (rc0, rc1) == (0, 0), err0[-2000:] + err1[-2000:]
        assert out1 == err1 == ""
        assert "resuming" in err0 and "from update 1" in err0 and "evaluation" in out0
        for name in ("config.toml", "metrics.jsonl", "summary.json", "learning_curve.png"):
            assert (out / name).is_file(), name
        updates = [json.loads(x)["update"] for x in (out / "metrics.jsonl").read_text().splitlines()]
        assert updates == [0, 1, 2]  # one writer: no duplicated or interleaved lines (0: the start)
        assert checkpoint_steps(out / "checkpoints") == [1, 2]
        summary = json.loads((out / "summary.json").read_text())
        assert summary["finished"] and summary["env_steps"] == 32
        assert summary["processes"] == 2 and summary["devices"] == 4

        _, err = single.communicate(timeout=TIMEOUT)
        assert single.returncode == 0, err[-3000:]
    finally:
        _kill_all([single])
    assert json.loads((reference / "summary.json").read_text())["processes"] == 1
    assert _max_diff(out, reference) <= 1e-6
