"""Input a hostile user would give: one line, exit status 2, nothing created or lost; a damaged
latest checkpoint falls back to the previous one; a second writer on one run directory is
refused, and a SIGKILLed writer leaves no stuck lock."""

from __future__ import annotations

import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from leed_jax.io.checkpoint import Checkpointer, CheckpointError, checkpoint_steps
from leed_jax.run import main as run_main
from leed_jax.sweep import main as sweep_main


def _one_line(capsys, code, *needles):
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def test_config_that_is_a_directory_or_binary(capsys, tmp_path):
    _one_line(capsys, run_main(["--config", str(tmp_path)]), "is a directory")
    _one_line(capsys, sweep_main(["--config", str(tmp_path), "--out", str(tmp_path / "s")]),
              "is a directory")
    binary = tmp_path / "b.toml"
    binary.write_bytes(bytes(range(256)) * 4)
    _one_line(capsys, run_main(["--config", str(binary)]), "not text")


def test_out_that_is_a_file_or_read_only(capsys, tmp_path):
    file = tmp_path / "f"
    file.write_text("keep me")
    _one_line(capsys, run_main(["--out", str(file)]), "existing file")
    _one_line(capsys, sweep_main(["--out", str(file), "--agents", "4"]), "existing file")
    _one_line(capsys, run_main(["--out", str(file / "sub")]), "is a file")
    assert file.read_text() == "keep me"
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        _one_line(capsys, run_main(["--out", str(ro / "x")]), "not writable")


@pytest.mark.parametrize("argv, needle", [
    (["--agents", "99999999999"], "'num_agents' must be <="),
    (["--total-steps", "99999999999999999999999"], "'total_steps' is too large"),
])
def test_sizes_that_cannot_be_meant(capsys, tmp_path, argv, needle):
    _one_line(capsys, run_main([*argv, "--out", str(tmp_path / "o")]), needle)
    assert not (tmp_path / "o").exists()


def test_usage_errors_are_one_line(capsys, tmp_path):
    _one_line(capsys, sweep_main(["--seeds", "x", "--out", str(tmp_path)]), "--seeds")
    _one_line(capsys, sweep_main([]), "--out")


def test_mesh_error_creates_nothing(capsys, tmp_path):
    out = tmp_path / "run"
    err = _one_line(capsys, run_main(["--mesh-data", "64", "--out", str(out)]), "devices")
    assert "run directory" not in err and not out.exists()


def test_second_writer_is_refused_and_sigkill_frees_the_lock(capsys, tmp_path):
    from leed_jax.io.rundir import RunDirError, lock_run_dir

    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", ("import sys, time; from leed_jax.io.rundir import lock_run_dir; "
                                "lock_run_dir(sys.argv[1]); print('locked', flush=True); "
                                "time.sleep(60)"), str(out)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        _one_line(capsys, run_main(["--out", str(out), "--algo", "ippo"]), "another run is writing")
        with pytest.raises(RunDirError):
            lock_run_dir(out)
    finally:
        holder.kill()
        holder.wait()
    lock_run_dir(out)  # the kernel dropped the dead writer's lock


def _state(x):
    return {"w": jnp.full((3, 2), x, jnp.float32), "n": jnp.asarray(int(x), jnp.int32)}


@pytest.mark.parametrize("damage", ["truncate", "empty-metadata", "delete-state"])
def test_damaged_latest_checkpoint_falls_back_and_is_kept(tmp_path, damage):
    ckpt = Checkpointer(tmp_path / "checkpoints")
    ckpt.save(1, _state(1.0), {"update": 1})
    ckpt.save(2, _state(2.0), {"update": 2}, wait=True)
    state_dir = tmp_path / "checkpoints/2/state"
    if damage == "truncate":
        biggest = max((p for p in state_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
        biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 3])
    elif damage == "empty-metadata":
        (state_dir / "_METADATA").write_text("")
    else:
        import shutil

        shutil.rmtree(state_dir)
    said = []
    state, meta = ckpt.restore(_state(0.0), say=said.append)
    if damage == "truncate" and meta["update"] == 2:
        pytest.skip("orbax read the truncated file's surviving part (nothing was lost)")
    assert meta["update"] == 1 and float(state["w"][0, 0]) == 1.0
    assert len(said) == 1 and "update 2" in said[0] and "skipped" in said[0], said
    assert (tmp_path / "damaged-checkpoints/2").is_dir()  # kept for inspection
    assert checkpoint_steps(tmp_path / "checkpoints") == [1]
    ckpt.close()


def test_no_checkpoint_restores(tmp_path):
    ckpt = Checkpointer(tmp_path / "checkpoints")
    ckpt.save(1, _state(1.0), {"update": 1}, wait=True)
    (tmp_path / "checkpoints/1/state/_METADATA").write_text("")
    with pytest.raises(CheckpointError, match="update 1"):
        ckpt.restore(_state(0.0))


def test_truncated_demo_buffer(capsys, tmp_path):
    from leed_jax.dg.buffer import DemoBuffer, save_demos
    from leed_jax.dg.cli import main as demos_main

    n, m = 6, 4
    buf = DemoBuffer(obs=np.zeros((n, m, 3), np.float32), action=np.zeros((n, m), np.int32),
                     avail=np.ones((n, m, 2), bool), valid=np.ones((n, m), bool),
                     agent_return=np.zeros(n, np.float32))
    path = save_demos(tmp_path / "demos", buf, {"scenario": {"name": "x", "family": "traffic"},
                                                "source": "planner"})
    npz = path / "demos.npz"
    npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
    _one_line(capsys, run_main(["--demos", str(path), "--out", str(tmp_path / "o")]), "unreadable")
    assert demos_main(["--scenario", "traffic-grid", "--check", str(path)]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_demos_cli_checks_out_and_cache_dir_first_and_usage_is_one_line(capsys, tmp_path):
    from leed_jax.dg.cli import main as demos_main

    file = tmp_path / "f"
    file.write_text("keep me")
    assert demos_main(["--scenario", "traffic-grid", "--source", "planner", "--out", str(file)]) == 2
    _one_line(capsys, 2, "--out", "existing file")
    assert demos_main(["--scenario", "traffic-grid", "--source", "planner", "--cache-dir", str(file),
                       "--out", str(tmp_path / "d")]) == 2
    _one_line(capsys, 2, "--cache-dir")
    assert not (tmp_path / "d").exists() and file.read_text() == "keep me"
    with pytest.raises(SystemExit) as exc:
        demos_main(["--scenario", "traffic-grid", "--bogus"])
    assert exc.value.code == 2
    _one_line(capsys, 2, "--bogus")
