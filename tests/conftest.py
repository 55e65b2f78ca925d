"""Suite-wide setup: one JAX persistent compilation cache for the whole test run.

Many tests train the same small configurations (the same programs, shape for shape) through
separate ``train()`` calls, in-process and in subprocesses; each call traces new closures, so
JAX's in-memory cache misses, but the persistent cache is keyed by the compiled program and
hits. The directory is new for each pytest run (nothing carries over between runs) and is
shared by the xdist workers and by subprocesses through the environment.

Training runs in tests skip the traffic yardsticks (two planner runs per evaluation episode,
seconds each) unless a test asks for them with ``TrainConfig(yardsticks=N)``: the suite's time
budget is tight, and tests/test_yardsticks.py covers them.
"""

from __future__ import annotations

import os
import shutil
import tempfile

_VAR = "JAX_COMPILATION_CACHE_DIR"
_OWNER = "LEED_TEST_CACHE_OWNER"

os.environ.setdefault("LEED_YARDSTICKS", "0")


# Cheaper XLA CPU compilation for the suite's many small programs (compiling, not running,
# dominates its time); appended to the flags of the run, inherited by subprocesses.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def pytest_configure(config):
    if FAST_COMPILE not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + FAST_COMPILE).strip()
    if _VAR not in os.environ:  # the controller (or a plain run): make the run's cache
        os.environ[_VAR] = tempfile.mkdtemp(prefix="leed-test-xla-")
        os.environ[_OWNER] = str(os.getpid())
    # Cache every program, however small or quick to compile (jax reads these variables).
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    import jax

    jax.config.update("jax_compilation_cache_dir", os.environ[_VAR])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_unconfigure(config):
    if os.environ.get(_OWNER) == str(os.getpid()):
        shutil.rmtree(os.environ.get(_VAR, ""), ignore_errors=True)
