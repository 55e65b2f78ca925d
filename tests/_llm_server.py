"""A scripted OpenAI-compatible chat server on 127.0.0.1, for real HTTP round trips in tests.

    with ScriptedLLMServer([Reply("..."), Status(429), Reply("...")]) as srv:
        litellm.completion(model="openai/test", api_base=srv.url, ...)
        srv.count   # requests received

Each request consumes the next action of the script (the last one repeats), or the script is a
callable ``f(index, body) -> action``. Actions: ``Reply(text)``, ``Status(code)``,
``Stall(seconds)`` (hold the connection, then answer ``Reply(text)`` — past the client's
timeout), ``Garbage()`` (HTTP 200 with a body that is not JSON), ``RawJSON(payload)`` (HTTP 200
with any JSON body, e.g. no or empty ``choices``), ``EchoHeaders(prefix)`` (a reply whose text
quotes the request's headers, ``Authorization`` included — a server that leaks the key).
``srv.max_in_flight`` is the most requests it held at once.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self


@dataclasses.dataclass(frozen=True)
class Reply:
    text: str
    finish_reason: str = "stop"


@dataclasses.dataclass(frozen=True)
class Status:
    code: int
    message: str = "scripted error"


@dataclasses.dataclass(frozen=True)
class Stall:
    seconds: float
    text: str = "[MoveTo, Landmark_0, Agent_0]"


@dataclasses.dataclass(frozen=True)
class Garbage:
    body: bytes = b"<html>definitely not json"


@dataclasses.dataclass(frozen=True)
class RawJSON:
    payload: dict


@dataclasses.dataclass(frozen=True)
class EchoHeaders:
    prefix: str = "[MoveTo, Landmark_0, Agent_0]"


Action = Reply | Status | Stall | Garbage | RawJSON | EchoHeaders


class ScriptedLLMServer:
    def __init__(self, script: Sequence[Action] | Callable[[int, dict], Action]):
        self.script = script
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._in_flight = 0
        self.max_in_flight = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {}
                if not self.path.rstrip("/").endswith("chat/completions"):
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                with server._lock:
                    index = len(server.bodies)
                    server.bodies.append(body)
                    server.headers.append(dict(self.headers))
                    server._in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server._in_flight)
                try:
                    self._answer(index, body)
                finally:
                    with server._lock:
                        server._in_flight -= 1

            def _answer(self, index: int, body: dict):
                action = server._action(index, body)
                if isinstance(action, Stall):
                    server._stop.wait(action.seconds)
                    action = Reply(action.text)
                if isinstance(action, Status):
                    return self._send(action.code, {"error": {
                        "message": action.message, "type": "scripted", "code": action.code}})
                if isinstance(action, Garbage):
                    return self._raw(200, action.body, "text/html")
                if isinstance(action, RawJSON):
                    return self._send(200, action.payload)
                if isinstance(action, EchoHeaders):
                    # The Authorization header first, inside brackets: the reader quotes the
                    # line's head in its report of a line it cannot read.
                    items = sorted(self.headers.items(), key=lambda kv: kv[0] != "Authorization")
                    quoted = "; ".join(f"{k}: {v}" for k, v in items)
                    action = Reply(f"{action.prefix}\n[{quoted}]")
                content = action.text
                return self._send(200, {
                    "id": f"chatcmpl-{index}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model", "scripted"),
                    "choices": [{
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": action.finish_reason,
                    }],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 10,
                              "total_tokens": 20},
                })

            def _send(self, code: int, payload: dict):
                self._raw(code, json.dumps(payload).encode(), "application/json")

            def _raw(self, code: int, data: bytes, ctype: str):
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout): expected in the stall case

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def _action(self, index: int, body: dict) -> Action:
        if callable(self.script):
            return self.script(index, body)
        return self.script[min(index, len(self.script) - 1)]

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.bodies)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()
