"""Sharded training on 8 forced CPU devices reaches the parameters of the unsharded run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from leed_jax.parallel import MeshError, check_fits, make_mesh

TESTS = Path(__file__).parent


def test_sharded_runs_match_unsharded():
    algo = "leed"  # PPO + expert loss: every part of the update is sharded
    flags = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, str(TESTS / "_sharded_run.py"), algo],
        capture_output=True, text=True, timeout=400, env=env, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result["diff"]) == {"2x4"}
    print(result)
    for mesh, diff in result["diff"].items():
        assert diff <= 1e-4 * max(1.0, result["scale"]), (mesh, diff)


def test_mesh_errors_say_what_fits():
    mesh = make_mesh(data=1, agent=1)
    check_fits(mesh, num_envs=6, num_agents=5)
    with pytest.raises(MeshError, match=r"needs 16 devices; 1 available"):
        make_mesh(data=16)
    devices = jax.devices() * 8  # the same device 8 times: enough to build a mesh object
    wide = make_mesh(data=4, agent=2, devices=devices)
    with pytest.raises(MeshError, match=r"num_envs=6 does not split over the data axis of 4 devices; use num_envs in \[4, 8"):
        check_fits(wide, num_envs=6, num_agents=4)
    with pytest.raises(MeshError, match=r"num_agents=5 does not split over the agent axis of 2 devices"):
        check_fits(wide, num_envs=8, num_agents=5)
    with pytest.raises(MeshError, match="share_params"):
        check_fits(wide, num_envs=8, num_agents=4, share_params=True)


def test_out_of_memory_advice_names_options_that_fit():
    from leed_jax.config import TrainConfig
    from leed_jax.po.loop import is_out_of_memory, memory_advice

    assert is_out_of_memory(RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 8GiB"))
    assert not is_out_of_memory(RuntimeError("INVALID_ARGUMENT: shapes differ"))
    cfg = TrainConfig(num_envs=16, seeds=3)
    advice = memory_advice(cfg, num_agents=1000, num_devices=8)
    assert "--num-envs 8" in advice and "--seeds 1" in advice
    assert "--mesh-agent 8" in advice and "--mesh-data 8" in advice and "--share-params" in advice
    one_device = memory_advice(cfg.replace(seeds=1), num_agents=1000, num_devices=1)
    assert "--mesh" not in one_device and "--num-envs 8" in one_device
    odd = memory_advice(cfg.replace(num_envs=6), num_agents=7, num_devices=4)
    assert "--mesh-agent" not in odd and "--mesh-data 3" in odd
