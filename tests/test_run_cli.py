"""The main job ``python -m leed_jax.run``: config resolution, one-line errors with exit
status 2, and a short end-to-end run on a tiny scenario that writes the whole run directory."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from leed_jax.config import TrainConfig
from leed_jax.run import main, resolve_config

TINY = """
name = "tiny-grid"
family = "traffic"
description = "3x3 grid, 6 vehicles (tests)"
prompt = "traffic"
[network]
kind = "grid"
rows = 3
cols = 3
link_length = 200.0
speed = 10.0
lanes = 1.0
capacity_per_lane_km = 20.0
[demand]
kind = "random"
num_agents = 6
departure_window = 4
seed = 0
[env]
horizon = 24
dt = 10.0
"""


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


def _error(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


def test_flags_and_toml_config_resolve_to_one_typed_config(tmp_path):
    file = tmp_path / "c.toml"
    file.write_text('algo = "ippo"\ntotal_steps = 4096\n[ppo]\nlr = 0.001\n')
    config, resume = resolve_config(
        ["--config", str(file), "--agents", "7", "--lr", "0.002", "--actor-hidden", "32,16",
         "--no-progress", "--out", str(tmp_path / "o")]
    )
    assert resume is None
    assert config == TrainConfig(algo="ippo", total_steps=4096, lr=0.002, num_agents=7,
                                 actor_hidden=(32, 16), progress=False, out=str(tmp_path / "o"))


def test_one_config_tree_serves_the_three_clis_and_toml(tmp_path):
    """The LLM and demonstration options are one subtree (TrainConfig.dg): the main job, the
    sweep and the demos CLI take the same flags, a TOML file takes them flat or as a [dg]
    table, and a run directory's config.toml reads back to the same config."""
    from leed_jax.config import DemoOptions, LLMOptions, dump_config, load_config
    from leed_jax.dg.cli import _parser as demos_parser
    from leed_jax.dg.generate import DemoConfig
    from leed_jax.dg.llm import LLMConfig
    from leed_jax.sweep import build_parser as sweep_parser

    file = tmp_path / "c.toml"
    file.write_text('model = "openai/x"\n[dg]\ntimeout = 30\nrounds = 2\n')
    llm = ["--api-base", "http://127.0.0.1:9/v1", "--max-retries", "1", "--llm-granularity",
           "next-hop", "--no-coordinate"]
    config, _ = resolve_config(["--config", str(file), *llm, "--out", str(tmp_path / "o")])
    want = DemoOptions(model="openai/x", timeout=30.0, rounds=2, api_base="http://127.0.0.1:9/v1",
                       max_retries=1, granularity="next-hop", coordinate=False)
    assert config.dg == want and config.model == "openai/x"
    (tmp_path / "o.toml").write_text(dump_config(config))
    assert load_config(tmp_path / "o.toml") == config
    # The sweep: the same flags; its seeds default is the config's (no second default).
    swept = vars(sweep_parser().parse_args(["--out", "s", "--timeout", "30", "--lr", "0.01"]))
    assert swept["timeout"] == 30.0 and swept["lr"] == 0.01 and "seeds" not in swept
    # The demos CLI: the same flags, into the DG's own config, whose defaults are inherited.
    given = vars(demos_parser().parse_args(["--scenario", "x", *llm]))
    assert {k: given[k] for k in ("api_base", "max_retries", "granularity", "coordinate")} == {
        "api_base": "http://127.0.0.1:9/v1", "max_retries": 1, "granularity": "next-hop",
        "coordinate": False}
    assert "timeout" not in given and DemoConfig(scenario="x", out=tmp_path).timeout is None
    assert LLMConfig(model="m").max_retries == LLMOptions().max_retries == DemoOptions().max_retries


def test_default_run_directory_is_named_after_scenario_and_algo():
    config, _ = resolve_config(["--algo", "bc"])
    assert config.out.startswith("runs/traffic-grid-bc-")


@pytest.mark.parametrize(
    "argv, needles",
    [
        (["--algo", "sac"], ["'algo'", "leed, ippo, mappo, bc", "'sac'"]),
        (["--lr", "-1"], ["'lr'", "> 0"]),
        (["--gamma", "1.5"], ["'gamma'", "[0, 1]"]),
        (["--num-minibatches", "3", "--num-envs", "2", "--num-steps", "8"], ["num_minibatches"]),
        (["--total-steps", "many"], ["--total-steps", "'many'"]),
        (["--bogus"], ["--bogus"]),
        (["--timeout", "nan"], ["'timeout'", "> 0", "nan"]),
        (["--llm-granularity", "word"], ["'granularity'", "next-hop", "'word'"]),
        (["--scenario", "no-such-scenario"], ["no-such-scenario"]),
    ],
)
def test_bad_input_is_one_line_with_exit_status_2(capsys, argv, needles):
    _error(capsys, argv, *needles)


def test_a_config_file_with_an_unknown_key_is_refused(capsys, tmp_path):
    file = tmp_path / "c.toml"
    file.write_text("learning_rate = 0.1\n")
    _error(capsys, ["--config", str(file)], "learning_rate", str(file))


def test_a_demo_buffer_that_does_not_fit_is_refused(capsys, tmp_path, tiny):
    from leed_jax.dg.buffer import DemoBuffer, save_demos
    from leed_jax.envs.registry import make_env

    spec = make_env(str(tiny)).spec
    n, m, a = spec.num_agents + 1, 4, spec.num_actions  # one agent too many
    buf = DemoBuffer(
        obs=np.zeros((n, m, spec.obs_dim), np.float32), action=np.zeros((n, m), np.int32),
        avail=np.ones((n, m, a), bool), valid=np.ones((n, m), bool),
        agent_return=np.zeros(n, np.float32),
    )
    path = save_demos(tmp_path / "demos", buf, {"scenario": {"name": "x", "family": "traffic"},
                                                "source": "planner"})
    _error(capsys, ["--scenario", str(tiny), "--demos", str(path), "--out", str(tmp_path / "o")],
           "num_agents 7 in the buffer vs 6")


def test_resume_needs_a_checkpoint(capsys, tmp_path):
    _error(capsys, ["--resume", str(tmp_path)], "no run to resume")
    (tmp_path / "config.toml").write_text('algo = "ippo"\n')
    _error(capsys, ["--resume", str(tmp_path)], "no checkpoint")


def test_main_job_end_to_end_on_a_tiny_scenario(tmp_path, tiny):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "leed_jax.run", "--scenario", str(tiny), "--total-steps", "512",
           "--num-envs", "4", "--num-steps", "16", "--num-minibatches", "2", "--update-epochs",
           "2", "--log-every", "2", "--eval-envs", "2", "--compare", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "demonstrations: the built-in planner (no LLM configured)" in proc.stderr
    for name in ("config.toml", "metrics.jsonl", "summary.json", "learning_curve.png",
                 "demos/meta.json", "compare-ippo/summary.json"):
        assert (out / name).is_file(), name
    assert any((out / "checkpoints").iterdir())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["algo"] == "leed" and summary["num_agents"] == 6
    assert summary["env_steps"] == 512
    for key in ("wall_s", "env_steps_per_s", "final_return", "mean_travel_time",
                "arrival_rate"):
        assert isinstance(summary[key], float), key
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    # Line 0: the warm start; its critic warm-up (4 rollouts of 64 steps) takes half of this
    # tiny budget, so 4 updates remain.
    assert [r["update"] for r in lines] == [0, 2, 4]
    assert {"env_steps", "wall_s", "return", "expert_weight", "loss", "mean_travel_time",
            "arrival_rate"} <= set(lines[-1])
    resolved, _ = resolve_config(["--config", str(out / "config.toml")])
    assert resolved.demos == str(out / "demos") and resolved.scenario == str(tiny)
    # the table: the trained policy, IPPO on the same budget, and the demonstrations
    for row in ("LEED", "IPPO", "demonstrations (planner)"):
        assert row in proc.stdout, proc.stdout
