"""The expert executor: follows each agent's validated plan in the env and records it.

A scripted controller, vectorised over the agent axis and run as one ``jax.lax.scan`` over
the episode inside ``jax.jit``. It records exactly what the agents' own rollouts record
(:class:`leed_jax.types.Transition`, axes ``[T, N, ...]``), so demonstrations and online data
share one format.

Plans arrive as padded target arrays ``[N, L]`` (each row padded with its last target); each
agent keeps a pointer into its row:

* traffic — the row is the full node path after the origin (consecutive nodes adjacent). The
  pointer moves on when the vehicle's decision node (the node ahead) is its current target; the action is
  ``env.slot_towards(state, target)``. The plan's links (:func:`traffic_route`) go to
  ``env.step(..., route=...)`` as well (the part from the vehicle's current link on), so
  that a vehicle crossing several nodes within one step follows its plan there too instead
  of the network's free-flow fastest links.
* MPE — the row is a landmark sequence. The pointer moves on when the agent is within
  ``MPE_REACHED`` of its landmark (the last one is held). The action is the discrete force
  (0 none, 1 −x, 2 +x, 3 −y, 4 +y; jaxmarl's ``_decode_discrete_action``) whose predicted
  *stopping point* — where the agent would coast to after this step under MPE's damping — lies
  closest to the landmark, which brakes in time instead of overshooting.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from leed_jax.types import Transition

MPE_REACHED = 0.05  # distance at which an MPE agent moves on to its next landmark
_TRAFFIC_AT_NODE = 1  # leed_jax.envs.traffic.AT_NODE
_TRAFFIC_ARRIVED = 3


class ExpertRollout(NamedTuple):
    """One executed episode."""

    transitions: Transition  # [T, N, ...]
    returns: jax.Array  # [N] sum of each agent's rewards until it was done
    metrics: dict  # env's info["metrics"] at the last step, scalars
    extras: dict  # family-specific outcome, see _traffic_extras / _mpe_extras


Policy = Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


def _traffic_policy(env) -> Policy:
    def policy(state, targets, ptr):
        rows = jnp.arange(targets.shape[0])
        # state.node is the vehicle's decision node (the node ahead while on a link), so the
        # pointer moves on as soon as the current target is the node it will decide at.
        # A vehicle may cross several nodes within one step; resynchronise the pointer to
        # just past the decision node's first occurrence in the rest of the plan.
        cols = jnp.arange(targets.shape[1])
        match = (targets == state.node[:, None]) & (cols[None, :] >= ptr[:, None])
        ptr = jnp.where(match.any(axis=1), jnp.argmax(match, axis=1) + 1, ptr)
        ptr = jnp.minimum(ptr, targets.shape[1] - 1)
        return env.slot_towards(state, targets[rows, ptr]), ptr

    return policy


def traffic_route(env, origin: jax.Array, targets: jax.Array) -> jax.Array:
    """``[N, L]`` int32 link ids of the node paths ``origin [N]`` + ``targets [N, L]`` (the
    executor's padded rows): entry ``j`` is the link into ``targets[:, j]`` (the fastest one
    where parallel links join the two nodes), −1 where the row repeats a node (padding) or no
    link joins them. Pure JAX, O(N·L·K)."""
    out = jnp.asarray(env.network.out_links)  # [V, K]
    dst = jnp.asarray(env.network.link_dst)
    tfree = jnp.asarray(env.network.link_tfree, jnp.float32)
    prev = jnp.concatenate([origin[:, None], targets[:, :-1]], axis=1)  # [N, L]
    cand = out[prev]  # [N, L, K]
    cs = jnp.maximum(cand, 0)
    match = (cand >= 0) & (dst[cs] == targets[..., None])
    cost = jnp.where(match, tfree[cs], jnp.inf)
    best = jnp.take_along_axis(cand, jnp.argmin(cost, axis=-1)[..., None], -1)[..., 0]
    return jnp.where(match.any(axis=-1) & (prev != targets), best, -1).astype(jnp.int32)


def remaining_route(route: jax.Array, ptr: jax.Array) -> jax.Array:
    """``route [N, L]`` with the links before the vehicle's current one masked (−1): after the
    policy step the pointer names the target after the decision node, so the vehicle is on or
    past link ``ptr − 1`` (masking what it has passed keeps a plan that repeats a link from
    sending it round again)."""
    cols = jnp.arange(route.shape[1])
    return jnp.where(cols[None, :] >= ptr[:, None] - 1, route, -1)


def _mpe_dynamics(env) -> tuple[int, float, float, jax.Array]:
    je = env.jaxmarl_env
    n = int(je.num_agents)
    gain = jnp.asarray(np.asarray(je.accel)[:n] / np.asarray(je.mass)[:n] * je.dt, jnp.float32)
    return n, float(je.dt), float(je.damping), gain


# Force direction of each discrete MPE action.
_MPE_DIRECTIONS = jnp.array([[0, 0], [-1, 0], [1, 0], [0, -1], [0, 1]], jnp.float32)  # [5, 2]


def _stopping_force(pos, vel, goal, gain, dt: float, damping: float) -> jax.Array:
    """The discrete MPE force whose predicted stopping point lies closest to ``goal``
    (``pos``, ``vel``, ``goal`` ``[..., 2]``, ``gain`` ``[...]``; returns ``[...]`` int32).
    MPE integrates p += v·dt, then v = v·(1 − damping) + u·gain; coasting afterwards adds
    v·dt/damping."""
    v_next = vel[..., None, :] * (1 - damping) + _MPE_DIRECTIONS * gain[..., None, None]
    stop = (pos + vel * dt)[..., None, :] + v_next * (dt / damping)  # [..., 5, 2]
    cost = jnp.linalg.norm(stop - goal[..., None, :], axis=-1)  # [..., 5]
    return jnp.argmin(cost, axis=-1).astype(jnp.int32)


def _mpe_policy(env) -> Policy:
    n, dt, damping, gain = _mpe_dynamics(env)

    def policy(state, targets, ptr):
        es = state.env_state
        pos, vel = es.p_pos[:n], es.p_vel[:n]  # [N, 2]
        landmarks = es.p_pos[n:]  # [L, 2]
        rows = jnp.arange(n)
        near = jnp.linalg.norm(pos - landmarks[targets[rows, ptr]], axis=-1) < MPE_REACHED
        ptr = jnp.minimum(ptr + near.astype(ptr.dtype), targets.shape[1] - 1)
        goal = landmarks[targets[rows, ptr]]  # [N, 2]
        return _stopping_force(pos, vel, goal, gain, dt, damping), ptr

    return policy


# DAgger labelling enumerates the agent-landmark assignments; 7! = 5,040 is still cheap.
MPE_LABEL_MAX_AGENTS = 7


def _mpe_labeler(env) -> Callable[[jax.Array], jax.Array]:
    """The MPE planner as a function of each agent's own observation (spread's layout: own
    velocity, own position, the landmarks relative, the other agents relative, …): the
    assignment of the *current* positions minimising the summed distance (every agent's
    position is in its observation; brute force over the assignments), then the executor's
    force rule towards the agent's landmark. On the planner's own trajectories it takes the
    planner's action on all but the ~1 % of steps where the assignment of the current
    positions differs from the episode's first one."""
    import itertools

    from leed_jax.dg.errors import DGError

    name = getattr(env, "env_name", None)
    if name != "MPE_simple_spread_v3":  # the observation layout below is spread's
        raise DGError(f"the MPE expert labels observations of MPE_simple_spread_v3 only "
                      f"(got {name!r})")
    je = env.jaxmarl_env
    n, dt, damping, gain = _mpe_dynamics(env)
    lm = int(je.num_landmarks)
    if n > lm or n > MPE_LABEL_MAX_AGENTS:
        raise DGError(f"the MPE expert labels observations for at most {MPE_LABEL_MAX_AGENTS} "
                      f"agents and no more agents than landmarks (got {n} agents, {lm} landmarks)")
    perms = jnp.asarray(list(itertools.permutations(range(lm), n)), jnp.int32)  # [P, N]

    def one(o, g):
        vel, pos = o[0:2], o[2:4]
        landmarks = o[4:4 + 2 * lm].reshape(lm, 2)  # relative to the agent
        others = o[4 + 2 * lm:4 + 2 * lm + 2 * (n - 1)].reshape(n - 1, 2)
        agents = jnp.concatenate([jnp.zeros((1, 2), o.dtype), others])  # the agent first
        dist = jnp.linalg.norm(agents[:, None] - landmarks[None], axis=-1)  # [N, L]
        mine = perms[jnp.argmin(dist[jnp.arange(n)[None, :], perms].sum(-1)), 0]
        return _stopping_force(pos, vel, pos + landmarks[mine], g, dt, damping)

    def label(obs: jax.Array) -> jax.Array:
        flat = obs.reshape((-1, n, obs.shape[-1]))
        acts = jax.vmap(jax.vmap(one), in_axes=(0, None))(flat, gain)
        return acts.reshape(obs.shape[:-1])

    return label


def expert_labeler(env) -> Callable[[jax.Array], jax.Array] | None:
    """The family's expert as a pure function of the observations, ``obs [..., N, D] ->
    action [..., N]``, for DAgger (the warm start's ``warm_start_dagger_rounds``): MPE has one
    (the planner's assignment and force rule, see ``_mpe_labeler``); None for families whose
    expert needs more than what the agent observes (traffic: the planner's routes come from
    the whole demand's equilibrium)."""
    return _mpe_labeler(env) if getattr(env, "family", None) == "mpe" else None


def _traffic_extras(env, state, peak_counts):
    return {
        "travel_time": state.travel_time,  # [N] s
        "arrived": state.status == _TRAFFIC_ARRIVED,  # [N]
        "peak_link_counts": peak_counts,  # [E] most vehicles on each link at once
    }


def _mpe_extras(env, state, targets, ptr):
    n = int(env.jaxmarl_env.num_agents)
    pos = state.env_state.p_pos
    goal = pos[n:][targets[jnp.arange(n), ptr]]
    return {
        "agent_pos": pos[:n],  # [N, 2]
        "landmark_pos": pos[n:],  # [L, 2]
        "distance": jnp.linalg.norm(pos[:n] - goal, axis=-1),  # [N] to its final landmark
    }


def _build(env):
    family = env.family
    if family == "traffic":
        policy = _traffic_policy(env)
    elif family == "mpe":
        policy = _mpe_policy(env)
    else:
        from leed_jax.dg.errors import DGError

        raise DGError(f"the DG stage has no executor for env family {family!r} (traffic, mpe)")
    horizon = env.spec.horizon

    def run(key, obs, state, targets):
        """``targets [N, L] int32`` → :class:`ExpertRollout` of one episode from ``state``."""
        n = targets.shape[0]
        ptr0 = jnp.zeros(n, jnp.int32)
        e = env.spec.global_state_dim - 2 if family == "traffic" else 1
        peak0 = jnp.zeros(e, jnp.float32)

        route = traffic_route(env, state.origin, targets) if family == "traffic" else None

        def body(carry, key_t):
            state, obs, ptr, done_before, peak = carry
            avail = env.avail_actions(state)  # [N, A]
            action, ptr = policy(state, targets, ptr)
            if family == "traffic":
                obs2, state2, reward, done, info = env.step(key_t, state, action, route=remaining_route(route, ptr))
            else:
                obs2, state2, reward, done, info = env.step(key_t, state, action)
            if family == "traffic":
                peak = jnp.maximum(peak, info["link_counts"])
            live = ~done_before
            tr = Transition(obs, action, avail, reward * live, done, info["decision"] & live)
            return (state2, obs2, ptr, done_before | done, peak), (tr, info["metrics"])

        keys = jax.random.split(key, horizon)
        carry0 = (state, obs, ptr0, jnp.zeros(n, bool), peak0)
        (state_f, _, ptr_f, _, peak), (traj, metrics) = jax.lax.scan(body, carry0, keys)
        last = jax.tree_util.tree_map(lambda m: m[-1], metrics)
        if family == "traffic":
            extras = _traffic_extras(env, state_f, peak)
        else:
            extras = _mpe_extras(env, state_f, targets, ptr_f)
        return ExpertRollout(traj, traj.reward.sum(0), last, extras)

    return jax.jit(run)


_EXECUTORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def executor_for(env) -> Callable[..., ExpertRollout]:
    """The jitted executor of ``env`` (built once per env object, then reused):
    ``run(key, obs [N, D], state, targets [N, L]) -> ExpertRollout``."""
    fn = _EXECUTORS.get(env)
    if fn is None:
        fn = _EXECUTORS[env] = _build(env)
    return fn


def pad_targets(seqs: list[list[int]], multiple: int = 16) -> np.ndarray:
    """Ragged per-agent target lists → ``[N, L] int32``, each row padded with its last entry;
    ``L`` is rounded up to ``multiple`` so that reruns rarely recompile."""
    width = max(1, max(len(s) for s in seqs))
    width = -(-width // multiple) * multiple
    out = np.empty((len(seqs), width), np.int32)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
        out[i, len(s):] = s[-1]
    return out
