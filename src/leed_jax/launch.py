"""Start a multi-process run on one machine: ``python -m leed_jax.launch``.

    python -m leed_jax.launch --processes 2 [--devices-per-process 2] [--timeout S] -- \\
        python -m leed_jax.sweep --distributed --agents 4,8 --out runs/sweep

Starts the command once per process with ``LEED_COORDINATOR`` (127.0.0.1 and a free port),
``LEED_NUM_PROCESSES`` and ``LEED_PROCESS_ID`` set, which ``--distributed`` reads
(``leed_jax.parallel.initialize_distributed``). ``--devices-per-process K`` gives each process
K CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=K``, ``JAX_PLATFORMS=cpu``),
so a pod's layout can be tried on a laptop. SIGINT and SIGTERM are forwarded to every process;
when one process fails (or ``--timeout`` passes) the others are stopped, since they would
otherwise wait forever for it inside a collective. Exit status: the first failure's, else 0.

On real clusters use the cluster's own launcher instead (see the README's multi-host recipe).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time

PROG = "python -m leed_jax.launch"


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(base: dict, port: int, n: int, i: int, devices: int | None) -> dict:
    env = dict(base, LEED_COORDINATOR=f"127.0.0.1:{port}", LEED_NUM_PROCESSES=str(n),
               LEED_PROCESS_ID=str(i))
    if devices:
        flags = [f for f in env.get("XLA_FLAGS", "").split()
                 if not f.startswith("--xla_force_host_platform_device_count")]
        env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={devices}"])
        env["JAX_PLATFORMS"] = "cpu"
    return env


def _stop(procs: list[subprocess.Popen], grace: float = 5.0) -> None:
    """SIGTERM every live process (its whole group), SIGKILL what is left after ``grace``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        live = [p for p in procs if p.poll() is None]
        for p in live:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while any(p.poll() is None for p in live) and time.monotonic() < deadline:
            time.sleep(0.05)


def launch(command: list[str], processes: int, devices: int | None = None,
           timeout: float | None = None, env: dict | None = None, say=None) -> int:
    """Run ``command`` as ``processes`` cooperating processes; return the exit status."""
    say = say or (lambda m: print(f"{PROG}: {m}", file=sys.stderr, flush=True))
    port = free_port()
    base = dict(os.environ if env is None else env)
    procs: list[subprocess.Popen] = []
    forwarded: list[int] = []

    def forward(signum, _frame):
        forwarded.append(signum)
        for p in procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signum)
                except ProcessLookupError:
                    pass

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for i in range(processes):
            # Each process leads its own group so that stopping it stops its children too.
            procs.append(subprocess.Popen(command, env=process_env(base, port, processes, i, devices),
                                          start_new_session=True))
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            codes = [p.poll() for p in procs]
            failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                i, code = failed[0]
                if not forwarded:
                    say(f"process {i} exited with status {code}; stopping the others")
                _stop(procs)
                return code if code > 0 else 128 - code
            if all(c == 0 for c in codes):
                return 0
            if deadline is not None and time.monotonic() > deadline:
                say(f"timeout after {timeout:g} s; stopping all {processes} processes")
                _stop(procs)
                return 124
            time.sleep(0.1)
    finally:
        _stop(procs, grace=2.0)
        for s, handler in old.items():
            signal.signal(s, handler)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" in argv:
        cut = argv.index("--")
        own, command = argv[:cut], argv[cut + 1:]
    else:
        own, command = argv, []
    p = _Parser(prog=PROG, description=__doc__.split("\n\n")[2])
    p.add_argument("--processes", type=int, default=2, help="processes to start (default 2)")
    p.add_argument("--devices-per-process", type=int, default=None, metavar="K",
                   help="K forced CPU devices per process (default: the machine's devices)")
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="stop every process after S seconds (exit status 124)")
    try:
        args = p.parse_args(own)
        if not command:
            raise UsageError("give the command after --, e.g. -- python -m leed_jax.run --distributed")
        if args.processes < 1:
            raise UsageError(f"--processes must be >= 1, got {args.processes}")
        if args.devices_per_process is not None and args.devices_per_process < 1:
            raise UsageError(f"--devices-per-process must be >= 1, got {args.devices_per_process}")
        if args.timeout is not None and not args.timeout > 0:
            raise UsageError(f"--timeout must be a number of seconds > 0, got {args.timeout}")
    except UsageError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    try:
        return launch(command, args.processes, args.devices_per_process, args.timeout)
    except FileNotFoundError as err:
        print(f"{PROG}: error: cannot start {command[0]!r} ({err.strerror})", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
