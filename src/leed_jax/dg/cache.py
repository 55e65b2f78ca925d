"""On-disk cache of LLM replies, so that a rerun makes no calls and an interrupted run resumes.

Layout: ``<root>/<key[:2]>/<key>.json``, one file per request, written atomically (temporary
file + rename) as soon as the reply arrives. The key is the SHA-256 of the model name, the
messages and the sampling parameters (temperature, top_p, max_tokens, seed, ...) — never of
the API base or the API key, and the files hold neither: only the model name, the reply text,
its finish reason and token usage.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def default_cache_dir() -> Path:
    """``$LEED_LLM_CACHE`` or ``~/.cache/leed_jax/llm``."""
    env = os.environ.get("LEED_LLM_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "leed_jax" / "llm"


def cache_key(model: str, messages: list[dict], params: dict[str, Any]) -> str:
    blob = json.dumps(
        {"model": model, "messages": messages, "params": params},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResponseCache:
    """A directory of cached replies. ``root=None`` disables caching."""

    def __init__(self, root: str | Path | None):
        self.root = Path(root) if root is not None else None

    def _path(self, key: str) -> Path:
        assert self.root is not None
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        if self.root is None:
            return None
        path = self._path(key)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None  # a torn or foreign file: ask again, the new reply overwrites it

    def put(self, key: str, record: dict) -> None:
        if self.root is None:
            return
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(record, f, ensure_ascii=False)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
