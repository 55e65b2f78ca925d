"""Devices and hosts: a ``('data', 'agent')`` device mesh and where each array of a run lives.

The trainer's update is one jitted program; sharding it is a matter of placing its inputs.
Env-batch arrays are split over the ``data`` axis (data parallel: XLA inserts the all-reduce
that averages gradients, which are means over the env batch), and per-agent arrays —
parameters, optimiser state, per-agent statistics, demonstrations — over the ``agent`` axis
(each device holds its own agents' networks; the decentralised design needs no cross-agent
communication in the backward pass). The maths is that of the unsharded program, so a sharded
run reaches the same parameters up to floating-point reduction order.

Multi-host (TPU pods, multi-node GPU): call :func:`initialize_distributed` first on every
process (``python -m leed_jax.run --distributed ...``); ``jax.devices()`` then lists the
devices of all hosts and the same mesh spans them.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


class MeshError(ValueError):
    """A mesh that does not fit the devices, the env batch or the agents (one line)."""


@dataclasses.dataclass(frozen=True)
class MeshShape:
    data: int = 1
    agent: int = 1

    @property
    def size(self) -> int:
        return self.data * self.agent


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


def train_state_shardings(state, mesh: Mesh, num_agents: int, seed_axis: bool = True):
    """Shardings for a trainer ``TrainState`` (leaves lead with the seed axis when
    ``seed_axis``): env leaves ``[K, E, N?, ...]``, per-agent leaves ``[K, N, ...]``."""
    off = 1 if seed_axis else 0
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
    """Join a multi-host run (``jax.distributed.initialize``). With no arguments JAX reads the
    cluster from its environment (TPU pods, SLURM, ...); otherwise pass all three, or set
    ``LEED_COORDINATOR``, ``LEED_NUM_PROCESSES`` and ``LEED_PROCESS_ID``."""
    coordinator_address = coordinator_address or os.environ.get("LEED_COORDINATOR")
    if num_processes is None and "LEED_NUM_PROCESSES" in os.environ:
        num_processes = int(os.environ["LEED_NUM_PROCESSES"])
    if process_id is None and "LEED_PROCESS_ID" in os.environ:
        process_id = int(os.environ["LEED_PROCESS_ID"])
    given = {
        "coordinator_address": coordinator_address,
        "num_processes": num_processes,
        "process_id": process_id,
    }
    kwargs = {k: v for k, v in given.items() if v is not None}
    jax.distributed.initialize(**kwargs)

