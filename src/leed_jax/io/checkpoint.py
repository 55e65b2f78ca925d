"""Checkpoints of the whole trainer state with orbax.

The state is saved as the flat list of its leaves (plus a small JSON record); restoring needs
a state of the same structure (a freshly initialised one, already placed on the run's
devices), whose tree definition puts the leaves back and whose shardings say where each shard
goes. That keeps the files independent of how the state's containers (NamedTuples, optax
states, env states) are spelled. In one process a save copies the state to host memory and
writes it in a background thread (one at a time), so training goes on meanwhile. Saves are
atomic (orbax writes to a temporary directory and renames it), so a run killed at any
moment — SIGKILL included — leaves only whole checkpoints behind.

Multi-process runs: every process calls ``save`` and ``restore`` with its sharded
``jax.Array``s; orbax writes each shard once (from the process that holds it), process 0
commits, and on restore every process reads the shards of its own devices. Such saves are
synchronous (no process holds the whole state to copy, and orbax's cross-process barriers
belong in the main thread). The run directory must be on a file system all processes see.

A checkpoint that does not restore (a truncated data file, an empty ``_METADATA``, a missing
``state/``) is skipped: ``restore`` falls back to the newest one that does, moves the damaged
one to ``damaged-checkpoints/`` next to ``checkpoints/`` for inspection, and says why.
"""

from __future__ import annotations

import contextlib
import logging
import math
import pathlib
import shutil
import threading
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointError(ValueError):
    """No checkpoint of a run restores (one line naming each and why)."""


@contextlib.contextmanager
def _quiet_absl():
    """orbax logs a WARNING per save on a single host ("Skipping merge of OCDBT
    checkpoints"), which would drown the run's own output."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def checkpoint_steps(directory: str | pathlib.Path) -> list[int]:
    """Finished checkpoints in ``directory``, oldest first. Orbax writes a step into a
    temporary directory and renames it to the bare step number when it is complete, so only
    whole checkpoints have an integer name."""
    path = pathlib.Path(directory)
    if not path.is_dir():
        return []
    return sorted(int(p.name) for p in path.iterdir() if p.name.isdigit() and p.is_dir())


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__


class Checkpointer:
    """Periodic checkpoints of one run under ``directory`` (steps = update counts)."""

    def __init__(self, directory: str | pathlib.Path, max_to_keep: int = 2):
        self.directory = pathlib.Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False
        )
        with _quiet_absl():
            self._manager = ocp.CheckpointManager(
                self.directory, options=options, item_names=("state", "meta")
            )
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._last_save: float | None = None

    def seconds_since_save(self) -> float:
        """Seconds since this process's last ``save`` began (inf before the first): the host
        loop's minimum interval between periodic saves (``checkpoint_interval_s``) reads it."""
        return math.inf if self._last_save is None else time.monotonic() - self._last_save

    def latest_step(self) -> int | None:
        self.wait()
        steps = checkpoint_steps(self.directory)
        return steps[-1] if steps else None

    def save(self, step: int, state: Any, meta: dict, wait: bool = False) -> None:
        """Save ``state``'s leaves. One process: copy them to host memory now and write them in
        a background thread, so training goes on while the files are written (one save in
        flight at a time: the next save, ``latest_step``, ``restore`` and ``close`` wait for
        it); ``wait``: return only once the checkpoint is on disk. Several processes: every
        process saves its shards of the sharded ``jax.Array``s, synchronously."""
        self.wait()
        self._last_save = time.monotonic()
        if jax.process_count() > 1:
            with _quiet_absl():
                self._save(step, jax.tree_util.tree_leaves(state), meta)
            return
        leaves = [np.array(x) for x in jax.tree_util.tree_leaves(jax.device_get(state))]

        def write():
            try:
                with _quiet_absl():
                    self._save(step, leaves, meta)
            except BaseException as exc:  # noqa: BLE001 -- re-raised in the caller's thread by wait()
                self._error = exc

        self._thread = threading.Thread(target=write, name="checkpoint-save", daemon=True)
        self._thread.start()
        if wait:
            self.wait()

    def wait(self) -> None:
        """Block until the save in flight (if any) is on disk; raise its error, if any."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _save(self, step: int, leaves: list, meta: dict) -> None:
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(leaves), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        self._manager.wait_until_finished()

    def _restore_step(self, step: int, like: Any) -> tuple[Any, dict]:
        leaves, treedef = jax.tree_util.tree_flatten(like)
        abstract = [
            jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))
            for x in leaves
        ]
        with _quiet_absl():
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
                ),
            )
        meta = dict(restored["meta"])
        if int(meta.get("update", step)) != step:
            raise ValueError(f"meta.json says update {meta.get('update')}")
        return jax.tree_util.tree_unflatten(treedef, list(restored["state"])), meta

    def restore(self, like: Any, say=None) -> tuple[Any, dict]:
        """``(state, meta)`` of the newest checkpoint that restores, shaped and placed like
        ``like`` (a state of the run's structure on the run's devices). Damaged newer ones are
        moved to ``damaged-checkpoints/`` and reported through ``say``."""
        from leed_jax.parallel import all_processes_ok, is_writer, sync

        self.wait()
        say = say or (lambda msg: None)
        steps = checkpoint_steps(self.directory)
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        skipped = []
        for step in reversed(steps):
            try:
                result, reason = self._restore_step(step, like), None
            except Exception as exc:  # noqa: BLE001 (any damage: the formats raise many types)
                result, reason = None, _reason(exc)
            # Damage may touch one process's shards only: all take the same step, or none.
            if not all_processes_ok(reason is None):
                skipped.append((step, reason or "another process could not read its shards"))
                continue
            self._set_aside(skipped, say, is_writer())
            sync("leed_jax checkpoint restored")
            return result
        detail = "; ".join(f"update {s}: {r}" for s, r in skipped)
        raise CheckpointError(f"no checkpoint in {self.directory} restores ({detail})")

    def _set_aside(self, skipped: list[tuple[int, str]], say, writer: bool) -> None:
        if not skipped:
            return
        damaged = self.directory.parent / "damaged-checkpoints"
        for step, reason in skipped:
            target = damaged / str(step)
            if writer:
                damaged.mkdir(exist_ok=True)
                if target.exists():
                    shutil.rmtree(target)
                shutil.move(str(self.directory / str(step)), target)
            say(f"checkpoint of update {step} does not restore ({reason}); skipped it, "
                f"kept it in {target}")
        self._manager.reload()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._manager.close()


def has_checkpoint(run_dir: str | pathlib.Path) -> bool:
    """Whether ``run_dir/checkpoints`` holds a finished checkpoint."""
    return bool(checkpoint_steps(pathlib.Path(run_dir) / "checkpoints"))


def load_leaves(directory: str | pathlib.Path, step: int | None = None) -> list:
    """The state leaves of checkpoint ``step`` (default: the latest) as host numpy arrays,
    on any device layout: a checkpoint written by a multi-process, sharded run reads back in
    one process (to inspect or compare parameters)."""
    directory = pathlib.Path(directory)
    step = (checkpoint_steps(directory) or [None])[-1] if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {directory}")
    path = (directory / str(step) / "state").absolute()
    reader = ocp.StandardCheckpointer()
    with _quiet_absl():
        meta = reader.metadata(path)
        tree = getattr(getattr(meta, "item_metadata", meta), "tree", meta)
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract = [jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device) for m in tree]
        leaves = reader.restore(path, abstract)
    return [np.asarray(x) for x in leaves]
