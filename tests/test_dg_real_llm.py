"""Opt-in: a real model end to end. Skipped unless LEED_TEST_LLM_MODEL is set, e.g.

    LEED_TEST_LLM_MODEL=ollama_chat/llama3.1 LEED_TEST_LLM_API_BASE=http://127.0.0.1:11434 \\
        .venv/bin/pytest tests/test_dg_real_llm.py

(API keys, if the provider needs one, come from its usual environment variable.)
"""

from __future__ import annotations

import os

import pytest

import leed_jax
from leed_jax.dg.buffer import load_demos
from leed_jax.dg.generate import DemoConfig, run_dg

MODEL = os.environ.get("LEED_TEST_LLM_MODEL")

pytestmark = [
    pytest.mark.llm,
    pytest.mark.skipif(not MODEL, reason="set LEED_TEST_LLM_MODEL to run a real model"),
]


@pytest.mark.parametrize("scenario,overrides", [("mpe-spread", {}),
                                                ("traffic-grid", {"num_agents": 10})])
def test_real_model_end_to_end(tmp_path, scenario, overrides):
    env = leed_jax.make_env(scenario, **overrides)
    cfg = DemoConfig(scenario=scenario, out=tmp_path / "d", source="llm", model=MODEL,
                     api_base=os.environ.get("LEED_TEST_LLM_API_BASE") or None,
                     rounds=2, timeout=float(os.environ.get("LEED_TEST_LLM_TIMEOUT", "300")),
                     cache_dir=tmp_path / "cache", progress=False)
    result = run_dg(cfg, env=env)
    s = result.meta["dg_report"]
    # Counts are per agent and episode (MPE records several random starts).
    expected = env.spec.num_agents * result.meta["episodes"]
    assert s["covered_by_model"] + s["fell_back_to_planner"] == expected
    assert result.meta["llm"]["calls"] >= 1
    buf = load_demos(result.path, env)
    assert buf.valid.any(axis=1).all()
    print(f"\n{MODEL} on {scenario}: {s} metrics={result.meta['metrics']}")
