"""Traffic routing: vehicles route themselves across a road network under BPR congestion.

Each vehicle (agent) departs from its origin at its departure step and chooses, at every
intersection it reaches, one outgoing link (action = slot in the node's padded out-link list).
While on a link it progresses by ``dt / t_link`` per step, with the link's current travel time
from the BPR law ``t_free · (1 + α (n_other / c)^β)`` (``n_other``: the other vehicles on the
link, so a lone vehicle drives at exactly free flow). A step costs O(N + E): link loads are
segment sums, everything else is a gather; there is no Python loop over agents.

Time: one step is ``dt`` seconds. A vehicle that reaches a node at the end of step t decides at
step t+1 and moves on in that same step, so a lone vehicle's travel time is exactly the sum of
its links' free-flow times when those are multiples of ``dt``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from leed_jax.envs.base import EnvSpec, ScenarioError
from leed_jax.envs.demand import Demand
from leed_jax.envs.network import RoadNetwork

WAITING, AT_NODE, ON_LINK, ARRIVED = 0, 1, 2, 3
_EPS = 1e-5
# Per-agent features before the per-slot block; see TrafficEnv._obs.
_OWN_FEATURES = 12
_SLOT_FEATURES = 5


@dataclasses.dataclass(frozen=True)
class TrafficParams:
    """Dynamics and reward settings. Rewards are in units of ``time_scale`` seconds."""

    dt: float = 10.0
    horizon: int = 60
    alpha: float = 0.15
    beta: float = 4.0
    arrival_bonus: float = 1.0
    late_penalty: float = 1.0
    time_scale: float = 60.0
    team_reward: float = 0.0

    def __post_init__(self):
        checks = {
            "dt": self.dt > 0,
            "horizon": self.horizon > 0,
            "alpha": self.alpha >= 0,
            "beta": self.beta >= 0,
            "time_scale": self.time_scale > 0,
            "team_reward": 0.0 <= self.team_reward <= 1.0,
        }
        for name, ok in checks.items():
            if not ok:
                rng = "in [0, 1]" if name == "team_reward" else ("> 0" if name in ("dt", "horizon", "time_scale") else ">= 0")
                raise ScenarioError(f"traffic parameter {name}={getattr(self, name)!r} must be {rng}")


@struct.dataclass
class TrafficState:
    t: jax.Array  # [] int32 step
    status: jax.Array  # [N] int32: WAITING, AT_NODE, ON_LINK, ARRIVED
    node: jax.Array  # [N] int32: node where it stands, or the downstream node of its link
    link: jax.Array  # [N] int32: current link, -1 when not on a link
    progress: jax.Array  # [N] float32: fraction of the current link done
    travel_time: jax.Array  # [N] float32 seconds since departure
    arrived_at: jax.Array  # [N] int32 step of arrival, -1


class TrafficEnv:
    """The traffic routing env (see the module docstring and docs/DESIGN.md)."""

    family = "traffic"

    def __init__(self, network: RoadNetwork, demand: Demand, params: TrafficParams = TrafficParams(), name: str = "traffic"):
        if demand.num_agents <= 0:
            raise ScenarioError("demand has no vehicles")
        if int(demand.departure.max()) >= params.horizon:
            raise ScenarioError(
                f"a vehicle departs at step {int(demand.departure.max())}, at or after the horizon {params.horizon}"
            )
        if not np.isfinite(network.tt[demand.origin, demand.destination]).all():
            raise ScenarioError("demand has an origin-destination pair that the network cannot connect")
        self.network, self.demand, self.params, self.name = network, demand, params, name
        n, k, e = demand.num_agents, network.max_out_degree, network.num_links
        self.spec = EnvSpec(
            num_agents=n,
            obs_dim=_OWN_FEATURES + _SLOT_FEATURES * k,
            num_actions=k,
            global_state_dim=e + 2,
            horizon=params.horizon,
        )
        f32 = jnp.float32
        finite = np.isfinite(network.tt)
        tt_scale = float(network.tt[finite].max()) or 1.0
        xy = network.node_xy
        lo, span = xy.min(0), np.maximum(xy.max(0) - xy.min(0), 1e-6)
        # Static tables, device-resident constants of the jitted functions.
        self._out = jnp.asarray(network.out_links)  # [V, K]
        self._dst = jnp.asarray(network.link_dst)  # [E]
        self._tfree = jnp.asarray(network.link_tfree, f32)  # [E]
        self._cap = jnp.asarray(network.link_capacity, f32)  # [E]
        self._len_n = jnp.asarray(network.link_length / network.link_length.max(), f32)
        self._tfree_n = jnp.asarray(network.link_tfree / network.link_tfree.max(), f32)
        self._tt = jnp.asarray(np.where(finite, network.tt, np.inf), f32)  # [V, V]
        self._tt_scale = tt_scale
        self._next_hop = jnp.asarray(network.next_hop)
        self._xy = jnp.asarray((xy - lo) / span, f32)  # [V, 2] in [0, 1]
        self._origin = jnp.asarray(demand.origin)
        self._dest = jnp.asarray(demand.destination)
        self._depart = jnp.asarray(demand.departure)
        self._free_od = jnp.asarray(network.tt[demand.origin, demand.destination], f32)  # [N]

    # ------------------------------------------------------------------ protocol
    def reset(self, key: jax.Array) -> tuple[jax.Array, TrafficState]:
        """Initial state (the demand is fixed by the scenario, so ``key`` is unused)."""
        del key
        n = self.spec.num_agents
        status = jnp.where(self._depart <= 0, AT_NODE, WAITING).astype(jnp.int32)
        state = TrafficState(
            t=jnp.zeros((), jnp.int32),
            status=status,
            node=self._origin,
            link=-jnp.ones(n, jnp.int32),
            progress=jnp.zeros(n, jnp.float32),
            travel_time=jnp.zeros(n, jnp.float32),
            arrived_at=-jnp.ones(n, jnp.int32),
        )
        return self._obs(state), state

    def step(self, key, state: TrafficState, actions: jax.Array):
        del key
        p = self.params
        deciding = state.status == AT_NODE  # [N]
        active = deciding | (state.status == ON_LINK)
        # Decisions: an invalid action falls back to the first allowed slot (masks make this rare).
        avail = self.avail_actions(state)  # [N, K]
        a = jnp.clip(actions.astype(jnp.int32), 0, self.spec.num_actions - 1)
        ok = jnp.take_along_axis(avail, a[:, None], 1)[:, 0]
        a = jnp.where(ok, a, jnp.argmax(avail, axis=1))
        chosen = self._out[state.node, a]  # [N]
        link = jnp.where(deciding, chosen, state.link)
        status = jnp.where(deciding, ON_LINK, state.status)
        progress = jnp.where(deciding, 0.0, state.progress)
        # Congestion from the loads after this step's entries: O(N + E) segment sum.
        on_link = status == ON_LINK
        counts = self._link_counts(status, link)
        link_safe = jnp.maximum(link, 0)
        n_other = jnp.maximum(counts[link_safe] - 1.0, 0.0)
        t_link = self._tfree[link_safe] * (1.0 + p.alpha * (n_other / self._cap[link_safe]) ** p.beta)
        progress = jnp.where(on_link, progress + p.dt / t_link, progress)
        reached = on_link & (progress >= 1.0 - _EPS)
        node = jnp.where(on_link, self._dst[link_safe], state.node)
        arrived_now = reached & (node == self._dest)
        status = jnp.where(reached, jnp.where(arrived_now, ARRIVED, AT_NODE), status)
        link = jnp.where(reached, -1, link)
        progress = jnp.where(reached, 0.0, progress)
        travel_time = state.travel_time + jnp.where(active, p.dt, 0.0)
        t = state.t + 1
        status = jnp.where((status == WAITING) & (self._depart <= t), AT_NODE, status)
        arrived_at = jnp.where(arrived_now, t, state.arrived_at)
        new = TrafficState(t, status, node, link, progress, travel_time, arrived_at)

        at_horizon = t >= p.horizon
        arrived = status == ARRIVED
        reward = -(p.dt / p.time_scale) * active.astype(jnp.float32)
        reward += p.arrival_bonus * arrived_now
        reward -= p.late_penalty * (at_horizon & ~arrived)
        if p.team_reward > 0:
            reward = (1.0 - p.team_reward) * reward + p.team_reward * reward.mean()
        done = arrived | at_horizon
        info = {
            "decision": deciding,
            "metrics": self._metrics(new),
            "arrived": arrived_now,
            "travel_time": travel_time,
            "link_counts": self._link_counts(status, link),
        }
        return self._obs(new), new, reward.astype(jnp.float32), done, info

    def avail_actions(self, state: TrafficState) -> jax.Array:
        """bool [N, K]: slots of the vehicle's decision node (for a vehicle on a link, the node
        ahead) whose link exists and can still reach its destination. A vehicle with none
        (arrived) gets slot 0 only, so a masked categorical is always well defined."""
        links = self._out[state.node]  # [N, K]
        exists = links >= 0
        reach = jnp.isfinite(self._tt[self._dst[jnp.maximum(links, 0)], self._dest[:, None]])
        avail = exists & reach
        none = ~avail.any(axis=1)
        return avail.at[:, 0].set(avail[:, 0] | none)

    def global_state(self, state: TrafficState) -> jax.Array:
        """[E + 2]: occupancy ratio n/c of every link, the time fraction, the share still en route.
        Its size depends on the network only, so a centralised critic stays small at large N."""
        counts = self._link_counts(state.status, state.link)
        en_route = ((state.status == AT_NODE) | (state.status == ON_LINK)).mean()
        frac = state.t.astype(jnp.float32) / self.params.horizon
        return jnp.concatenate([counts / self._cap, jnp.stack([frac, en_route])])

    # ------------------------------------------------------------------ helpers
    def slot_towards(self, state: TrafficState, next_node: jax.Array) -> jax.Array:
        """int32 [N]: the slot leading from each vehicle's decision node towards ``next_node``
        [N] (directly when adjacent, else along the free-flow shortest path)."""
        links = self._out[state.node]  # [N, K]
        dst = jnp.where(links >= 0, self._dst[jnp.maximum(links, 0)], -1)
        direct = (dst == next_node[:, None]).any(axis=1)
        hop = self._next_hop[state.node, next_node]
        target = jnp.where(direct, next_node, hop)
        avail = self.avail_actions(state)
        match = (dst == target[:, None]) & avail
        slot = jnp.where(match.any(axis=1), jnp.argmax(match, axis=1), jnp.argmax(avail, axis=1))
        return slot.astype(jnp.int32)

    def _link_counts(self, status: jax.Array, link: jax.Array) -> jax.Array:
        """[E] vehicles on each link: an O(N + E) segment sum."""
        on = status == ON_LINK
        return jax.ops.segment_sum(on.astype(jnp.float32), jnp.where(on, link, 0), self.network.num_links)

    def _metrics(self, s: TrafficState) -> dict:
        arrived = s.status == ARRIVED
        count = jnp.maximum(arrived.sum(), 1)
        return {
            "arrival_rate": arrived.mean(),
            "mean_travel_time": jnp.where(arrived, s.travel_time, 0.0).sum() / count,
            "mean_delay": jnp.where(arrived, s.travel_time - self._free_od, 0.0).sum() / count,
        }

    def _obs(self, s: TrafficState) -> jax.Array:
        """[N, 12 + 5K] local observation: status one-hot (4), link progress, time fraction,
        steps until departure (fraction of horizon), position xy, destination xy, free-flow time
        to destination; per out-link slot: valid, length, free-flow time, occupancy n/c and
        free-flow time to the destination through that link."""
        h = float(self.params.horizon)
        occ = self._link_counts(s.status, s.link) / self._cap  # [E]
        scale = self._tt_scale
        own = jnp.concatenate(
            [
                jax.nn.one_hot(s.status, 4),
                s.progress[:, None],
                jnp.broadcast_to(s.t / h, (self.spec.num_agents, 1)),
                (jnp.maximum(self._depart - s.t, 0) / h)[:, None],
                self._xy[s.node],
                self._xy[self._dest],
                (self._tt[s.node, self._dest] / scale)[:, None],
            ],
            axis=1,
        )
        links = self._out[s.node]  # [N, K]
        valid = self.avail_actions(s) & (links >= 0)
        ls = jnp.maximum(links, 0)
        via = (self._tfree[ls] + self._tt[self._dst[ls], self._dest[:, None]]) / scale
        slot = jnp.stack(
            [valid, self._len_n[ls], self._tfree_n[ls], occ[ls], jnp.where(valid, via, 0.0)], axis=-1
        )  # [N, K, 5]
        slot = jnp.where(valid[..., None], slot, 0.0)
        return jnp.concatenate([own, slot.reshape(self.spec.num_agents, -1)], axis=1).astype(jnp.float32)
