"""The main job ``python -m leed_jax.run``: config resolution, one-line errors with exit
status 2, and a short end-to-end run on a tiny scenario that writes the whole run directory."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from leed_jax.config import TrainConfig
from leed_jax.run import main, resolve_config

# The smallest traffic scenario, shipped as an example of a custom scenario file.
TINY = (pathlib.Path(__file__).parents[1] / "docs" / "examples" / "tiny-grid.toml").read_text()


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


def _fitting_demos(tmp_path, scenario, extra_agents=0):
    from leed_jax.dg.buffer import DemoBuffer, save_demos
    from leed_jax.envs.registry import make_env

    spec = make_env(str(scenario)).spec
    n, m, a = spec.num_agents + extra_agents, 4, spec.num_actions
    buf = DemoBuffer(
        obs=np.zeros((n, m, spec.obs_dim), np.float32), action=np.zeros((n, m), np.int32),
        avail=np.ones((n, m, a), bool), valid=np.ones((n, m), bool),
        agent_return=np.zeros(n, np.float32),
    )
    return save_demos(tmp_path / "demos", buf, {"scenario": {"name": "x", "family": "traffic"},
                                                "source": "planner"})


def test_the_main_job_assembles_its_run_once(tmp_path, tiny, monkeypatch):
    """From the command line to the host loop: one validation, one env, one fit check of the
    demo buffer, the default run directory named after the scenario and the method. The loop
    is stopped as a Ctrl-C would, before anything compiles."""
    import collections

    from leed_jax.dg import buffer
    from leed_jax.envs import registry
    from leed_jax.po import loop

    demos = _fitting_demos(tmp_path, tiny)
    calls = collections.Counter()

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(registry, "make_env", counted("make_env", registry.make_env))
    monkeypatch.setattr(buffer, "check_fits", counted("check_fits", buffer.check_fits))
    monkeypatch.setattr(TrainConfig, "validate", counted("validate", TrainConfig.validate))
    seen = []

    def interrupt(prepared, **kwargs):
        seen.append(prepared)
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "run_prepared", interrupt)
    monkeypatch.chdir(tmp_path)
    assert main(["--scenario", str(tiny), "--algo", "bc", "--demos", str(demos)]) == 130
    (prepared,) = seen
    assert dict(calls) == {"make_env": 1, "validate": 1, "check_fits": 1}
    out = prepared.config.out
    assert out.startswith("runs/tiny-bc-") and not prepared.resume
    assert (tmp_path / out / "config.toml").is_file()
    assert prepared.demos.obs.shape[0] == prepared.env.spec.num_agents == 6


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
        (["--warm-start-dagger-rounds", "2"], ["warm_start_dagger_rounds", "'traffic'"]),
        (["--expert-own-states", "0.5"], ["expert_own_states", "'traffic'"]),
        (["--warm-start-dagger-frac", "2"], ["'warm_start_dagger_frac'", "[0, 1]"]),
    ],
)
def test_bad_input_is_one_line_with_exit_status_2(capsys, argv, needles):
    _error(capsys, argv, *needles)


def test_a_mistyped_flag_fails_before_jax_is_imported():
    """The usage check runs before the heavy imports, so a typo costs a fraction of a second."""
    code = ("import sys; from leed_jax.{m} import main; rc = main(['--bogus', '--out', 'x']); "
            "sys.exit(rc if 'jax' not in sys.modules else 99)")
    for module in ("run", "sweep"):
        done = subprocess.run([sys.executable, "-c", code.format(m=module)], capture_output=True, text=True)
        assert done.returncode == 2, (module, done.returncode, done.stderr)
        assert done.stderr.count("\n") == 1 and "--bogus" in done.stderr


def test_a_config_file_with_an_unknown_key_is_refused(capsys, tmp_path):
    file = tmp_path / "c.toml"
    file.write_text("learning_rate = 0.1\n")
    _error(capsys, ["--config", str(file)], "learning_rate", str(file))


def test_a_demo_buffer_that_does_not_fit_is_refused(capsys, tmp_path, tiny):
    path = _fitting_demos(tmp_path, tiny, extra_agents=1)  # one agent too many
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


def test_benchmark_set_items_parse_to_config_changes():
    from leed_jax.config import UsageError, parse_set

    assert parse_set(["lr=0.001", "actor_hidden=[128,128]", "expert_schedule=qfilter", "progress=false"]) == {
        "lr": 0.001, "actor_hidden": (128, 128), "expert_schedule": "qfilter", "progress": False}
    with pytest.raises(UsageError, match="KEY=VALUE"):
        parse_set(["lr"])
    with pytest.raises(UsageError, match="'learning_rate' is not a TrainConfig field"):
        parse_set(["learning_rate=0.1"])


def _benchmark(name: str):
    import importlib.util

    path = pathlib.Path(__file__).parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_jump_start_is_judged_on_both_references():
    module = _benchmark("learning_compare")
    curve = [{"env_steps": 100, "wall_s": 10.0, "eval_return": -0.11}]
    result = {"demonstrations": {"mean_return": -0.076},
              "planner_on_eval_episodes": {"mean_return": -0.106},
              "methods": {"leed": {"warm_eval_return": -0.11, "curve": curve, "final_return": -0.1,
                                   "final_return_se": 0.0, "wall_s": 10.0}}}
    jump = module.targets(result, 300)["jump_start"]
    # 0.11 is 45 % below the demonstrations' own episodes, 3.8 % below the planner's on the
    # evaluation episodes.
    assert jump["met"] is False and jump["met_on_eval_episodes"] is True
    assert jump["planner_on_eval_episodes"] == -0.106
    del result["planner_on_eval_episodes"]  # --no-planner-reference: only the letter
    assert "met_on_eval_episodes" not in module.targets(result, 300)["jump_start"]


def test_benchmark_set_adds_to_a_presets_fields():
    module = _benchmark("learning_compare")
    from leed_jax.config import parse_set

    args = module.parse(["--preset", "mpe-spread", "--set", "expert_own_states=0.5",
                         "--set", "lr=0.002"])
    fields = parse_set(args.set)
    assert fields["warm_start_steps"] == 40000 and fields["num_envs"] == 64  # the preset's
    assert fields["expert_own_states"] == 0.5 and fields["lr"] == 0.002  # --set, winning
    assert parse_set(module.parse(["--preset", "mpe-spread"]).set)["lr"] == 0.001


def test_benchmark_expert_error_rate_curve_falls_with_the_swaps(capsys):
    from leed_jax.config import ConfigError

    module = _benchmark("expert_error_rate")
    out = module.main(["--eps", "0,0.5", "--seeds", "1", "--eval-envs", "8"])
    clean, noisy = (r["mean_return"] for r in out["rows"])
    assert noisy < clean - 1.0  # half the planner's actions swapped costs it much
    assert out["max_eps_within_5pct"] == 0.0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"] == out["rows"]
    with pytest.raises(ConfigError, match="no expert that labels"):
        module.main(["--scenario", "traffic-grid", "--eps", "0"])
    with pytest.raises(ConfigError, match="--eps"):
        module.main(["--eps", "1.5"])
