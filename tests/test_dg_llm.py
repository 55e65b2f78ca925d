"""The LLM client over real HTTP: litellm's OpenAI-compatible provider talking to a scripted
server on 127.0.0.1 — valid replies, stalls past the timeout, 429 then success, 5xx, 401,
garbage bodies — plus the reply cache (a hit makes zero requests) and key hygiene."""

from __future__ import annotations

import time

import pytest
from _llm_server import Garbage, Reply, ScriptedLLMServer, Stall, Status

from leed_jax.dg.errors import LLMError
from leed_jax.dg.llm import LLMClient, LLMConfig, redact, safe_api_base

SECRET = "sk-leed-test-SECRET-0123456789"
PLAN = "[MoveTo, Landmark_1, Agent_0]\n[MoveTo, Landmark_0, Agent_1]"


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("LEED_LLM_API_KEY", SECRET)


def _client(srv, tmp_path, **kw):
    cfg = {"model": "openai/tiny-test", "api_base": srv.url, "timeout": 2.0, "max_retries": 2,
               "backoff_base": 0.01, "concurrency": 2, "cache_dir": tmp_path / "cache"}
    cfg.update(kw)
    return LLMClient(LLMConfig(**cfg))


def _msgs(i=0):
    return [{"role": "system", "content": "plan"}, {"role": "user", "content": f"request {i}"}]


def _files_text(root):
    return "".join(p.read_text() for p in root.rglob("*") if p.is_file())


def test_valid_reply_then_cache_hit_makes_zero_requests(tmp_path):
    with ScriptedLLMServer([Reply(PLAN)]) as srv:
        client = _client(srv, tmp_path)
        (reply,) = client.complete([_msgs()])
        assert reply.text == PLAN and not reply.cached
        assert srv.count == 1
        assert srv.bodies[0]["messages"][1]["content"] == "request 0"
        assert srv.headers[0]["Authorization"] == f"Bearer {SECRET}"  # the key is used ...
        again = _client(srv, tmp_path)
        (hit,) = again.complete([_msgs()])
        assert hit.text == PLAN and hit.cached
        assert srv.count == 1 and again.stats.requests == 0 and again.stats.cache_hits == 1
    cached = _files_text(tmp_path / "cache")
    assert PLAN.splitlines()[0] in cached
    assert SECRET not in cached and "127.0.0.1" not in cached  # ... but never stored


def test_cache_key_covers_model_messages_and_sampling(tmp_path):
    with ScriptedLLMServer([Reply(PLAN)]) as srv:
        _client(srv, tmp_path).complete([_msgs()])
        _client(srv, tmp_path, temperature=0.7).complete([_msgs()])
        _client(srv, tmp_path, model="openai/other").complete([_msgs()])
        _client(srv, tmp_path).complete([_msgs(1)])
        assert srv.count == 4


def test_rate_limit_then_success_is_retried(tmp_path):
    with ScriptedLLMServer([Status(429, "slow down"), Reply(PLAN)]) as srv:
        client = _client(srv, tmp_path)
        (reply,) = client.complete([_msgs()])
        assert reply.text == PLAN
        assert srv.count == 2 and client.stats.retries == 1


def test_stall_past_timeout_retries_then_names_the_provider(tmp_path):
    # A server that has answered before gets one retry after a timeout ...
    with ScriptedLLMServer(lambda i, body: Reply(PLAN) if i == 0 else Stall(10.0)) as srv:
        client = _client(srv, tmp_path, timeout=0.5, max_retries=3)
        client.complete([_msgs()])
        t0 = time.perf_counter()
        with pytest.raises(LLMError) as e:
            client.complete([_msgs(1)])
        assert time.perf_counter() - t0 < 5
        assert srv.count == 3  # first answer, then a timed-out attempt + one retry
    msg = str(e.value)
    assert "'openai'" in msg and "openai/tiny-test" in msg and "timed out 2 time(s)" in msg
    # ... one that never answered gets none (see test_dg_llm_modes for the hanging server).
    assert "--timeout" in msg and "\n" not in msg


def test_server_errors_exhaust_retries(tmp_path):
    with ScriptedLLMServer([Status(500), Status(503), Status(502)]) as srv:
        with pytest.raises(LLMError, match=r"server error \(50\d\) 3 time\(s\)"):
            _client(srv, tmp_path).complete([_msgs()])
        assert srv.count == 3
    with ScriptedLLMServer([Garbage()]) as srv, pytest.raises(LLMError):  # HTTP 200, HTML body
        _client(srv, tmp_path, max_retries=0).complete([_msgs()])


def test_auth_refusal_is_not_retried_and_hides_the_key(tmp_path):
    with ScriptedLLMServer([Status(401, f"bad key {SECRET}")]) as srv:
        with pytest.raises(LLMError) as e:
            _client(srv, tmp_path).complete([_msgs()])
        assert srv.count == 1
    assert "401" in str(e.value) and "LEED_LLM_API_KEY" in str(e.value)
    assert SECRET not in str(e.value)


def test_failed_run_resumes_from_the_cache(tmp_path):
    broken = {"on": True}

    def flaky(index, body):
        if broken["on"] and body["messages"][1]["content"] == "request 2":
            return Status(500)
        return Reply(PLAN)

    batch = [_msgs(i) for i in range(4)]
    with ScriptedLLMServer(flaky) as srv:
        with pytest.raises(LLMError):
            _client(srv, tmp_path, concurrency=1, max_retries=0).complete(batch)
        asked_first = srv.count
        broken["on"] = False
        client = _client(srv, tmp_path)
        replies = client.complete(batch)
        assert [r.text for r in replies] == [PLAN] * 4
        # Everything answered before the failure came from the cache.
        assert srv.count - asked_first == 4 - (asked_first - 1)
        assert client.stats.cache_hits == asked_first - 1
        assert srv.bodies[-1]["messages"][1]["content"] in ("request 2", "request 3")


def test_concurrent_requests_keep_their_order(tmp_path):
    def echo(index, body):
        return Reply("echo " + body["messages"][1]["content"])

    with ScriptedLLMServer(echo) as srv:
        replies = _client(srv, tmp_path, concurrency=4).complete([_msgs(i) for i in range(8)])
    assert [r.text for r in replies] == [f"echo request {i}" for i in range(8)]


def test_redaction_helpers(monkeypatch):
    monkeypatch.setenv("SOME_PROVIDER_API_KEY", "abcdef123456")
    assert redact("key=abcdef123456 ok") == "key=*** ok"
    assert safe_api_base("http://user:pw@host:8000/v1?token=x") == "http://host:8000/v1"
