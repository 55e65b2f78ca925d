"""The DG stage's LLM modes over real HTTP (a scripted server on 127.0.0.1): structured output
with detection, next-hop decisions, coordinated chunks, whole-round refinement, chunk-level
fallback, defaults for local servers, and the faults of issue #13 (key echoed by a server,
empty or non-JSON replies, refused connections, hanging servers, the cache key's API base)."""

from __future__ import annotations

import json
import re
import socket

import numpy as np
import pytest
from _llm_server import EchoHeaders, Garbage, RawJSON, Reply, ScriptedLLMServer, Stall, Status

import leed_jax
from leed_jax.dg import cli
from leed_jax.dg.errors import LLMError
from leed_jax.dg.generate import DemoConfig, model_params, resolve_granularity, run_dg
from leed_jax.dg.llm import Ask, LLMClient, LLMConfig, auto_timeout
from leed_jax.dg.nexthop import parse_answers

SECRET = "sk-leed-test-ECHO-5555555555"


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("LEED_LLM_API_KEY", SECRET)


@pytest.fixture(scope="module")
def traffic():
    return leed_jax.make_env("traffic-grid", num_agents=20, resample=False)  # one fixed episode


def _run(env, tmp_path, srv, **kw):
    opts = {"source": "llm", "model": "openai/test-model", "api_base": srv.url,
            "cache_dir": tmp_path / "cache", "progress": False, "backoff_base": 0.01,
            "timeout": 5.0}
    opts.update(kw)
    return run_dg(DemoConfig(scenario=env.name, out=tmp_path / "demos", **opts), env=env)


def _files(root):
    return "".join(p.read_text(errors="replace") for p in root.rglob("*") if p.is_file()
                   and p.suffix in (".json", ".txt", ".jsonl", ".md"))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _schema_answer(body, pick=0):
    """Answer a structured next-hop request with option ``pick`` of every decision."""
    rf = body.get("response_format") or {}
    schema = rf.get("schema") or rf.get("json_schema", {}).get("schema") or {}
    items = schema["properties"]["answers"]["prefixItems"]
    return json.dumps({"answers": [v["enum"][min(pick, len(v["enum"]) - 1)] for v in items]})


def _client(srv, tmp_path, **kw):
    cfg = {"model": "openai/tiny-test", "api_base": srv.url, "timeout": 2.0,
           "backoff_base": 0.01, "cache_dir": tmp_path / "cache"}
    cfg.update(kw)
    return LLMClient(LLMConfig(**cfg))


MSGS = [{"role": "user", "content": "plan"}]


# ---------------------------------------------------------------------------- #13 faults
def test_key_echoed_by_the_server_never_reaches_disk(traffic, tmp_path):
    with ScriptedLLMServer([EchoHeaders("[MoveTo, Intersection_1, Agent_0]")]) as srv:
        r = _run(traffic, tmp_path, srv, granularity="route", structured="off")
        assert srv.headers[0]["Authorization"] == f"Bearer {SECRET}"  # it did echo the key
    # The echo was stored, redacted: in the cache and in the report's quote of the bad line.
    assert "Bearer ***" in _files(tmp_path / "cache")
    assert "Bearer ***" in (r.path / "dg_report.json").read_text()
    assert SECRET not in _files(tmp_path)
    assert r.meta["dg_report"]["covered_by_model"] == 1


def test_empty_choices_is_a_counted_bad_reply_not_a_crash(tmp_path):
    empty = RawJSON({"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                     "choices": []})
    with ScriptedLLMServer([empty]) as srv:
        client = _client(srv, tmp_path)
        (rep,) = client.complete([MSGS], tolerate=True)
        assert srv.count == 2  # retried once, not five times
    assert rep.error and "not a chat completion" in rep.error and "--api-base" in rep.error
    assert client.stats.failures_by_kind == {"bad reply": 1}


@pytest.mark.parametrize("body", [Garbage(), RawJSON({"hello": "world"})],
                         ids=["not-json", "no-choices"])
def test_http_200_that_is_not_a_completion_is_named_as_such(tmp_path, body):
    with ScriptedLLMServer([body]) as srv, pytest.raises(LLMError) as e:
        _client(srv, tmp_path).complete([MSGS])
    msg = str(e.value)
    assert "not a chat completion" in msg and "server error (500)" not in msg
    assert "\n" not in msg


def test_refused_connection_says_could_not_be_reached(tmp_path, traffic):
    url = f"http://127.0.0.1:{_free_port()}/v1"
    client = LLMClient(LLMConfig(model="openai/x", api_base=url, backoff_base=0.01,
                                 cache_dir=tmp_path / "c"))
    with pytest.raises(LLMError) as e:
        client.complete([MSGS], tolerate=True)  # fatal even when failures are tolerated
    msg = str(e.value)
    assert "could not be reached" in msg and "--api-base" in msg
    assert "server error" not in msg and client.stats.requests == 2  # one retry only
    code = cli.main(["--scenario", "traffic-grid", "--agents", "20", "--source", "llm",
                     "--model", "openai/x", "--api-base", url, "--out", str(tmp_path / "o"),
                     "--cache-dir", str(tmp_path / "c"), "--quiet", "--no-progress"])
    assert code == 1 and not (tmp_path / "o").exists()


def test_hanging_server_with_default_retries_gives_up_after_one_timeout(tmp_path):
    with ScriptedLLMServer([Stall(30.0)]) as srv:
        client = _client(srv, tmp_path, timeout=0.4)  # max_retries: the default (4)
        with pytest.raises(LLMError, match=r"timed out 1 time\(s\)"):
            client.complete([MSGS, MSGS + MSGS], tolerate=True)
        assert srv.count == 1  # never answered: no retry, no second request

    def slow_once(index, body):  # answers, then one request hangs, then answers again
        return Stall(30.0) if index == 1 else Reply("ok")

    with ScriptedLLMServer(slow_once) as srv:
        client = _client(srv, tmp_path / "b", timeout=0.4, structured="off")
        replies = client.complete([[{"role": "user", "content": f"r{i}"}] for i in range(3)],
                                  tolerate=True)
        assert [r.text for r in replies] == ["ok", "ok", "ok"]
        assert srv.count == 4 and client.stats.retries == 1  # retried once, then it answered
    # The default timeout scales with the request instead of a fixed 120 s.
    assert auto_timeout(400, 100) < auto_timeout(40_000, 100) < auto_timeout(40_000, 4000)
    default = LLMClient(LLMConfig(model="openai/x"))
    assert default._timeout(MSGS, Ask(max_tokens=64)) == auto_timeout(4, 64) < 600


def test_cache_key_includes_the_api_base(tmp_path):
    with ScriptedLLMServer([Reply("one")]) as a, ScriptedLLMServer([Reply("two")]) as b:
        (ra,) = _client(a, tmp_path).complete([MSGS])
        (rb,) = _client(b, tmp_path).complete([MSGS])
        (again,) = _client(a, tmp_path).complete([MSGS])
        assert (ra.text, rb.text, again.text) == ("one", "two", "one")
        assert a.count == 1 and b.count == 1 and again.cached


# ---------------------------------------------------------------------------- defaults
def test_local_servers_get_one_request_at_a_time(tmp_path):
    with ScriptedLLMServer([Stall(0.2, "ok")]) as srv:
        _client(srv, tmp_path, structured="off").complete(
            [[{"role": "user", "content": f"r{i}"}] for i in range(4)])
        assert srv.count == 4 and srv.max_in_flight == 1
    assert LLMConfig(model="x", api_base="https://api.example.com/v1").workers() == 4
    assert LLMConfig(model="x", api_base="http://localhost:8000/v1", concurrency=3).workers() == 3


def test_budget_and_stop_sized_to_the_plan(traffic, tmp_path):
    def script(index, body):
        return Reply("END")

    with ScriptedLLMServer(script) as srv:
        _run(traffic, tmp_path, srv, granularity="route", structured="off",
             agents_per_request=5)
        budgets = [b["max_tokens"] for b in srv.bodies]
        assert all(b.get("stop") == ["END"] for b in srv.bodies)
        assert "response_format" not in srv.bodies[0]
    g = traffic.network
    d = traffic.demand
    hops = [len(g.shortest_path(int(d.origin[i]), int(d.destination[i]))) - 1
            for i in range(5)]
    assert budgets[0] >= 16 * sum(hops)  # room for every instruction of the chunk ...
    assert budgets[0] <= 2000  # ... not 8192


# ---------------------------------------------------------------------------- structured
def test_structured_output_is_detected_and_reported(traffic, tmp_path):
    g = traffic.network
    d = traffic.demand

    def script(index, body):
        rf = body.get("response_format")
        if rf and rf["type"] == "json_schema":
            return Status(400, "response_format json_schema is not supported")
        agents = [int(a) for a in re.findall(r"^Agent_(\d+): from", body["messages"][1][
            "content"], re.MULTILINE)]
        plan = {f"Agent_{i}": g.shortest_path(int(d.origin[i]), int(d.destination[i]))[1:]
                for i in agents}
        return Reply(json.dumps(plan))

    with ScriptedLLMServer(script) as srv:
        r = _run(traffic, tmp_path, srv, granularity="route", agents_per_request=10)
        kinds = [(b.get("response_format") or {}).get("type") for b in srv.bodies]
    assert kinds == ["json_schema", "json_object", "json_object"]  # probe, then settled
    schema = srv.bodies[1]["response_format"]["schema"]
    assert schema["required"] == [f"Agent_{i}" for i in range(10)]
    mode = r.meta["llm_mode"]
    assert mode["output"] == "structured (json_object)"
    assert mode["probe"] == ["json_schema: rejected", "json_object: accepted"]
    s = r.meta["dg_report"]
    assert s["covered_by_model"] == 20 and s["model_unchanged"] == 20
    report = json.loads((r.path / "dg_report.json").read_text())
    assert report["llm_mode"]["output"] == "structured (json_object)"


def test_structured_reply_goes_through_the_same_validator(traffic, tmp_path):
    bad = json.dumps({"Agent_0": [999], "Agent_1": [], "Agent_2": [1, 2, 3, 4, 5, 6]})
    with ScriptedLLMServer([Reply(bad)]) as srv:
        r = _run(traffic, tmp_path, srv, granularity="route", structured="json_schema",
                 agents_per_request=20)
    s = r.meta["dg_report"]
    assert s["issues_by_kind"].get("unknown node") == 1
    assert s["fell_back_to_planner"] >= 18 and s["covered_by_model"] <= 2


# ---------------------------------------------------------------------------- next-hop
def test_next_hop_decisions_build_every_route(traffic, tmp_path):
    with ScriptedLLMServer(lambda i, body: Reply(_schema_answer(body, pick=1))) as srv:
        r = _run(traffic, tmp_path, srv, granularity="next-hop", decisions_per_request=8)
        bodies = list(srv.bodies)
    s, mode = r.meta["dg_report"], r.meta["llm_mode"]
    assert mode["granularity"] == "next-hop" and mode["output"] == "structured (json_schema)"
    assert s["covered_by_model"] == 20 and s["fell_back_to_planner"] == 0
    assert r.meta["metrics"]["arrival_rate"] == 1.0
    stats = mode["next_hop"][0]
    assert stats["decisions"] > 0 and stats["repaired"] == 0
    assert 0 < stats["chance_fastest"] <= stats["decisions"]
    assert 0 <= stats["picked_fastest"] <= stats["decisions"]
    assert stats["requests"] == len(bodies)
    # The prompt lists options with time and load; later requests see earlier decisions.
    first = bodies[0]["messages"][1]["content"]
    assert "D1: Agent_" in first and "A) Intersection_" in first and "0/" in first
    later = " ".join(b["messages"][1]["content"] for b in bodies[1:])
    assert re.search(r" [1-9]\d*/\d+ planned", later)
    # Every vehicle followed option B where it had a choice: routes differ from option A's.
    with ScriptedLLMServer(lambda i, body: Reply(_schema_answer(body, pick=0))) as srv:
        a = _run(traffic, tmp_path / "a", srv, granularity="next-hop")
    assert (a.path / "plan.txt").read_text() != (r.path / "plan.txt").read_text()


def test_next_hop_bad_answers_are_repaired_and_counted(traffic, tmp_path):
    with ScriptedLLMServer([Reply("D1: Z\nD2: A\nsomething else")]) as srv:
        r = _run(traffic, tmp_path, srv, granularity="next-hop", structured="off")
        assert all(b["stop"] == ["END"] for b in srv.bodies)
    s = r.meta["dg_report"]
    kinds = s["issues_by_kind"]
    assert kinds.get("invalid choice", 0) >= 1 and kinds.get("missing choice", 0) >= 1
    assert s["covered_by_model"] == 20 and s["repaired"] >= 1
    assert r.meta["metrics"]["arrival_rate"] == 1.0


def test_parse_answers_text_and_json():
    assert parse_answers('D1: A\nD2 = "c"\nD2: B\nD9: A', 3) == {1: "A", 2: "C"}
    assert parse_answers('{"D1": "B", "D3": "A"}', 3) == {1: "B", 3: "A"}
    assert parse_answers('{"answers": ["B", "a", "C", "A"]}', 3) == {1: "B", 2: "A", 3: "C"}
    assert parse_answers('{"answers": ["B", "C", "A', 3) == {1: "B", 2: "C"}  # cut off


def test_granularity_default_follows_model_size():
    assert model_params("openai/smollm2-135m") == 1.35e8
    assert model_params("ollama_chat/llama3.1:70b") == 7e10
    assert resolve_granularity("auto", "traffic", "openai/smollm2-135m", None) == "next-hop"
    assert resolve_granularity("auto", "traffic", "openai/gpt-4o-mini", None) == "route"
    assert resolve_granularity("auto", "traffic", "openai/m", "http://127.0.0.1:1/v1") == \
        "next-hop"
    assert resolve_granularity("next-hop", "mpe", "openai/smollm2-135m", None) == "route"


# ---------------------------------------------------------------------------- chunks, rounds
def test_coordinated_chunks_see_earlier_loads(traffic, tmp_path):
    g = traffic.network
    d = traffic.demand

    def script(index, body):
        agents = [int(a) for a in re.findall(r"^Agent_(\d+): from", body["messages"][1][
            "content"], re.MULTILINE)]
        return Reply("\n".join(f"[MoveTo, Intersection_{v}, Agent_{i}]" for i in agents
                               for v in g.shortest_path(int(d.origin[i]),
                                                        int(d.destination[i]))[1:]))

    with ScriptedLLMServer(script) as srv:
        _run(traffic, tmp_path, srv, granularity="route", structured="off",
             agents_per_request=10)
        users = [b["messages"][1]["content"] for b in srv.bodies]
    assert "planned vehicles / capacity):\n(none)" in users[0]
    loads = users[1].split("planned vehicles / capacity):\n")[1].split("\n\n")[0]
    assert re.match(r"Intersection_\d+ -> Intersection_\d+: [1-9]\d* / \d+", loads)


def test_failed_chunk_falls_back_and_rerun_asks_only_for_it(traffic, tmp_path):
    broken = {"on": True}

    def script(index, body):
        if broken["on"] and "Agent_0: from" in body["messages"][1]["content"]:
            return Status(503)
        return Reply("[MoveTo, Intersection_1, Agent_10]")

    with ScriptedLLMServer(script) as srv:
        r = _run(traffic, tmp_path, srv, granularity="route", structured="off",
                 agents_per_request=10, max_retries=1)
        s = r.meta["dg_report"]
        assert s["fallback_reasons"].get("request failed") == 10
        assert r.meta["llm"]["failed_requests"] == 1
        n = srv.count
        broken["on"] = False
        again = _run(traffic, tmp_path, srv, granularity="route", structured="off",
                     agents_per_request=10)
        assert srv.count == n + 1 and again.meta["llm"]["cache_hits"] == 1


def test_refinement_keeps_the_best_whole_round(traffic, tmp_path):
    g = traffic.network
    d = traffic.demand
    good = "\n".join(f"[MoveTo, Intersection_{v}, Agent_{i}]" for i in range(20)
                     for v in g.shortest_path(int(d.origin[i]), int(d.destination[i]))[1:])

    def script(index, body):  # round 1: free-flow routes; round 2: one long detour each
        return Reply(good if len(body["messages"]) == 2 else "[MoveTo, Intersection_0, "
                     "Agent_0]\n[MoveTo, Intersection_35, Agent_1]")

    with ScriptedLLMServer(script) as srv:
        r = _run(traffic, tmp_path, srv, granularity="route", structured="off",
                 agents_per_request=20, rounds=3)
    rounds = [m["mean_return"] for m in r.meta["round_metrics"]]
    best = int(np.argmax(rounds)) + 1
    assert r.meta["llm_mode"]["best_round"] == [best]
    # The buffer holds that round exactly as it was simulated — nothing stitched.
    assert r.meta["metrics"] == r.meta["round_metrics"][best - 1]
    assert r.meta["dg_report"] == r.meta["round_dg_reports"][best - 1]


# ---------------------------------------------------------------------------- --model local
FAKE_SERVER = '''
import argparse, json, os
from http.server import BaseHTTPRequestHandler, HTTPServer
p = argparse.ArgumentParser()
for a in ("--model", "--host", "--port", "--n_ctx", "--n_threads"):
    p.add_argument(a)
args = p.parse_args()
assert args.host == "127.0.0.1"
open(os.environ["FAKE_PID_FILE"], "w").write(str(os.getpid()))

class H(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def _send(self, obj):
        data = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def do_GET(self):
        self._send({"data": [{"id": "fake"}]})
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._send({"id": "x", "object": "chat.completion", "created": 0, "model": "fake",
                    "choices": [{"index": 0, "finish_reason": "stop", "message": {
                        "role": "assistant", "content": '{"answers": ["A"]}'}}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1}})

HTTPServer((args.host, int(args.port)), H).serve_forever()
'''


def test_model_local_starts_and_stops_a_server_on_loopback(traffic, tmp_path, monkeypatch):
    """``--model local:PATH`` runs ``python -m llama_cpp.server`` on 127.0.0.1 for the run (a
    stand-in module here: the real one is the opt-in test's) and stops it afterwards."""
    import os
    import time

    pkg = tmp_path / "fake" / "llama_cpp"
    (pkg / "server").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "server" / "__init__.py").write_text("")
    (pkg / "server" / "__main__.py").write_text(FAKE_SERVER)
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path / "fake"))
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path / 'fake'}{os.pathsep}"
                       f"{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.setenv("FAKE_PID_FILE", str(tmp_path / "pid"))
    r = run_dg(DemoConfig(scenario="traffic-grid", out=tmp_path / "d", source="llm",
                          model=f"local:{gguf}", cache_dir=tmp_path / "c", progress=False),
               env=traffic)
    assert r.meta["model"] == "openai/tiny" and r.meta["api_base"].startswith("http://127.0.0.1:")
    mode = r.meta["llm_mode"]
    assert mode["concurrency"] == 1 and mode["granularity"] == "next-hop"
    assert r.meta["dg_report"]["covered_by_model"] == 20
    pid = int((tmp_path / "pid").read_text())
    for _ in range(50):  # stopped when the run ended
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the local server is still running")


def test_model_local_errors_are_one_line(traffic, tmp_path, monkeypatch):
    from leed_jax.dg.errors import DGError

    with pytest.raises(DGError, match="leave out --api-base"):
        run_dg(DemoConfig(scenario="x", out=tmp_path, source="llm", model="local",
                          api_base="http://127.0.0.1:1/v1"), env=traffic)
    with pytest.raises(DGError, match="no GGUF file"):
        run_dg(DemoConfig(scenario="x", out=tmp_path, source="llm",
                          model="local:/no/such.gguf"), env=traffic)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    with pytest.raises(DGError, match=r'pip install -e "\.\[local-llm\]"'):
        run_dg(DemoConfig(scenario="x", out=tmp_path, source="llm", model="local"), env=traffic)


def test_cli_summary_names_the_mode_and_rejects_bad_llm_flags(traffic, tmp_path, capsys):
    with ScriptedLLMServer(lambda i, body: Reply(_schema_answer(body))) as srv:
        r = _run(traffic, tmp_path, srv)  # the defaults against a local server
    out = "\n".join(cli.summary_lines(r.meta, r.path))
    assert "mode: next-hop, structured (json_schema) output, concurrency 1" in out
    assert "agents covered by the model: 20 / 20" in out and "0 failed requests" in out
    for flag, value in [("--timeout", "nan"), ("--timeout", "-1"), ("--concurrency", "0"),
                        ("--max-tokens", "0"), ("--decisions-per-request", "0")]:
        code = cli.main(["--scenario", "mpe-spread", "--source", "llm", "--model", "openai/x",
                         "--out", str(tmp_path / "e"), flag, value, "--quiet"])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1, (flag, err)
        assert not (tmp_path / "e").exists()
