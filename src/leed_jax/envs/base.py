"""The one environment protocol every leed_jax env follows.

Agents live on a leading axis of fixed size ``N``; every array has a fixed shape, so
``jax.jit`` and ``jax.vmap`` apply to ``reset`` and ``step`` directly and compile time does
not grow with a Python loop over agents.

    reset(key)                      -> obs [N, D], state
    step(key, state, actions [N])   -> obs [N, D], state, reward [N], done [N], info
    avail_actions(state)            -> bool [N, A]
    global_state(state)             -> [G]

``info`` always holds:
    "decision": bool [N]  whether the agent's action in this step had any effect (the traffic
                          env only lets a vehicle choose at an intersection); the trainer masks
                          the policy loss with it.
    "metrics":  dict[str, scalar]  the env's own episode metrics so far (e.g. mean travel time).
Envs may add more keys of fixed shape.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, runtime_checkable

import jax

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    """Static sizes of a stacked multi-agent env."""

    num_agents: int
    obs_dim: int
    num_actions: int
    global_state_dim: int
    horizon: int


@runtime_checkable
class MultiAgentEnv(Protocol):
    """Structural type of a leed_jax environment (see the module docstring)."""

    spec: EnvSpec
    family: str
    name: str

    def reset(self, key: Array) -> tuple[Array, Any]: ...

    def step(
        self, key: Array, state: Any, actions: Array
    ) -> tuple[Array, Any, Array, Array, dict]: ...

    def avail_actions(self, state: Any) -> Array: ...

    def global_state(self, state: Any) -> Array: ...


class ScenarioError(ValueError):
    """A scenario, override, network or demand input that cannot be used (one-line message)."""
