"""LLM client of the DG stage: litellm, bounded concurrency, retries, on-disk cache.

* Any litellm provider: ``model`` as litellm spells it (``openai/gpt-4o-mini``,
  ``ollama_chat/llama3.1``, ``hosted_vllm/...``), ``api_base`` for local servers.
* API keys come from the environment only: the provider's own variable (``OPENAI_API_KEY``,
  ...) or ``LEED_LLM_API_KEY``; no key is written to a file or a log, and provider error texts
  are scrubbed of key values before they are shown.
* Our own retry loop (litellm's and the OpenAI SDK's retries are switched off, so the behaviour
  is explicit and testable): timeouts, connection errors, 408/429 and 5xx are retried with
  exponential backoff ``min(backoff_max, backoff_base · 2^attempt)``; 401/403/404/400 are not.
  After the last attempt an :class:`LLMError` names the provider and what to check.
* Every reply is cached on disk the moment it arrives (``leed_jax.dg.cache``): a rerun makes
  no calls, and a run that failed half-way resumes where it stopped.

litellm is imported on first use only (it costs seconds), with
``LITELLM_LOCAL_MODEL_COST_MAP=True`` so that it does not fetch its price list.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import random
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from leed_jax.dg.cache import ResponseCache, cache_key
from leed_jax.dg.errors import LLMError

#: Replies are stored and parsed up to this many characters.
MAX_STORED_CHARS = 2_000_000

_SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD)", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class LLMConfig:
    """How to reach the model. No field ever holds an API key."""

    model: str
    api_base: str | None = None
    temperature: float = 0.0
    top_p: float | None = None
    max_tokens: int | None = 8192
    seed: int | None = None
    timeout: float = 120.0  # seconds per request
    max_retries: int = 4  # retries after the first attempt
    backoff_base: float = 1.0  # seconds
    backoff_max: float = 30.0
    concurrency: int = 4
    cache_dir: Path | None = None
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # more litellm kwargs

    def sampling(self) -> dict[str, Any]:
        """The parameters that change the reply: part of the cache key."""
        params = {"temperature": self.temperature, "top_p": self.top_p,
                  "max_tokens": self.max_tokens, "seed": self.seed}
        params.update({k: v for k, v in self.extra.items() if isinstance(v, (str, int, float))})
        return {k: v for k, v in params.items() if v is not None}


@dataclasses.dataclass(frozen=True)
class LLMReply:
    text: str
    finish_reason: str | None
    cached: bool


@dataclasses.dataclass
class LLMStats:
    requests: int = 0  # HTTP requests sent (attempts, including retries)
    calls: int = 0  # prompts answered by the provider
    cache_hits: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def redact(text: str) -> str:
    """Replace the value of every secret-looking environment variable in ``text``."""
    for name, value in os.environ.items():
        if value and len(value) >= 6 and _SECRET_NAME.search(name) and value in text:
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


def _credentials_missing(exc: BaseException) -> bool:
    text = str(exc)[:2000].lower()
    return "missing credentials" in text or "api_key client option must be set" in text


def _retryable(exc: BaseException) -> bool:
    import litellm

    if _credentials_missing(exc):
        return False
    if isinstance(exc, (litellm.Timeout, litellm.APIConnectionError, TimeoutError,
                        ConnectionError)):
        return True
    code = _status(exc)
    return code is not None and (code in (408, 409, 429) or code >= 500)


def _advice(exc: BaseException, cfg: LLMConfig, attempts: int) -> str:
    import litellm

    where = f"provider {provider_of(cfg.model)!r} (model {cfg.model!r}"
    where += f" at {safe_api_base(cfg.api_base)})" if cfg.api_base else ")"
    code = _status(exc)
    if isinstance(exc, litellm.Timeout) or code == 408:
        what = (f"timed out {attempts} time(s) (timeout {cfg.timeout:g} s): check that the "
                f"server is up and not overloaded, or raise --timeout")
    elif isinstance(exc, litellm.APIConnectionError) and code in (None, 500) and \
            "Connection" in type(exc).__name__ + str(exc)[:200]:
        what = (f"could not be reached after {attempts} attempt(s): check --api-base and "
                f"that the server is running")
    elif code == 401 or _credentials_missing(exc):
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
    elif code == 400:
        what = "rejected the request (400): check the model name and the prompt size"
    else:
        what = f"failed after {attempts} attempt(s)"
    detail = redact(" ".join(str(exc).split()))[:300]
    return f"LLM {where} {what}. [{type(exc).__name__}: {detail}]"


class LLMClient:
    """Sends chat requests through litellm with retries and a reply cache.

    ``complete(message_lists, on_reply)`` answers every request (cache first, then the
    provider with at most ``concurrency`` requests in flight) and returns the replies in order;
    ``on_reply(index, reply)`` is called from the host thread as each one is ready.
    """

    def __init__(self, config: LLMConfig):
        self.config = config
        self.cache = ResponseCache(config.cache_dir)
        self.stats = LLMStats()
        self._lock = threading.Lock()

    # -- one request -------------------------------------------------------------------------
    def _kwargs(self) -> dict[str, Any]:
        cfg = self.config
        kw: dict[str, Any] = {"model": cfg.model, "timeout": cfg.timeout, "num_retries": 0,
                                  "max_retries": 0, "drop_params": True}
        kw.update({k: v for k, v in cfg.sampling().items()})
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

    def _call(self, messages: list[dict]) -> LLMReply:
        litellm = _litellm()
        cfg = self.config
        attempt = 0
        while True:
            with self._lock:
                self.stats.requests += 1
            try:
                resp = litellm.completion(messages=messages, **self._kwargs())
                break
            except Exception as exc:  # noqa: BLE001 — classified right below
                if not _retryable(exc) or attempt >= cfg.max_retries:
                    raise LLMError(_advice(exc, cfg, attempt + 1)) from None
                delay = min(cfg.backoff_max, cfg.backoff_base * 2.0**attempt)
                time.sleep(delay * (1.0 + 0.1 * random.random()))
                attempt += 1
                with self._lock:
                    self.stats.retries += 1
        choice = resp.choices[0]
        text = getattr(choice.message, "content", None) or ""
        usage = getattr(resp, "usage", None)
        with self._lock:
            self.stats.calls += 1
            if usage is not None:
                self.stats.prompt_tokens += int(getattr(usage, "prompt_tokens", 0) or 0)
                self.stats.completion_tokens += int(getattr(usage, "completion_tokens", 0) or 0)
        finish = getattr(choice, "finish_reason", None)
        if len(text) > MAX_STORED_CHARS:  # a runaway reply: keep the head, say so
            text, finish = text[:MAX_STORED_CHARS], "oversized"
        return LLMReply(text, finish, False)

    # -- many requests -----------------------------------------------------------------------
    def complete(
        self,
        message_lists: Sequence[list[dict]],
        on_reply: Callable[[int, LLMReply], None] | None = None,
    ) -> list[LLMReply]:
        cfg = self.config
        params = cfg.sampling()
        keys = [cache_key(cfg.model, m, params) for m in message_lists]
        replies: list[LLMReply | None] = [None] * len(message_lists)
        todo = []
        for i, key in enumerate(keys):
            hit = self.cache.get(key)
            if hit is not None and isinstance(hit.get("text"), str):
                replies[i] = LLMReply(hit["text"], hit.get("finish_reason"), True)
                self.stats.cache_hits += 1
                if on_reply:
                    on_reply(i, replies[i])
            else:
                todo.append(i)
        if not todo:
            return replies  # type: ignore[return-value]
        first_error: LLMError | None = None
        workers = max(1, min(int(cfg.concurrency), len(todo)))
        with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="leed-llm") as ex:
            futures = {ex.submit(self._call, message_lists[i]): i for i in todo}
            try:
                for fut in concurrent.futures.as_completed(futures):
                    i = futures[fut]
                    if fut.cancelled():
                        continue
                    try:
                        reply = fut.result()
                    except LLMError as e:
                        if first_error is None:
                            first_error = e
                            for f in futures:  # stop queued work; running calls finish
                                f.cancel()
                        continue
                    self.cache.put(keys[i], {"model": cfg.model, "text": reply.text,
                                             "finish_reason": reply.finish_reason})
                    replies[i] = reply
                    if on_reply:
                        on_reply(i, reply)
            except KeyboardInterrupt:
                for f in futures:
                    f.cancel()
                raise
        if first_error is not None:
            raise first_error
        return replies  # type: ignore[return-value]
