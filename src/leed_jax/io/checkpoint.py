"""Checkpoints of the whole trainer state with orbax.

The state is saved as the flat list of its leaves (plus a small JSON record); restoring needs
a state of the same structure (a freshly initialised one), whose tree definition puts the
leaves back. That keeps the files independent of how the state's containers (NamedTuples,
optax states, env states) are spelled. A save copies the state to host memory and writes it
in a background thread (one at a time), so training goes on meanwhile. Saves are atomic
(orbax writes to a temporary directory and renames it), so a run killed at any moment —
SIGKILL included — leaves only whole checkpoints behind.
"""

from __future__ import annotations

import contextlib
import logging
import pathlib
import threading
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


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


class Checkpointer:
    """Periodic checkpoints of one run under ``directory`` (steps = update counts)."""

    def __init__(self, directory: str | pathlib.Path, max_to_keep: int = 2):
        self.directory = pathlib.Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "meta")
        )
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def latest_step(self) -> int | None:
        self.wait()
        self._manager.reload()
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        self.wait()
        self._manager.reload()
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, meta: dict, wait: bool = False) -> None:
        """Copy ``state`` to host memory now and write it in a background thread, so training
        goes on while the files are written (one save in flight at a time: the next save,
        ``latest_step``, ``restore`` and ``close`` wait for it). ``wait``: return only once
        the checkpoint is on disk."""
        leaves = [np.array(x) for x in jax.tree_util.tree_leaves(jax.device_get(state))]
        self.wait()

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

    def restore(self, like: Any, step: int | None = None) -> tuple[Any, dict]:
        """``(state, meta)`` of ``step`` (default: the latest), shaped like ``like``."""
        self.wait()
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        leaves, treedef = jax.tree_util.tree_flatten(like)
        abstract = [jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype) for x in leaves]
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
            ),
        )
        state = jax.tree_util.tree_unflatten(treedef, list(restored["state"]))
        return state, dict(restored["meta"])

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._manager.close()


def has_checkpoint(run_dir: str | pathlib.Path) -> bool:
    """Whether ``run_dir/checkpoints`` holds a finished checkpoint."""
    ckpt = pathlib.Path(run_dir) / "checkpoints"
    return ckpt.is_dir() and Checkpointer(ckpt).latest_step() is not None
