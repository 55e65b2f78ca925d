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
        if self.writer:
            self.path.mkdir(parents=True, exist_ok=True)
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
