"""LLM client of the DG stage: litellm, bounded concurrency, retries, on-disk cache.

* Any litellm provider: ``model`` as litellm spells it (``openai/gpt-4o-mini``,
  ``ollama_chat/llama3.1``, ``hosted_vllm/...``), ``api_base`` for local servers.
* API keys come from the environment only: the provider's own variable (``OPENAI_API_KEY``,
  ...) or ``LEED_LLM_API_KEY``; no key is written to a file or a log, and provider error texts
  are scrubbed of key values before they are shown.
* Reply text is scrubbed of every known secret value (the provider's key variables and
  ``LEED_LLM_API_KEY``) the moment it arrives, before it is cached, reported or logged: a
  server that echoes the request's ``Authorization`` header cannot put the key on disk.
* Our own retry loop (litellm's and the OpenAI SDK's retries are switched off, so the behaviour
  is explicit and testable), with exponential backoff ``min(backoff_max, backoff_base ·
  2^attempt)``. Failures are classified (:func:`classify`):

  ============  =====================================  ========  ==========================
  kind          what                                   retried   after the last attempt
  ============  =====================================  ========  ==========================
  unreachable   connection refused / DNS               once      fatal: the run stops
  auth          401, 403, missing credentials          no        fatal
  not found     404 (model or endpoint)                no        fatal
  timeout       no answer within the timeout           once      this request fails (fatal
                                                                 if nothing was answered yet)
  bad reply     HTTP 200 that is not a completion      once      this request fails
                (not JSON, no or empty ``choices``)
  rejected      400, 422 (prompt too long, ...)        no        this request fails
  server        408, 409, 429, 5xx                     yes       this request fails
  ============  =====================================  ========  ==========================

  A timed-out request is retried once only, and not at all while the provider has answered
  nothing yet (a server that hangs is given up after one timeout, which scales with the
  request — :func:`auto_timeout` — instead of five fixed ones): a single-slot local server is
  usually still busy with the abandoned request, so more retries only queue behind it. ``complete(..., tolerate=True)`` turns a
  failed request into an :class:`LLMReply` with ``error`` set (the caller falls back to the
  planner for that request and counts it); a fatal failure, or a provider whose first
  :data:`FAIL_FAST_AFTER` requests all failed with no reply ever, raises :class:`LLMError`
  (one line naming the provider and what to check).
* Structured output (``structured``): ``"json_schema"`` (OpenAI ``response_format``; vLLM,
  llama.cpp's own server, Ollama through litellm), ``"json_object"`` (``{"type":
  "json_object", "schema": ...}``, llama-cpp-python's server), ``"off"`` (text), or
  ``"auto"``: litellm's ``supports_response_schema`` or a local ``api_base`` make the first
  request a probe — ``json_schema``, then ``json_object``, then text, each tried once if the
  server rejects the one before. :attr:`LLMClient.mode` is what was used (in the DG report).
* Every reply is cached on disk the moment it arrives (``leed_jax.dg.cache``): a rerun makes
  no calls for those, and a run that failed half-way resumes where it stopped.

litellm is imported on first use only (it costs seconds), with
``LITELLM_LOCAL_MODEL_COST_MAP=True`` so that it does not fetch its price list.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import random
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from leed_jax.dg.cache import ResponseCache, cache_key
from leed_jax.config import LLMOptions
from leed_jax.dg.errors import DGError, LLMError

#: Replies are stored and parsed up to this many characters.
MAX_STORED_CHARS = 2_000_000

_SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD)", re.IGNORECASE)

#: A provider whose first this-many finished requests all failed (no reply at all, cached
#: ones included) is taken to fail every request: the run stops instead of falling back
#: chunk by chunk for minutes.
FAIL_FAST_AFTER = 2

#: Structured-output modes, in the order ``"auto"`` probes them.
STRUCTURED_MODES = ("json_schema", "json_object")

#: Rates a slow local server reaches (tokens/s) — the automatic timeout assumes them, so that
#: a CPU-only llama.cpp server finishes in time. Measured here for SmolLM2-135M
#: (llama-cpp-python, 2 cores shared with other work, load average 8–9): 19–30 prompt
#: tokens/s, and 1–1.3 completion tokens/s under a JSON-schema grammar (85 without one on an
#: idle machine). A generous timeout costs nothing when the server is fast; a short one costs
#: the whole request, which a single-slot server keeps computing after the client gave up
#: (measured: two 135 s timeouts in a row, both requests then answered 200 to nobody).
SLOW_PROMPT_TPS = 15.0
SLOW_COMPLETION_TPS = 1.0
TIMEOUT_FLOOR = 60.0  # seconds on top, for queueing and model load


def auto_timeout(prompt_chars: int, max_tokens: int | None) -> float:
    """The request's timeout when none is set: it scales with the prompt (≈ 4 characters a
    token) and the completion budget at :data:`SLOW_PROMPT_TPS` / :data:`SLOW_COMPLETION_TPS`."""
    completion = max_tokens if max_tokens else 4096
    return TIMEOUT_FLOOR + prompt_chars / 4.0 / SLOW_PROMPT_TPS + completion / SLOW_COMPLETION_TPS


def is_local(api_base: str | None) -> bool:
    """Whether ``api_base`` points at this machine (a local server, usually one slot)."""
    if not api_base:
        return False
    host = (urlsplit(api_base).hostname or "").lower()
    return host in ("localhost", "::1", "0.0.0.0") or host.startswith("127.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LLMConfig(LLMOptions):
    """How to reach the model. No field ever holds an API key.

    The user-facing options (``model``, ``api_base``, ``timeout`` — None: :func:`auto_timeout`
    of each request —, ``max_retries`` — timeouts at most one —, ``concurrency`` — None: 1 for
    a local ``api_base``, 4 otherwise —, ``temperature``, ``max_tokens`` — None: each request's
    own budget —, ``structured``, ``cache_dir``) are inherited from
    ``leed_jax.config.LLMOptions``, where their defaults are declared once; these are the
    library's extras."""

    top_p: float | None = None
    seed: int | None = None
    backoff_base: float = 1.0  # seconds
    backoff_max: float = 30.0
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # more litellm kwargs

    def __post_init__(self):
        if not self.model:
            raise DGError("LLMConfig needs a model (a litellm model name)")

    def sampling(self) -> dict[str, Any]:
        """The parameters that change the reply: part of the cache key (with the API base)."""
        params = {"temperature": self.temperature, "top_p": self.top_p,
                  "max_tokens": self.max_tokens, "seed": self.seed,
                  "api_base": safe_api_base(self.api_base)}
        params.update({k: v for k, v in self.extra.items() if isinstance(v, (str, int, float))})
        return {k: v for k, v in params.items() if v is not None}

    def workers(self) -> int:
        if self.concurrency is not None:
            return max(1, int(self.concurrency))
        return 1 if is_local(self.api_base) else 4


@dataclasses.dataclass(frozen=True)
class LLMReply:
    text: str
    finish_reason: str | None
    cached: bool
    error: str | None = None  # set when the request failed after its retries (tolerate=True)
    mode: str = "text"  # the output mode the reply was asked in


@dataclasses.dataclass(frozen=True)
class Ask:
    """What one request asks beyond its messages: a completion budget, stop sequences and
    the JSON schema of its answer (used when the provider offers structured output)."""

    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    schema: Mapping[str, Any] | None = None


@dataclasses.dataclass
class LLMStats:
    requests: int = 0  # HTTP requests sent (attempts, including retries)
    calls: int = 0  # prompts answered by the provider
    cache_hits: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    failed_requests: int = 0  # prompts that failed after their retries (planner fallback)
    failures_by_kind: dict = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def secret_values() -> list[str]:
    """Every known secret value: the environment's key/token/secret/password variables
    (``OPENAI_API_KEY``, ``LEED_LLM_API_KEY``, ...), longest first."""
    vals = {v for k, v in os.environ.items() if v and len(v) >= 6 and _SECRET_NAME.search(k)}
    return sorted(vals, key=len, reverse=True)


def redact(text: str) -> str:
    """Replace the value of every secret-looking environment variable in ``text``."""
    for value in secret_values():
        if value in text:
            text = text.replace(value, "***")
    return text


def safe_api_base(api_base: str | None) -> str | None:
    """``api_base`` without user:password, query or fragment (fit for files and logs)."""
    if not api_base:
        return api_base
    parts = urlsplit(api_base)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


_litellm_lock = threading.Lock()


def _litellm():
    with _litellm_lock:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        import litellm

        litellm.telemetry = False
        litellm.suppress_debug_info = True
        return litellm


def provider_of(model: str) -> str:
    if "/" in model:
        return model.split("/", 1)[0]
    try:
        return _litellm().get_llm_provider(model)[1]
    except Exception:  # noqa: BLE001 — litellm raises many types for an unknown model
        return "unknown provider"


def _status(exc: BaseException) -> int | None:
    code = getattr(exc, "status_code", None)
    try:
        return int(code) if code is not None else None
    except (TypeError, ValueError):
        return None


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _credentials_missing(exc: BaseException) -> bool:
    text = str(exc)[:2000].lower()
    return "missing credentials" in text or "api_key client option must be set" in text


class BadReply(Exception):
    """HTTP 200 whose body is not a usable chat completion."""


def classify(exc: BaseException) -> str:
    """One of unreachable, auth, not found, timeout, bad reply, rejected, server, other."""
    import litellm

    names = {type(e).__name__ for e in _chain(exc)}
    if isinstance(exc, BadReply):
        return "bad reply"
    if _credentials_missing(exc):
        return "auth"
    if isinstance(exc, (litellm.Timeout, TimeoutError)) or \
            names & {"Timeout", "APITimeoutError", "ReadTimeout", "TimeoutException"}:
        return "timeout"
    # litellm reports a refused connection as InternalServerError (500): look at the cause.
    if names & {"ConnectError", "ConnectionRefusedError", "APIConnectionError"} or \
            isinstance(exc, ConnectionError):
        return "unreachable"
    text = str(exc)[:3000]
    if "Empty or invalid response" in text or "'choices'" in text or \
            "Invalid response object" in text:
        return "bad reply"
    code = _status(exc)
    if code in (401, 403):
        return "auth"
    if code == 404:
        return "not found"
    if code in (400, 413, 422):
        return "rejected"
    if code is not None and (code in (408, 409, 429) or code >= 500):
        return "server"
    if isinstance(exc, litellm.APIConnectionError):
        return "unreachable"
    return "other"


FATAL = ("unreachable", "auth", "not found")
_MAX_RETRIES = {"unreachable": 1, "timeout": 1, "bad reply": 1, "server": None,
                "auth": 0, "not found": 0, "rejected": 0, "other": 0}


def _retryable(exc: BaseException) -> bool:
    return _MAX_RETRIES[classify(exc)] != 0


def _advice(exc: BaseException, cfg: LLMConfig, attempts: int, timeout: float | None = None) -> str:
    where = f"provider {provider_of(cfg.model)!r} (model {cfg.model!r}"
    where += f" at {safe_api_base(cfg.api_base)})" if cfg.api_base else ")"
    kind = classify(exc)
    code = _status(exc)
    if kind == "timeout":
        t = timeout if timeout is not None else cfg.timeout
        what = (f"timed out {attempts} time(s) (timeout {t:g} s): check that the "
                f"server is up and not overloaded, or raise --timeout")
    elif kind == "unreachable":
        what = (f"could not be reached after {attempts} attempt(s): check --api-base and "
                f"that the server is running")
    elif kind == "bad reply":
        what = (f"answered HTTP 200 with something that is not a chat completion (not JSON, "
                f"or no choices) {attempts} time(s): check that --api-base is the server's "
                f"OpenAI-compatible /v1 URL")
    elif kind == "auth" and code != 403:
        what = ("refused the request (401 unauthorized): check the API key in the "
                "provider's environment variable (e.g. OPENAI_API_KEY) or LEED_LLM_API_KEY")
    elif code == 403:
        what = "refused the request (403 forbidden): check the key's permissions for this model"
    elif code == 404:
        what = "does not know this model (404): check --model and --api-base"
    elif code == 429:
        what = (f"kept rate-limiting (429) after {attempts} attempt(s): lower --concurrency, "
                f"check the account's quota, or retry later (finished replies are cached)")
    elif code is not None and code >= 500:
        what = (f"answered with a server error ({code}) {attempts} time(s): check the server's "
                f"logs or retry later (finished replies are cached)")
    elif kind == "rejected":
        what = f"rejected the request ({code}): check the model name and the prompt size"
    else:
        what = f"failed after {attempts} attempt(s)"
    detail = redact(" ".join(str(exc).split()))[:300]
    return f"LLM {where} {what}. [{type(exc).__name__}: {detail}]"


class _RequestFailed(Exception):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def _response_format(mode: str, schema: Mapping[str, Any]) -> dict:
    if mode == "json_schema":
        return {"type": "json_schema",
                "json_schema": {"name": "plan", "schema": dict(schema), "strict": False}}
    return {"type": "json_object", "schema": dict(schema)}


class LLMClient:
    """Sends chat requests through litellm with retries and a reply cache.

    ``complete(message_lists, on_reply)`` answers every request (cache first, then the
    provider with at most ``concurrency`` requests in flight) and returns the replies in order;
    ``on_reply(index, reply)`` is called from the host thread as each one is ready.
    """

    def __init__(self, config: LLMConfig):
        if config.structured not in ("auto", "off") + STRUCTURED_MODES:
            raise ValueError(f"structured must be auto, off, json_schema or json_object, "
                             f"got {config.structured!r}")
        self.config = config
        self.cache = ResponseCache(config.cache_dir)
        self.stats = LLMStats()
        self._lock = threading.Lock()
        self._mode_lock = threading.Lock()
        # The output mode: fixed unless "auto", which settles it on its first request.
        self.mode: str | None = {"off": "text", "auto": None}.get(config.structured,
                                                                    config.structured)
        self.probe: list[str] = []  # what the auto probe tried, e.g. "json_schema: rejected"
        self._rejected: set[str] = set()  # formats the server rejected (not tried again)
        self.ignored_schema = 0  # structured replies that were not JSON (schema ignored)
        self._answered = 0  # requests answered (provider or cache)
        self._failed = 0
        self.first_error: str | None = None  # the advice line of the first failed request
        self._halt = threading.Event()  # set by a fatal failure: queued requests are skipped

    def _candidates(self) -> list[str]:
        """Modes "auto" tries on its first request, best first."""
        cfg = self.config
        try:
            known = bool(_litellm().supports_response_schema(model=cfg.model))
        except Exception:  # noqa: BLE001 — unknown models raise
            known = False
        return [*STRUCTURED_MODES, "text"] if known or cfg.api_base else ["text"]

    def all_failed(self) -> bool:
        """No request was answered (by the provider or the cache) and at least one failed."""
        return self._answered == 0 and self._failed > 0

    def describe_mode(self) -> str:
        mode = self.mode or "text"
        return mode if mode == "text" else f"structured ({mode})"

    # -- one request -------------------------------------------------------------------------
    def _kwargs(self, ask: Ask, mode: str, timeout: float) -> dict[str, Any]:
        cfg = self.config
        kw: dict[str, Any] = {"model": cfg.model, "timeout": timeout, "num_retries": 0,
                              "max_retries": 0, "drop_params": True}
        kw.update({k: v for k, v in cfg.sampling().items() if k != "api_base"})
        if ask.max_tokens and not cfg.max_tokens:
            kw["max_tokens"] = int(ask.max_tokens)
        if ask.stop and mode == "text":
            kw["stop"] = list(ask.stop)
        if ask.schema is not None and mode != "text":
            kw["response_format"] = _response_format(mode, ask.schema)
        kw.update(cfg.extra)
        if cfg.api_base:
            kw["api_base"] = cfg.api_base
        key = os.environ.get("LEED_LLM_API_KEY")
        if key:
            kw["api_key"] = key
        elif cfg.api_base and cfg.model.startswith("openai/") and \
                not os.environ.get("OPENAI_API_KEY"):
            kw["api_key"] = "no-key"  # local OpenAI-compatible servers ignore it
        return kw

    def _timeout(self, messages: list[dict], ask: Ask) -> float:
        if self.config.timeout is not None:
            return float(self.config.timeout)
        chars = sum(len(str(m.get("content", ""))) for m in messages)
        return auto_timeout(chars, self.config.max_tokens or ask.max_tokens)

    def _attempts(self, messages: list[dict], ask: Ask, mode: str, probing: bool = False) -> Any:
        """One request with its retries; raises _RequestFailed after the last one. While
        ``probing`` a format, a rejection or server error is not retried (the next format is
        tried instead)."""
        litellm = _litellm()
        cfg = self.config
        timeout = self._timeout(messages, ask)
        attempt = 0
        while True:
            with self._lock:
                self.stats.requests += 1
            try:
                resp = litellm.completion(messages=messages, **self._kwargs(ask, mode, timeout))
                choices = getattr(resp, "choices", None)
                if not choices:  # HTTP 200 with "choices": [] — litellm lets it through
                    raise BadReply("the reply has an empty 'choices' list")
                return resp
            except Exception as exc:  # noqa: BLE001 — classified right below
                kind = classify(exc)
                limit = _MAX_RETRIES[kind]
                limit = cfg.max_retries if limit is None else min(limit, cfg.max_retries)
                if probing and kind in ("rejected", "server", "other"):
                    limit = 0
                if kind == "timeout" and self._answered == 0:
                    limit = 0
                if attempt >= limit:
                    raise _RequestFailed(kind, _advice(exc, cfg, attempt + 1, timeout)) \
                        from None
                delay = min(cfg.backoff_max, cfg.backoff_base * 2.0**attempt)
                time.sleep(delay * (1.0 + 0.1 * random.random()))
                attempt += 1
                with self._lock:
                    self.stats.retries += 1

    def _call(self, messages: list[dict], ask: Ask) -> LLMReply:
        mode = self.mode
        if mode is None:  # "auto": the first request settles the mode (the others wait)
            with self._mode_lock:
                mode = self.mode
                if mode is None:
                    return self._probe(messages, ask)
        return self._finish(self._attempts(messages, ask, mode), mode)

    def _probe(self, messages: list[dict], ask: Ask) -> LLMReply:
        candidates = self._candidates() if ask.schema is not None else ["text"]
        candidates = [m for m in candidates if m not in self._rejected]
        for i, mode in enumerate(candidates):
            try:
                resp = self._attempts(messages, ask, mode, probing=i + 1 < len(candidates))
            except _RequestFailed as e:
                # A server that rejects the format answers 400/422 (or 500, llama-cpp-python's
                # validation error): try the next one; anything else is the server's state.
                if e.kind in ("rejected", "server", "other") and i + 1 < len(candidates):
                    self.probe.append(f"{mode}: {e.kind}")
                    self._rejected.add(mode)
                    continue
                raise
            self.mode = mode
            if mode != "text":
                self.probe.append(f"{mode}: accepted")
            return self._finish(resp, mode)
        raise AssertionError("unreachable")  # the last candidate returns or raises

    def _finish(self, resp: Any, mode: str) -> LLMReply:
        choice = resp.choices[0]
        msg = getattr(choice, "message", None)
        text = getattr(msg, "content", None) or ""
        if not isinstance(text, str):
            text = str(text)
        text = redact(text)  # before anything stores, reports or logs it
        usage = getattr(resp, "usage", None)
        with self._lock:
            self.stats.calls += 1
            if usage is not None:
                self.stats.prompt_tokens += int(getattr(usage, "prompt_tokens", 0) or 0)
                self.stats.completion_tokens += int(getattr(usage, "completion_tokens", 0) or 0)
            if mode != "text" and not _looks_like_json(text):
                self.ignored_schema += 1
        finish = getattr(choice, "finish_reason", None)
        if len(text) > MAX_STORED_CHARS:  # a runaway reply: keep the head, say so
            text, finish = text[:MAX_STORED_CHARS], "oversized"
        return LLMReply(text, finish, False, mode=mode)

    # -- many requests -----------------------------------------------------------------------
    def _key(self, messages: list[dict], ask: Ask, mode: str) -> str:
        params = dict(self.config.sampling())
        if ask.max_tokens and not self.config.max_tokens:
            params["max_tokens"] = int(ask.max_tokens)
        if mode == "text":
            if ask.stop:
                params["stop"] = list(ask.stop)
        elif ask.schema is not None:
            params["response_format"] = _response_format(mode, ask.schema)
        return cache_key(self.config.model, messages, params)

    def _lookup(self, messages: list[dict], ask: Ask) -> LLMReply | None:
        modes = [self.mode] if self.mode else [*STRUCTURED_MODES, "text"]
        for mode in modes:
            hit = self.cache.get(self._key(messages, ask, mode))
            if hit is not None and isinstance(hit.get("text"), str):
                if self.mode is None and mode != "text" and ask.schema is not None:
                    self.mode = mode  # a rerun keeps the mode the first run settled
                return LLMReply(redact(hit["text"]), hit.get("finish_reason"), True, mode=mode)
        return None

    def complete(
        self,
        message_lists: Sequence[list[dict]],
        on_reply: Callable[[int, LLMReply], None] | None = None,
        asks: Sequence[Ask] | None = None,
        tolerate: bool = False,
    ) -> list[LLMReply]:
        """Answer every request, in order. ``asks[i]`` says what request ``i`` asks for (budget,
        stop, schema). With ``tolerate``, a request that fails after its retries comes back as
        an :class:`LLMReply` with ``error`` set; without it, the first failure raises. A fatal
        failure (unreachable, auth, unknown model) or a provider that failed its first
        :data:`FAIL_FAST_AFTER` requests with no reply ever raises :class:`LLMError` anyway."""
        cfg = self.config
        asks = list(asks) if asks is not None else [Ask()] * len(message_lists)
        replies: list[LLMReply | None] = [None] * len(message_lists)
        todo = []
        for i, msgs in enumerate(message_lists):
            hit = self._lookup(msgs, asks[i])
            if hit is not None:
                replies[i] = hit
                with self._lock:
                    self.stats.cache_hits += 1
                    self._answered += 1
                if on_reply:
                    on_reply(i, hit)
            else:
                todo.append(i)
        if not todo:
            return replies  # type: ignore[return-value]
        fatal: LLMError | None = None
        self._halt.clear()
        if self.mode is None and any(asks[i].schema is not None for i in todo):
            first, todo = todo[0], todo[1:]  # the probe runs alone, the others use its mode
            fatal = self._one(first, message_lists, asks, replies, on_reply, tolerate)
        workers = max(1, min(cfg.workers(), len(todo) or 1))
        if fatal is None and todo:
            with concurrent.futures.ThreadPoolExecutor(workers,
                                                       thread_name_prefix="leed-llm") as ex:
                futures = {ex.submit(self._one, i, message_lists, asks, replies, on_reply,
                                     tolerate): i for i in todo}
                try:
                    for fut in concurrent.futures.as_completed(futures):
                        if fut.cancelled():
                            continue
                        err = fut.result()
                        if err is not None and fatal is None:
                            fatal = err
                            for f in futures:  # stop queued work; running calls finish
                                f.cancel()
                except KeyboardInterrupt:
                    for f in futures:
                        f.cancel()
                    raise
        if fatal is not None:
            raise fatal
        return replies  # type: ignore[return-value]

    def _one(self, i, message_lists, asks, replies, on_reply, tolerate) -> LLMError | None:
        """Request ``i``; stores its reply; returns the error that must stop the run, if any."""
        cfg = self.config
        if self._halt.is_set():
            return None
        try:
            reply = self._call(message_lists[i], asks[i])
        except _RequestFailed as e:
            with self._lock:
                self._failed += 1
                self.stats.failed_requests += 1
                self.stats.failures_by_kind[e.kind] = self.stats.failures_by_kind.get(e.kind,
                                                                                      0) + 1
                if self.first_error is None:
                    self.first_error = str(e)
                hopeless = self._answered == 0 and self._failed >= FAIL_FAST_AFTER
            if not tolerate or e.kind in FATAL or (e.kind == "timeout" and
                                                   self._answered == 0):
                self._halt.set()
                return LLMError(str(e))
            if hopeless:
                self._halt.set()
                return LLMError(f"the first {self._failed} LLM requests all failed, nothing "
                                f"came from the model; stopping. First failure: "
                                f"{self.first_error}")
            replies[i] = LLMReply("", "error", False, error=str(e), mode=self.mode or "text")
            if on_reply:
                on_reply(i, replies[i])
            return None
        with self._lock:
            self._answered += 1
        self.cache.put(self._key(message_lists[i], asks[i], reply.mode),
                       {"model": cfg.model, "text": reply.text,
                        "finish_reason": reply.finish_reason, "mode": reply.mode})
        replies[i] = reply
        if on_reply:
            on_reply(i, reply)
        return None


def _looks_like_json(text: str) -> bool:
    t = text.strip()
    if t.startswith("```"):
        t = t.strip("`").removeprefix("json").strip()
    try:
        json.loads(t)
    except ValueError:
        return False
    return True
