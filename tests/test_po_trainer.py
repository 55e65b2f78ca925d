"""The trainer and its host loop on a toy env: --seeds vmapping, checkpoint/resume (also after
SIGKILL) to bit-identical parameters, NaN handling, the run directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from test_po_toy import ToyEnv, toy_demos

from leed_jax.config import TrainConfig
from leed_jax.io.checkpoint import Checkpointer, checkpoint_steps
from leed_jax.po.loop import TrainingError, env_steps_at, train
from leed_jax.po.trainer import make_train, seed_keys

TESTS = Path(__file__).parent
# One update per chunk and a checkpoint every 2: every test here runs the same compiled
# program (shared through JAX's persistent cache), the NaN and --seeds ones aside.
CFG = TrainConfig(
    algo="leed", num_envs=4, num_steps=12, total_steps=4 * 12 * 20, num_minibatches=2,
    update_epochs=2, log_every=1, checkpoint_every=2, checkpoint_interval_s=0.0, lr=3e-3,
    expert_batch_size=8,
    progress=False, eval_envs=4, warm_start_steps=200, warm_critic_updates=1,
)
# The warm start (default for leed) runs before update 1 and is checkpointed at update 0; its
# critic warm-up's rollout comes out of the budget: 19 updates.
N = CFG.num_updates


@pytest.fixture(scope="module", autouse=True)
def compile_cache(tmp_path_factory):
    """Share compiled programs between the identical runs of this module (and with the
    subprocess of the SIGKILL test) through JAX's persistent cache."""
    path = tmp_path_factory.getbasetemp() / "xla-cache"
    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
            "jax_persistent_cache_min_entry_size_bytes")
    old = {k: getattr(jax.config, k) for k in keys}
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    yield path
    for k, v in old.items():
        jax.config.update(k, v)


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def _assert_identical(a, b):
    for x, y in zip(_leaves(a), _leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of CFG."""
    env = ToyEnv()
    out = tmp_path_factory.mktemp("reference")
    return train(CFG.replace(out=str(out)), env=env, demos=toy_demos(env))


def test_run_directory_and_learning(reference):
    out = reference.out_dir
    for name in ("config.toml", "metrics.jsonl", "summary.json", "learning_curve.png"):
        assert (out / name).is_file(), name
    assert Checkpointer(out / "checkpoints").latest_step() == CFG.num_updates
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in lines] == list(range(0, N + 1))
    # The warm start's line (update 0) and a held-out greedy evaluation on every line.
    assert lines[0]["warm_steps"] >= 100 and lines[0]["warm_demo_accuracy"] > 0.9
    assert all("eval_return" in r and "eval_hit_rate" in r for r in lines)
    for key in ("env_steps", "wall_s", "return", "expert_weight", "loss", "policy_loss",
                "value_loss", "entropy", "expert_loss", "hit_rate", "env_steps_per_s"):
        assert key in lines[-1], key
    summary = json.loads((out / "summary.json").read_text())
    for key in ("algo", "scenario", "num_agents", "env_steps", "wall_s", "env_steps_per_s",
                "final_return", "hit_rate"):
        assert key in summary, key
    assert summary["env_steps"] == env_steps_at(CFG, N) == CFG.total_steps
    # the toy task is easy: the warm-started and the trained greedy policy are (nearly) perfect
    assert summary["final_return"] > 2.5 and lines[0]["eval_return"] > 2.5
    assert summary["final_return"] == lines[-1]["eval_return"]


def test_seeds_vmap_equals_separate_runs():
    env = ToyEnv()
    demos = jax.tree_util.tree_map(np.asarray, toy_demos(env))
    trainer = make_train(CFG, env, demos)
    init, chunk = trainer.seeds_init(), trainer.seeds_chunk()

    def run(keys):
        state = init(keys)
        for _ in range(3):
            state, _ = chunk(state, demos)
        return state

    both = run(seed_keys(CFG.replace(seed=3, seeds=2)))
    for k in range(2):
        alone = run(seed_keys(CFG.replace(seed=3 + k, seeds=1)))
        for x, y in zip(_leaves(both.params), _leaves(alone.params), strict=True):
            np.testing.assert_allclose(x[k], y[0], rtol=1e-5, atol=1e-6)


def test_stop_and_resume_reaches_the_same_parameters(reference, tmp_path):
    env = ToyEnv()
    # A minimum interval longer than the run: no periodic save (the one due after chunk 2 is
    # skipped), but the warm start's (update 0) and the last chunk of the call are saved.
    cfg = CFG.replace(out=str(tmp_path / "run"), checkpoint_interval_s=1e9)
    first = train(cfg, env=env, demos=toy_demos(env), max_chunks=3)
    assert int(first.state.update[0]) == 3 and not first.summary["finished"]
    assert checkpoint_steps(tmp_path / "run/checkpoints") == [0, 3]
    resumed = train(cfg, env=env, demos=toy_demos(env), resume=True)
    _assert_identical(resumed.state, reference.state)
    updates = [json.loads(x)["update"] for x in (tmp_path / "run/metrics.jsonl").open()]
    assert updates == list(range(0, N + 1))


def test_resume_after_sigkill_reaches_the_same_parameters(reference, tmp_path, compile_cache):
    # A subprocess trains CFG and SIGKILLs itself right after logging update 5: the metrics
    # lines past the last whole checkpoint must be dropped, nothing is cleaned up.
    out = tmp_path / "killed"
    script = (
        "import sys, os, signal, json; sys.path.insert(0, sys.argv[1])\n"
        "from test_po_toy import ToyEnv, toy_demos\n"
        "from leed_jax.config import from_dict\n"
        "from leed_jax.io import rundir\n"
        "from leed_jax.po.loop import train\n"
        "append = rundir.RunDir.append_metrics\n"
        "def append_then_die(self, record):\n"
        "    append(self, record)\n"
        "    if record['update'] == 5:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "rundir.RunDir.append_metrics = append_then_die\n"
        "env = ToyEnv(); train(from_dict(json.loads(sys.argv[2])), env=env, demos=toy_demos(env))\n"
    )
    conf = CFG.replace(out=str(out)).to_dict()
    env_vars = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(compile_cache),
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    proc = subprocess.run(
        [sys.executable, "-c", script, str(TESTS), json.dumps(conf)], env=env_vars,
        capture_output=True, timeout=300, check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    # Saves run in a background thread: checkpoint 4 may still have been in flight when the
    # process died, and then checkpoint 2 is the last whole one. Either way resuming from it
    # must reach the same parameters.
    assert Checkpointer(out / "checkpoints").latest_step() in (2, 4)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 6  # updates 0..5

    env = ToyEnv()
    resumed = train(CFG.replace(out=str(out)), env=env, demos=toy_demos(env), resume=True)
    _assert_identical(resumed.state, reference.state)
    updates = [json.loads(x)["update"] for x in (out / "metrics.jsonl").open()]
    assert updates == list(range(0, N + 1))


def test_nan_in_the_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    env = ToyEnv()
    cfg = CFG.replace(out=str(tmp_path / "nan"))
    train(cfg, env=env, demos=toy_demos(env), max_chunks=2)
    # Corrupt demonstrations (same shapes, so the same compiled program) poison update 3.
    demos = toy_demos(env)
    demos = demos._replace(obs=demos.obs * np.nan)
    with pytest.raises(TrainingError, match=r"NaN in the loss at update 3\b.*update 2 "):
        train(cfg, env=env, demos=demos, resume=True)
    assert Checkpointer(tmp_path / "nan/checkpoints").latest_step() == 2


def test_resume_without_a_checkpoint_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(CFG.replace(out=str(tmp_path)), env=ToyEnv(), demos=toy_demos(ToyEnv()), resume=True)
