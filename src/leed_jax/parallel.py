"""Devices and hosts: a ``('data', 'agent')`` device mesh and where each array of a run lives.

The trainer's update is one jitted program; sharding it is a matter of placing its inputs.
Env-batch arrays are split over the ``data`` axis (data parallel: XLA inserts the all-reduce
that averages gradients, which are means over the env batch), and per-agent arrays —
parameters, optimiser state, per-agent statistics, demonstrations — over the ``agent`` axis
(each device holds its own agents' networks; the decentralised design needs no cross-agent
communication in the backward pass). The maths is that of the unsharded program, so a sharded
run reaches the same parameters up to floating-point reduction order.

Multi-host (TPU pods, multi-node GPU, or several local processes): call
:func:`initialize_distributed` first on every process (``python -m leed_jax.run --distributed
...``); ``jax.devices()`` then lists the devices of all processes and the mesh spans them.
Every process runs the same program on its shards (SPMD); process 0 alone writes the run
directory and talks to the user (:func:`is_writer`), the others print only errors. Host-side
values of a sharded array are read with :func:`to_host`, which gathers the shards of other
processes.
"""

from __future__ import annotations

import os
import sys

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


class MeshError(ValueError):
    """A mesh that does not fit the devices, the env batch or the agents (one line)."""


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def make_mesh(data: int = 1, agent: int = 1, devices=None) -> Mesh:
    """A ``data × agent`` mesh over the first ``data·agent`` devices (``data=-1``: all devices
    not used by the agent axis)."""
    devices = list(devices if devices is not None else jax.devices())
    if agent <= 0:
        raise MeshError(f"mesh agent axis must be >= 1, got {agent}")
    if data == -1:
        data = max(1, len(devices) // agent)
    if data <= 0:
        raise MeshError(f"mesh data axis must be >= 1 (or -1 for all devices), got {data}")
    if data * agent > len(devices):
        raise MeshError(
            f"a {data}x{agent} (data x agent) mesh needs {data * agent} devices; "
            f"{len(devices)} available ({devices[0].platform})"
        )
    if jax.process_count() > 1 and data * agent != len(devices):
        raise MeshError(
            f"with {jax.process_count()} processes the mesh must span all {len(devices)} devices "
            f"(a {data}x{agent} mesh uses {data * agent}); use --mesh-data -1 or a data x agent "
            f"product of {len(devices)}"
        )
    grid = np.array(devices[: data * agent], dtype=object).reshape(data, agent)
    return Mesh(grid, ("data", "agent"))


def check_fits(mesh: Mesh, num_envs: int, num_agents: int, share_params: bool = False) -> None:
    """Raise ``MeshError`` saying which sizes fit when the batch or the agents do not divide."""
    data, agent = mesh.shape["data"], mesh.shape["agent"]
    if num_envs % data:
        fits_envs = [m * data for m in range(1, 5)]
        raise MeshError(
            f"num_envs={num_envs} does not split over the data axis of {data} devices; "
            f"use num_envs in {fits_envs}... or a data axis in {_divisors(num_envs)}"
        )
    if agent > 1:
        if share_params:
            raise MeshError("the agent mesh axis splits per-agent parameters; it cannot be used with share_params")
        if num_agents % agent:
            raise MeshError(
                f"num_agents={num_agents} does not split over the agent axis of {agent} devices; "
                f"use an agent axis in {[d for d in _divisors(num_agents) if d <= len(mesh.devices.flat) * 8]}"
            )


def _spec(leaf, batch_axis: int | None, agent_axis: int | None, mesh: Mesh, num_agents: int) -> NamedSharding:
    """Sharding of one leaf: ``batch_axis`` over 'data', ``agent_axis`` over 'agent' when the
    leaf has that axis with the expected size."""
    shape = getattr(leaf, "shape", ())
    parts: list = [None] * len(shape)
    if batch_axis is not None and len(shape) > batch_axis and mesh.shape["data"] > 1:
        parts[batch_axis] = "data"
    if (
        agent_axis is not None
        and len(shape) > agent_axis
        and shape[agent_axis] == num_agents
        and mesh.shape["agent"] > 1
    ):
        parts[agent_axis] = "agent"
    while parts and parts[-1] is None:
        parts.pop()
    return NamedSharding(mesh, P(*parts))


def train_state_shardings(state, mesh: Mesh, num_agents: int):
    """Shardings for a trainer ``TrainState`` whose leaves lead with the seed axis: env leaves
    ``[K, E, N?, ...]``, per-agent leaves ``[K, N, ...]``."""
    off = 1
    tree = jax.tree_util.tree_map

    def per_agent(x):
        return tree(lambda leaf: _spec(leaf, None, off, mesh, num_agents), x)

    def env_batch(x):
        return tree(lambda leaf: _spec(leaf, off, off + 1, mesh, num_agents), x)

    def replicated(x):
        return tree(lambda leaf: NamedSharding(mesh, P()), x)

    return type(state)(
        **{
            name: (env_batch if name == "env" else per_agent if name in _PER_AGENT else replicated)(value)
            for name, value in state._asdict().items()
        }
    )


_PER_AGENT = {"params", "opt_state", "return_ema", "return_seen", "eval_return",
              "teacher_critic"}


def demo_shardings(demos, mesh: Mesh, num_agents: int):
    """Demo buffers are per agent ``[N, ...]``: split over the agent axis."""
    return jax.tree_util.tree_map(lambda leaf: _spec(leaf, None, 0, mesh, num_agents), demos)


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Join a multi-process run (``jax.distributed.initialize``). With no arguments JAX reads
    the cluster from its environment (TPU pods, SLURM, ...); otherwise pass all three, or set
    ``LEED_COORDINATOR``, ``LEED_NUM_PROCESSES`` and ``LEED_PROCESS_ID`` (what
    ``python -m leed_jax.launch`` does). CPU devices talk over gloo.

    Afterwards the processes other than 0 are silenced (their stdout goes to /dev/null, their
    library logs below ERROR are dropped): they compute, process 0 reports. Native libraries'
    stdout chatter (gloo's "Rank 0 is connected") is moved to stderr on process 0 so that
    stdout stays the program's own output.
    """
    coordinator_address = coordinator_address or os.environ.get("LEED_COORDINATOR")
    try:
        if num_processes is None and "LEED_NUM_PROCESSES" in os.environ:
            num_processes = int(os.environ["LEED_NUM_PROCESSES"])
        if process_id is None and "LEED_PROCESS_ID" in os.environ:
            process_id = int(os.environ["LEED_PROCESS_ID"])
    except ValueError as err:
        raise MeshError(f"LEED_NUM_PROCESSES / LEED_PROCESS_ID must be integers ({err})") from None
    given = {
        "coordinator_address": coordinator_address,
        "num_processes": num_processes,
        "process_id": process_id,
    }
    kwargs = {k: v for k, v in given.items() if v is not None}
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(**kwargs)
    except (ValueError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MeshError(f"could not join the multi-process run ({first})") from None
    _quiet_stdout(jax.process_index() == 0)


def _quiet_stdout(writer: bool) -> None:
    import logging

    try:
        sys.stdout.flush()
        if writer:
            # Python's stdout keeps the real fd 1; native code writing to fd 1 lands on stderr.
            keep = os.dup(1)
            os.dup2(2, 1)
            sys.stdout = os.fdopen(keep, "w", buffering=1)
        else:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the process lifetime)
            logging.getLogger().setLevel(logging.ERROR)
            logging.getLogger("absl").setLevel(logging.ERROR)
            import warnings

            warnings.simplefilter("ignore")
    except (OSError, ValueError):  # no real file descriptors (e.g. under a test harness)
        pass


def is_writer() -> bool:
    """Whether this process writes files and reports (process 0; always true on one process)."""
    return jax.process_index() == 0


def to_host(tree):
    """Host numpy copies of a pytree of arrays, gathering the shards other processes hold."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree_util.tree_map(one, tree)


# Host-side coordination (barriers, a text from process 0, a vote) goes through the
# coordination service's key-value store, not through device collectives: gloo gives up when
# the processes reach a collective more than 30 s apart (its rendezvous timeout), and process
# 0 may spend minutes alone first (generating demonstrations, writing a checkpoint) while the
# others wait. Every process makes the same calls in the same order, so a counter names them.
SYNC_TIMEOUT_S = float(os.environ.get("LEED_SYNC_TIMEOUT_S", "86400"))  # 24 h
_calls = iter(range(1 << 62))


def _client():
    from jax._src import distributed

    return distributed.global_state.client


def _key(name: str) -> str:
    return f"leed_jax/{next(_calls)}/{name}"


def sync(name: str) -> None:
    """Wait until every process gets here (no-op on one process); waits up to
    ``LEED_SYNC_TIMEOUT_S`` (default a day) for the slowest."""
    if jax.process_count() > 1:
        _client().wait_at_barrier(_key(name), int(SYNC_TIMEOUT_S * 1000))


def broadcast_text(text: str) -> str:
    """Process 0's ``text`` on every process (e.g. a run directory named by its clock)."""
    if jax.process_count() == 1:
        return text
    key, client = _key("text"), _client()
    if jax.process_index() == 0:
        client.key_value_set(key, text)
        return text
    return client.blocking_key_value_get(key, int(SYNC_TIMEOUT_S * 1000))


def all_processes_ok(ok: bool) -> bool:
    """Whether ``ok`` holds on every process (each passes its own)."""
    if jax.process_count() == 1:
        return ok
    key, client = _key("vote"), _client()
    client.key_value_set(f"{key}/{jax.process_index()}", "1" if ok else "0")
    votes = [client.blocking_key_value_get(f"{key}/{i}", int(SYNC_TIMEOUT_S * 1000))
             for i in range(jax.process_count())]
    return all(v == "1" for v in votes)
