"""Any JaxMARL environment behind leed_jax's stacked env protocol (see ``envs/base.py``).

JaxMARL (0.2.x) speaks dicts keyed by agent name; this adapter stacks them on a leading
agent axis in the order of jaxmarl's ``env.agents``::

    obs     {agent: [d_i] or [...]}  -> [N, D] float32   (flattened, zero-padded to max d_i)
    rewards {agent: []}              -> [N] float32
    dones   {agent: [], "__all__"}   -> [N] bool
    actions [N] int32                -> {agent: []}

What differs from calling jaxmarl directly, and why:

* **No auto-reset.** jaxmarl's public ``MultiAgentEnv.step`` splits the key
  (``key, key_reset = split(key)``), calls ``step_env(key, ...)`` and, when
  ``dones["__all__"]``, swaps in ``reset(key_reset)``. leed_jax's ``AutoResetWrapper`` owns
  resets (it reports the finished episode's metrics), so the adapter calls ``step_env``
  itself, after the same key split. Every transition equals ``step_env`` bit for bit, and
  jaxmarl's ``step`` for the same key until that one resets (up to float rounding: XLA
  compiles ``step``, with its reset select, to slightly different code, ~1e-7 apart).
* **Exact horizon.** jaxmarl decides the time limit on the step counter *before* it is
  incremented (MPE: ``done = state.step >= max_steps``; SMAX ``is_terminal`` likewise), so
  an episode lasts ``max_steps + 1`` steps. The adapter counts steps itself and ends every
  episode after exactly ``horizon`` steps (default: the env's ``max_steps``); it also passes
  ``max_steps=horizon`` to jaxmarl so jaxmarl's own limit never fires first.
* **done.** ``done[i]`` is jaxmarl's per-agent done (SMAX: the unit is dead), OR-ed with
  the end of the episode (``"__all__"`` or the horizon): SMAX leaves surviving units
  "not done" at a time-out or a win, but the protocol ends an episode when ``done.all()``.
* **truncated.** ``info["truncated"]`` (scalar bool): the episode was cut by the horizon,
  not ended by the env; the trainer bootstraps V(s_T) there (jaxmarl obs carry no time).
* **decision.** An agent's action mattered when the agent was not done before the step:
  all True in MPE, the units alive at the start of the step in SMAX.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import numbers
import sys
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from leed_jax.envs.base import EnvSpec, ScenarioError

Array = jax.Array

_SMAX_ENVS = ("SMAX", "HeuristicEnemySMAX", "LearnedPolicyEnemySMAX")
# Names shown when an env name is unknown (jaxmarl.registered_envs has ~40).
_EXAMPLE_ENVS = ("MPE_simple_spread_v3", "MPE_simple_v3", "HeuristicEnemySMAX", "SMAX")
# info keys the protocol or leed_jax's wrappers own; jaxmarl entries of that name are renamed.
_RESERVED_INFO = ("decision", "metrics", "episode_end", "truncated", "final_obs",
                  "final_global_state")


@struct.dataclass
class JaxMARLState:
    """Adapter state: jaxmarl's own state plus what the stacked protocol needs."""

    env_state: Any  # jaxmarl's state pytree, untouched
    t: Array  # int32 [] steps taken in this episode
    agent_done: Array  # bool [N] jaxmarl's per-agent dones after the last step
    global_state: Array  # float32 [G] (see JaxMARLEnv.global_state)


def _import_jaxmarl():
    """``import jaxmarl`` without its import-time prints and without losing our streams.

    jaxmarl 0.2.0 prints two lines while importing, and its MABrax module resets
    ``sys.stdout``/``sys.stderr`` to ``sys.__stdout__``/``sys.__stderr__`` (clobbering any
    redirect, pytest's capture included), so the prints escape ``redirect_stdout`` alone.
    We point ``sys.__stdout__`` at the sink too, then restore all four streams.
    """
    if "jaxmarl" in sys.modules:
        return sys.modules["jaxmarl"]
    saved = sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__
    sink = io.StringIO()
    try:
        sys.__stdout__ = sink
        with contextlib.redirect_stdout(sink):
            import jaxmarl
    finally:
        sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__ = saved
    return jaxmarl


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _check_positive(what: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ScenarioError(f"JaxMARLEnv: {what} must be a positive integer, got {value!r}")


class JaxMARLEnv:
    """A jaxmarl environment as a leed_jax ``MultiAgentEnv`` (stacked ``[N, ...]`` arrays).

    Args:
        env_name: a name in ``jaxmarl.registered_envs``, e.g. ``"MPE_simple_spread_v3"``
            or ``"HeuristicEnemySMAX"``.
        num_agents: number of agents. For ``MPE_simple_spread_v3`` it also sets
            ``num_landmarks`` (unless given); other envs get it as jaxmarl's ``num_agents``
            keyword, and a ``ScenarioError`` if they do not take it (SMAX sizes come from
            ``scenario``).
        horizon: episode length in steps; passed to jaxmarl as ``max_steps`` where the env
            takes it. Default: the env's ``max_steps``.
        name: scenario name reported as ``env.name`` (default: ``env_name``).
        **env_kwargs: passed to ``jaxmarl.make``. For SMAX envs ``scenario`` may be a map name
            (``"3m"``), looked up with ``jaxmarl.environments.smax.map_name_to_scenario``.

    Shapes: ``obs [N, D]`` with ``D`` the largest flattened per-agent observation (smaller
    ones are zero-padded at the end); ``avail_actions [N, A]`` with ``A`` the largest
    per-agent ``Discrete`` size (actions an agent does not have are unavailable);
    ``global_state [G]``: jaxmarl's ``"world_state"`` observation when the env provides one
    (SMAX), else the stacked obs flattened (``G = N * D``).

    Attributes:
        jaxmarl_env: the wrapped jaxmarl env.
        agents: jaxmarl's agent names, in the order of the agent axis.
    """

    def __init__(
        self,
        env_name: str,
        *,
        num_agents: int | None = None,
        horizon: int | None = None,
        name: str | None = None,
        **env_kwargs: Any,
    ) -> None:
        _check_positive("num_agents", num_agents)
        _check_positive("horizon", horizon)
        if horizon is not None and "max_steps" in env_kwargs:
            raise ScenarioError(f"JaxMARLEnv({env_name!r}): give horizon or max_steps, not both")
        jaxmarl = _import_jaxmarl()
        if env_name not in jaxmarl.registered_envs:
            close = difflib.get_close_matches(env_name, jaxmarl.registered_envs, n=3)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise ScenarioError(
                f"unknown jaxmarl env {env_name!r}; {hint}valid names include "
                f"{', '.join(_EXAMPLE_ENVS)} (see jaxmarl.registered_envs)"
            )
        self.family = _family(env_name)
        self.name = name or env_name
        self.env_name = env_name

        env = self.jaxmarl_env = self._make(jaxmarl, env_name, num_agents, horizon, env_kwargs)
        self.agents: list[str] = list(env.agents)
        if num_agents is not None and len(self.agents) != num_agents:
            raise ScenarioError(
                f"jaxmarl env {env_name!r} ignored num_agents={num_agents} "
                f"(it has {len(self.agents)} agents); set its own size arguments instead"
            )
        if horizon is None:
            horizon = getattr(env, "max_steps", None)
            if not isinstance(horizon, numbers.Integral) or horizon <= 0:
                raise ScenarioError(
                    f"jaxmarl env {env_name!r} has no max_steps to take the episode length "
                    f"from; pass horizon=<steps>"
                )

        # Actions: Discrete only; agents may differ in size, the stack takes the largest.
        sizes = []
        for agent in self.agents:
            space = env.action_space(agent)
            if type(space).__name__ != "Discrete":
                raise ScenarioError(
                    f"jaxmarl env {env_name!r}: agent {agent!r} has a "
                    f"{type(space).__name__} action space; leed_jax needs discrete actions "
                    f"(e.g. action_type='Discrete' for MPE, 'discrete' for SMAX)"
                )
            sizes.append(int(space.n))
        self._num_actions_per_agent = tuple(sizes)
        num_actions = max(sizes)

        # Shapes from abstract evaluation: exact, and nothing is compiled.
        key = jax.random.PRNGKey(0)
        obs_s, state_s = jax.eval_shape(env.reset, key)
        if not isinstance(obs_s, dict) or any(a not in obs_s for a in self.agents):
            raise ScenarioError(
                f"jaxmarl env {env_name!r} does not return observations keyed by its agent "
                f"names {self.agents}; the adapter needs jaxmarl's dict API"
            )
        self._obs_sizes = tuple(int(_size(obs_s[a].shape)) for a in self.agents)
        obs_dim = self._obs_dim = max(self._obs_sizes)
        self._has_world_state = "world_state" in obs_s
        global_dim = (
            int(_size(obs_s["world_state"].shape))
            if self._has_world_state
            else len(self.agents) * obs_dim
        )
        self._has_avail = _has_avail_actions(env, state_s)
        self._smax_core = _smax_core_getter(env) if self.family == "smax" else None

        self.spec = EnvSpec(
            num_agents=len(self.agents),
            obs_dim=obs_dim,
            num_actions=num_actions,
            global_state_dim=global_dim,
            horizon=int(horizon),
        )

    # ------------------------------------------------------------------ construction

    def _make(self, jaxmarl, env_name: str, num_agents, horizon, env_kwargs: dict):
        kwargs = dict(env_kwargs)
        if num_agents is not None:
            kwargs["num_agents"] = num_agents
            if env_name == "MPE_simple_spread_v3":
                kwargs.setdefault("num_landmarks", num_agents)
        if self.family == "smax" and isinstance(kwargs.get("scenario"), str):
            kwargs["scenario"] = _smax_scenario(kwargs["scenario"])
        if horizon is not None:
            kwargs["max_steps"] = horizon
        while True:
            try:
                return jaxmarl.make(env_name, **kwargs)
            except TypeError as exc:
                msg = _one_line(exc)
                if "max_steps" in msg and horizon is not None and "max_steps" in kwargs:
                    # No max_steps in this env: the adapter's own step count ends episodes.
                    del kwargs["max_steps"]
                    continue
                if "num_agents" in msg and num_agents is not None:
                    raise ScenarioError(
                        f"jaxmarl env {env_name!r} does not take num_agents ({msg}); leave it "
                        f"out and set the env's own size arguments (SMAX: scenario='3m')"
                    ) from None
                raise ScenarioError(f"cannot build jaxmarl env {env_name!r}: {msg}") from None
            except (ValueError, AssertionError, ImportError, KeyError, NameError) as exc:
                # jaxmarl reports bad arguments with asserts, ValueErrors and, for registered
                # names it cannot build, an unbound local (NameError).
                msg = _one_line(exc)
                raise ScenarioError(f"cannot build jaxmarl env {env_name!r}: {msg}") from None

    # ------------------------------------------------------------------ protocol

    def reset(self, key: Array) -> tuple[Array, JaxMARLState]:
        """Start an episode (same key use as jaxmarl's ``reset``).

        Returns:
            obs: float32 [N, D]; state: ``JaxMARLState``.
        """
        obs_d, env_state = self.jaxmarl_env.reset(key)
        obs = self._stack_obs(obs_d)
        state = JaxMARLState(
            env_state=env_state,
            t=jnp.zeros((), jnp.int32),
            agent_done=jnp.zeros((self.spec.num_agents,), bool),
            global_state=self._global(obs_d, obs),
        )
        return obs, state

    def step(
        self, key: Array, state: JaxMARLState, actions: Array
    ) -> tuple[Array, JaxMARLState, Array, Array, dict]:
        """One step without auto-reset.

        Args:
            key: PRNG key; split like jaxmarl's ``step`` so transitions match it.
            state: from ``reset``/``step``.
            actions: int32 [N], slot ``a`` of agent ``i`` is jaxmarl's action ``a``.

        Returns:
            obs float32 [N, D], state, reward float32 [N], done bool [N], info with
            ``decision`` bool [N], ``metrics`` {name: float32 []} and jaxmarl's own info
            entries (per-agent dicts stacked to [N]).
        """
        key_step, _ = jax.random.split(key)  # the half jaxmarl's step keeps for itself
        act = {a: actions[i] for i, a in enumerate(self.agents)}
        obs_d, env_state, rew_d, done_d, info_j = self.jaxmarl_env.step_env(
            key_step, state.env_state, act
        )
        obs = self._stack_obs(obs_d)
        reward = jnp.stack([jnp.asarray(rew_d[a], jnp.float32) for a in self.agents])
        # Envs without per-agent dones fall back to the episode's.
        agent_done = jnp.stack(
            [jnp.asarray(done_d.get(a, done_d["__all__"]), bool) for a in self.agents]
        )
        t = state.t + 1
        episode_over = jnp.asarray(done_d["__all__"], bool) | (t >= self.spec.horizon)
        episode_over = episode_over | jnp.all(agent_done)
        done = agent_done | episode_over

        info = self._stack_info(info_j)
        info["decision"] = ~state.agent_done
        # Cut by the time limit, not ended by the env: jaxmarl observations carry no time, so
        # the trainer bootstraps V(s_T) here instead of treating s_T as terminal.
        terminal = jnp.asarray(done_d["__all__"], bool) | jnp.all(agent_done)
        info["truncated"] = (t >= self.spec.horizon) & ~terminal
        info["metrics"] = self._metrics(env_state, t)
        new_state = JaxMARLState(
            env_state=env_state,
            t=t,
            agent_done=agent_done,
            global_state=self._global(obs_d, obs),
        )
        return obs, new_state, reward, done, info

    def avail_actions(self, state: JaxMARLState) -> Array:
        """bool [N, A]: jaxmarl's ``get_avail_actions`` stacked (all of an agent's own
        actions when the env has none). An agent left with no action gets slot 0, so that
        every row has one (never happens in MPE or SMAX, where dead units keep "stop")."""
        n, a = self.spec.num_agents, self.spec.num_actions
        own = jnp.arange(a)[None, :] < jnp.asarray(self._num_actions_per_agent)[:, None]
        if not self._has_avail:
            return own
        masks = self.jaxmarl_env.get_avail_actions(state.env_state)
        mask = jnp.stack(
            [
                jnp.pad(jnp.asarray(masks[ag], bool), (0, a - masks[ag].shape[-1]))
                for ag in self.agents
            ]
        )
        mask = mask & own
        slot0 = jnp.zeros((n, a), bool).at[:, 0].set(True)
        return jnp.where(mask.any(axis=-1, keepdims=True), mask, slot0)

    def global_state(self, state: JaxMARLState) -> Array:
        """float32 [G]: jaxmarl's ``"world_state"`` observation where the env has one
        (SMAX), else the stacked, padded obs of all agents flattened (``G = N * D``)."""
        return state.global_state

    # ------------------------------------------------------------------ helpers

    def _stack_obs(self, obs_d: dict) -> Array:
        d = self._obs_dim
        rows = []
        for agent, size in zip(self.agents, self._obs_sizes):
            row = jnp.ravel(obs_d[agent]).astype(jnp.float32)
            rows.append(row if size == d else jnp.pad(row, (0, d - size)))
        return jnp.stack(rows)  # [N, D]

    def _global(self, obs_d: dict, obs: Array) -> Array:
        if self._has_world_state:
            return jnp.ravel(obs_d["world_state"]).astype(jnp.float32)  # [G]
        return obs.reshape(-1)  # [N * D]

    def _stack_info(self, info_j: dict) -> dict:
        out = {}
        for k, v in info_j.items():
            key = f"jaxmarl_{k}" if k in _RESERVED_INFO else k
            if isinstance(v, dict) and all(a in v for a in self.agents):
                out[key] = jnp.stack([jnp.asarray(v[a]) for a in self.agents])  # [N, ...]
            else:
                out[key] = jax.tree_util.tree_map(jnp.asarray, v)
        return out

    def _metrics(self, env_state: Any, t: Array) -> dict[str, Array]:
        metrics = {"episode_step": t.astype(jnp.float32)}
        if self._smax_core is not None:
            core, num_allies = self._smax_core(env_state)
            alive = core.unit_alive
            allies, enemies = alive[:num_allies], alive[num_allies:]
            metrics["won"] = (jnp.any(allies) & ~jnp.any(enemies)).astype(jnp.float32)
            metrics["allies_alive"] = jnp.mean(allies.astype(jnp.float32))
            metrics["enemies_alive"] = jnp.mean(enemies.astype(jnp.float32))
        return metrics


def _family(env_name: str) -> str:
    if env_name.startswith("MPE_"):
        return "mpe"
    return "smax" if env_name in _SMAX_ENVS else "jaxmarl"


def _size(shape: tuple[int, ...]) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out


def _has_avail_actions(env, state_shape) -> bool:
    """Whether the env implements ``get_avail_actions`` (MPE does not: the base raises)."""
    try:
        jax.eval_shape(env.get_avail_actions, state_shape)
    except (NotImplementedError, AttributeError):
        return False
    return True


def _smax_core_getter(env):
    """How to reach SMAX's own state: ``HeuristicEnemySMAX`` nests it under ``.state``."""
    from jaxmarl.environments.smax.heuristic_enemy_smax_env import EnemySMAX

    num_allies = int(env.num_allies)
    if isinstance(env, EnemySMAX):
        return lambda s: (s.state, num_allies)
    return lambda s: (s, num_allies)


def _smax_scenario(map_name: str):
    from jaxmarl.environments.smax.smax_env import MAP_NAME_TO_SCENARIO, map_name_to_scenario

    if map_name not in MAP_NAME_TO_SCENARIO:
        raise ScenarioError(
            f"unknown SMAX map {map_name!r}; known: {', '.join(sorted(MAP_NAME_TO_SCENARIO))}"
        )
    return map_name_to_scenario(map_name)
