"""The run directory: ``config.toml``, ``metrics.jsonl``, ``summary.json``, ``checkpoints/``,
``learning_curve.png`` (and ``demos/`` when the run generated its demonstrations)."""

from __future__ import annotations

import datetime
import json
import math
import pathlib
from typing import Any

from leed_jax.config import TrainConfig, dump_config


def default_run_dir(scenario: str, algo: str, root: str | pathlib.Path = "runs") -> pathlib.Path:
    """``runs/<scenario>-<algo>-<timestamp>``."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return pathlib.Path(root) / f"{pathlib.Path(scenario).stem}-{algo}-{stamp}"


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become null, numpy scalars and arrays become Python values."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "tolist"):
        return _clean(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class RunDirError(ValueError):
    """A run directory that cannot be written, or that another run is writing (one line)."""


def check_writable(path: str | pathlib.Path, what: str = "--out") -> None:
    """Raise ``RunDirError`` unless ``path`` is (or can become) a writable directory; checked
    before any work is spent."""
    import os

    path = pathlib.Path(path)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{what} {str(path)!r} is an existing file, not a directory")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise RunDirError(f"{what} {str(path)!r}: {str(probe)!r} is a file, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RunDirError(f"{what} {str(path)!r} is not writable ({str(probe)!r} is read-only)")


_LOCKS: dict = {}


def lock_run_dir(path: str | pathlib.Path) -> None:
    """Hold an exclusive lock on ``path/.lock`` for the rest of this process, so that a second
    run writing to the same directory is refused. An ``fcntl`` lock belongs to the process:
    the kernel drops it when the process dies, SIGKILL included, so it never stays stuck."""
    import fcntl
    import os

    key = str(pathlib.Path(path).absolute())
    if key in _LOCKS:
        return
    fd = os.open(pathlib.Path(path) / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunDirError(f"another run is writing to {str(path)!r}; wait for it or use another --out") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _LOCKS[key] = fd


class RunDir:
    """Paths and writers of one run directory. In a multi-process run only process 0 writes
    (``writer``); the others' writes are no-ops, their reads see process 0's files."""

    def __init__(self, path: str | pathlib.Path, writer: bool | None = None):
        self.path = pathlib.Path(path)
        if writer is None:
            from leed_jax.parallel import is_writer

            writer = is_writer()
        self.writer = writer

    @property
    def config_path(self) -> pathlib.Path:
        return self.path / "config.toml"

    @property
    def metrics_path(self) -> pathlib.Path:
        return self.path / "metrics.jsonl"

    @property
    def summary_path(self) -> pathlib.Path:
        return self.path / "summary.json"

    @property
    def checkpoint_dir(self) -> pathlib.Path:
        return self.path / "checkpoints"

    @property
    def plot_path(self) -> pathlib.Path:
        return self.path / "learning_curve.png"

    def create(self) -> RunDir:
        """Make the directory and take its writer lock (process 0 only; ``check_writable``
        first, before any work is spent: ``prepare`` does)."""
        if self.writer:
            self.path.mkdir(parents=True, exist_ok=True)
            lock_run_dir(self.path)
        return self

    def write_config(self, config: TrainConfig) -> None:
        if self.writer:
            self.config_path.write_text(dump_config(config))

    def append_metrics(self, record: dict) -> None:
        if not self.writer:
            return
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(_clean(record)) + "\n")

    def read_metrics(self) -> list[dict]:
        if not self.metrics_path.exists():
            return []
        records = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a kill
                break
        return records

    def truncate_metrics(self, max_update: int) -> list[dict]:
        """Keep the records up to ``max_update`` (those after a resumed checkpoint are redone)."""
        if not self.writer:
            return []
        records = [r for r in self.read_metrics() if r.get("update", 0) <= max_update]
        self.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in records))
        return records

    def write_summary(self, summary: dict) -> None:
        if self.writer:
            self.summary_path.write_text(json.dumps(_clean(summary), indent=2) + "\n")

    def read_summary(self) -> dict:
        return json.loads(self.summary_path.read_text())
