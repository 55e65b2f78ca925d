"""Traffic routing: vehicles route themselves across a road network; links are spatial queues.

Each vehicle (agent) departs from its origin and chooses, for the next intersection it will
reach, one outgoing link (action = slot in that node's padded out-link list). Three link models
(``TrafficParams.link_model``):

``queue`` (default) — a spatial queue (point queue with storage), as in MATSim's queue
    simulation (Gawron 1998; Cetin, Burri & Nagel 2003) and SUMO's mesoscopic model (Eissfeldt
    2004): a vehicle entering link ``e`` at time ``τ`` reaches its end at ``τ + t_e``
    (``t_e`` = free-flow time, or BPR of the occupancy at entry with ``queue_running="bpr"``);
    it leaves in FIFO order, no sooner than ``h_e = 3600 / q_e`` seconds after the previous
    vehicle left (``q_e`` flow capacity, veh/h), and only if the next link holds fewer than
    its storage ``S_f`` vehicles (else it waits: spillback). Exit time of the k-th vehicle:
    ``x_k = max(τ_k + t_e, x_{k-1} + h_e, time space appeared downstream)``.
``bpr`` — BPR on occupancy without capacity or storage: link time fixed at entry,
    ``t_e · (1 + b_e (n_e / c_e)^{p_e})`` with the other vehicles ``n_e`` on the link.
``step`` — the original step-rounded BPR model (progress ``dt / t_link`` per step, leftover
    time lost at a link's end, at most one link per step); kept for comparisons.

Time (queue and bpr). Each vehicle carries an exact continuous clock: a step covers
``[t·dt, (t+1)·dt)`` and a vehicle that reaches a node within it goes on with its leftover time
(several nodes per step if its links are short). Its action at step t is a pre-committed
choice for the *next* node it reaches (a vehicle on a link already sees that node's
out-links); further nodes reached within the same step follow the free-flow fastest path
(``RoadNetwork.link_next``), so a lone vehicle's travel time is its route's continuous
free-flow time for any dt. A caller that knows each vehicle's intended route (the DG
executor, the equilibrium planner) passes it as ``step(..., route=[N, L] link ids)``; those
in-step hops then follow the route wherever it is an allowed turn. Without it a vehicle whose
chosen link is off its fastest path is sent on along the fastest path from there, which may
turn straight back (a U-turn where the network allows one): the observation's per-slot
"time to destination through this link" is computed from the same table, so a policy sees
what a choice implies, but a fixed multi-node plan cannot be expressed by one action per step
(executed without ``route``, such plans can loop until the horizon on short links).
``info["decision"]`` marks the vehicles whose action was used (they crossed their next node,
or left their origin, in this step). The per-step work is a
loop of at most ``moves`` passes (``jax.lax.while_loop``, stopping after a pass in which
nobody moved; shapes stay static); each pass lets the head of every
link's queue (and every departing vehicle) move once, so one link releases at most ``moves``
vehicles per step; the default covers the largest ``q_e · dt``. Vehicles that could still
have moved when the passes ran out are counted in ``info["pending_moves"]`` (0 in a
well-sized setup). Each pass is O(N + E) (``queue_impl="vehicles"``: gathers and a few scatters
over all vehicles), or O(E) after O(M·N) per step (``"heads"``, :meth:`TrafficEnv._move_heads`:
only the 3E link and departer heads are looked at; identical results).

Turn restrictions: a vehicle on link e may only take the out-links that
``RoadNetwork.turn_allowed[e]`` permits (SUMO lane connections), and only those from which its
destination stays reachable.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from leed_jax.envs.base import EnvSpec, ScenarioError
from leed_jax.envs.demand import Demand, RandomDemandModel
from leed_jax.envs.network import RoadNetwork

WAITING, AT_NODE, ON_LINK, ARRIVED = 0, 1, 2, 3
LINK_MODELS = ("queue", "bpr", "step")
QUEUE_IMPLS = ("auto", "vehicles", "heads")
_EPS = 1e-5
_MAX_MOVES = 32
# Per-agent features before the per-slot block; see TrafficEnv._obs.
_OWN_FEATURES = 12
_SLOT_FEATURES = 5


@dataclasses.dataclass(frozen=True)
class TrafficParams:
    """Dynamics and reward settings. Rewards are in units of ``time_scale`` seconds.

    link_model: "queue" | "bpr" | "step" (module docstring). queue_running: "free" | "bpr",
    a queue link's running time. moves: passes per step (0: enough for the busiest link,
    ``ceil(max q_e · dt / 3600) + 2``, at most 32). stuck_time: seconds without crossing a
    node after which an en-route vehicle counts as stuck (SUMO's time-to-teleport default).
    alpha, beta: BPR coefficients of the ``step`` model (``bpr`` uses the network's per-link
    ``link_bpr_b`` / ``link_bpr_power``). queue_impl: how the queue model's passes are computed,
    same results either way: "vehicles" (every pass looks at all N vehicles), "heads" (a sort
    per step, then every pass looks at the 3E queue and departure heads only; queue model with
    free running time), "auto" (heads where it applies and 3E < N).
    """

    dt: float = 10.0
    horizon: int = 60
    alpha: float = 0.15
    beta: float = 4.0
    arrival_bonus: float = 1.0
    late_penalty: float = 1.0
    time_scale: float = 60.0
    team_reward: float = 0.0
    link_model: str = "queue"
    queue_running: str = "free"
    moves: int = 0
    stuck_time: float = 300.0
    queue_impl: str = "auto"

    def __post_init__(self):
        checks = {
            "dt": self.dt > 0,
            "horizon": self.horizon > 0,
            "alpha": self.alpha >= 0,
            "beta": self.beta >= 0,
            "time_scale": self.time_scale > 0,
            "team_reward": 0.0 <= self.team_reward <= 1.0,
            "moves": 0 <= self.moves <= _MAX_MOVES,
            "stuck_time": self.stuck_time > 0,
        }
        for name, ok in checks.items():
            if not ok:
                rng = {
                    "team_reward": "in [0, 1]",
                    "moves": f"in 0..{_MAX_MOVES}",
                }.get(name, "> 0" if name in ("dt", "horizon", "time_scale", "stuck_time") else ">= 0")
                raise ScenarioError(f"traffic parameter {name}={getattr(self, name)!r} must be {rng}")
        if self.link_model not in LINK_MODELS:
            raise ScenarioError(f"traffic parameter link_model={self.link_model!r} must be one of {', '.join(LINK_MODELS)}")
        if self.queue_impl not in QUEUE_IMPLS:
            raise ScenarioError(f"traffic parameter queue_impl={self.queue_impl!r} must be one of {', '.join(QUEUE_IMPLS)}")
        if self.queue_running not in ("free", "bpr"):
            raise ScenarioError(f"traffic parameter queue_running={self.queue_running!r} must be free or bpr")


def auto_moves(net: RoadNetwork, dt: float) -> int:
    """Passes per step that let the busiest link release ``q_e · dt`` vehicles and let a
    vehicle on a fastest path cross every node it reaches within ``dt`` (its leftover time
    runs on): ``max(ceil(max q_e · dt / 3600), most nodes a fastest path crosses in dt) + 2``,
    within 2..32. Routes off the fastest paths that cross more nodes per step than this are
    counted in ``info["pending_moves"]``."""
    cap = math.ceil(float(net.link_flow_capacity.max()) / 3600.0 * dt)
    # Walk every (link, destination) fastest path at once: how many further links end within dt.
    e, v = net.link_next.shape
    cur = np.repeat(np.arange(e)[:, None], v, 1)
    clock = np.zeros((e, v))
    hops = np.zeros((e, v), np.int64)
    live = net.link_next >= 0
    for _ in range(_MAX_MOVES):
        nxt = net.link_next[cur, np.arange(v)[None, :]]
        live &= nxt >= 0
        if not live.any():
            break
        clock = np.where(live, clock + net.link_tfree[np.maximum(nxt, 0)], clock)
        live &= clock < dt
        hops += live
        cur = np.where(live, nxt, cur)
    return int(min(_MAX_MOVES, max(2, max(cap, int(hops.max()) + 1) + 1)))


@struct.dataclass
class TrafficState:
    """Env state. Times are seconds since the episode start (float32)."""

    t: jax.Array  # [] int32 step
    status: jax.Array  # [N] int32: WAITING, AT_NODE (departed, not yet on a link), ON_LINK, ARRIVED
    node: jax.Array  # [N] int32: the vehicle's decision node: origin, the head of its link, destination
    link: jax.Array  # [N] int32: current link, -1 when not on a link
    prev_link: jax.Array  # [N] int32: the link before it (-1: none yet; queue and bpr models)
    progress: jax.Array  # [N] float32: fraction of the current link's running time done
    enter: jax.Array  # [N] float32: time it entered its link
    ready: jax.Array  # [N] float32: time it reaches its link's end (queue, bpr)
    ticket: jax.Array  # [N] int32: FIFO position on its link (queue)
    blocked: jax.Array  # [N] bool: at the head of its queue, refused by a full next link
    last_move: jax.Array  # [N] float32: time of its departure or last node crossing
    arrive_time: jax.Array  # [N] float32: arrival time, -1 until arrived
    travel_time: jax.Array  # [N] float32: seconds en route so far (arrival - departure once arrived)
    arrived_at: jax.Array  # [N] int32 step of arrival, -1
    origin: jax.Array  # [N] int32 this episode's demand
    dest: jax.Array  # [N] int32
    depart: jax.Array  # [N] int32 departure step
    free_od: jax.Array  # [N] float32 free-flow time origin -> destination
    head: jax.Array  # [E] int32 vehicles that have left each link (queue ticket of its head)
    tail: jax.Array  # [E] int32 vehicles that have entered each link
    free_at: jax.Array  # [E] float32 earliest time the link's exit serves the next vehicle


class TrafficEnv:
    """The traffic routing env (see the module docstring and docs/DESIGN.md).

    ``demand`` is the scenario's fixed demand (used by every episode unless ``demand_model``
    is given and ``resample``: then ``reset(key)`` draws each episode's vehicles from it).
    """

    family = "traffic"

    def __init__(
        self,
        network: RoadNetwork,
        demand: Demand,
        params: TrafficParams = TrafficParams(),
        name: str = "traffic",
        demand_model: RandomDemandModel | None = None,
        resample: bool = False,
    ):
        if demand.num_agents <= 0:
            raise ScenarioError("demand has no vehicles")
        if int(demand.departure.max()) >= params.horizon:
            raise ScenarioError(
                f"a vehicle departs at step {int(demand.departure.max())}, at or after the horizon {params.horizon}"
            )
        if not np.isfinite(network.tt[demand.origin, demand.destination]).all():
            raise ScenarioError("demand has an origin-destination pair that the network cannot connect")
        if resample and demand_model is None:
            raise ScenarioError("resample=true needs a random demand model")
        if resample and demand_model.departure_window > params.horizon:
            raise ScenarioError(
                f"departure_window {demand_model.departure_window} exceeds the horizon {params.horizon}"
            )
        if resample and demand_model.num_agents != demand.num_agents:
            raise ScenarioError("the demand model and the fixed demand have different numbers of vehicles")
        self.network, self.demand, self.params, self.name = network, demand, params, name
        self.demand_model, self.resample = demand_model, bool(resample)
        n, k, e = demand.num_agents, network.max_out_degree, network.num_links
        self.spec = EnvSpec(
            num_agents=n,
            obs_dim=_OWN_FEATURES + _SLOT_FEATURES * k,
            num_actions=k,
            global_state_dim=e + 2,
            horizon=params.horizon,
        )
        flow = network.link_flow_capacity / 3600.0  # veh/s
        self.moves = params.moves or auto_moves(network, params.dt)
        heads_ok = params.link_model == "queue" and params.queue_running == "free"
        if params.queue_impl == "heads" and not heads_ok:
            raise ScenarioError("queue_impl='heads' needs link_model='queue' with queue_running='free'")
        # Ring of each link's vehicles by ticket (queue_impl="heads"): more slots than a link
        # ever holds plus the ticket window searched for its head.
        self._ring = int(np.ceil(network.link_storage.max())) + 2 * self.moves + 1
        ring_cells = network.num_links * self._ring
        self._heads = heads_ok and (
            params.queue_impl == "heads"
            or (params.queue_impl == "auto" and 3 * network.num_links < demand.num_agents
                and ring_cells <= 16 * demand.num_agents)
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
        self._cap = jnp.asarray(network.link_capacity, f32)  # [E] occupancy capacity (BPR)
        self._storage = jnp.asarray(network.link_storage, f32)  # [E] vehicles at jam
        self._headway = jnp.asarray(1.0 / flow, f32)  # [E] s between exits at capacity
        self._bpr_b = jnp.asarray(network.link_bpr_b, f32)  # [E]
        self._bpr_p = jnp.asarray(network.link_bpr_power, f32)  # [E]
        self._turn = jnp.asarray(network.turn_allowed)  # [E, K]
        self._link_tt = jnp.asarray(np.where(np.isfinite(network.link_tt), network.link_tt, np.inf), f32)  # [E, V]
        self._link_next = jnp.asarray(network.link_next)  # [E, V]
        self._src = jnp.asarray(network.link_src)  # [E]
        # Slot of each link in its tail node's out-link list (turn checks of routed hops).
        slot_of = np.zeros(network.num_links, np.int32)
        rows, cols = np.nonzero(network.out_links >= 0)
        slot_of[network.out_links[rows, cols]] = cols
        self._slot_of = jnp.asarray(slot_of)  # [E]
        self._len_n = jnp.asarray(network.link_length / network.link_length.max(), f32)
        self._tfree_n = jnp.asarray(network.link_tfree / network.link_tfree.max(), f32)
        self._tt = jnp.asarray(np.where(finite, network.tt, np.inf), f32)  # [V, V]
        self._tt_scale = tt_scale
        self._xy = jnp.asarray((xy - lo) / span, f32)  # [V, 2] in [0, 1]
        self._origin = jnp.asarray(demand.origin)
        self._dest = jnp.asarray(demand.destination)
        self._depart = jnp.asarray(demand.departure)
        if demand_model is not None:
            self._pool = jnp.asarray(demand_model.pool)  # [P]
            self._pool_origins = jnp.asarray(demand_model.origins)  # [P, V]
            self._pool_count = jnp.asarray(demand_model.origin_count)  # [P]

    @property
    def step_seconds(self) -> float:
        """Simulated seconds per step (the trainer discounts per second, see ``gamma_seconds``)."""
        return float(self.params.dt)

    # ------------------------------------------------------------------ protocol
    def reset(self, key: jax.Array) -> tuple[jax.Array, TrafficState]:
        """Initial state. With ``resample`` the episode's vehicles are drawn from ``key``
        (origin, destination, departure: O(N) gathers, cheap enough for auto-reset)."""
        n, e = self.spec.num_agents, self.network.num_links
        if self.resample:
            k_dest, k_orig, k_dep = jax.random.split(key, 3)
            j = jax.random.randint(k_dest, (n,), 0, self._pool.shape[0])
            u = jax.random.uniform(k_orig, (n,))
            col = jnp.minimum((u * self._pool_count[j]).astype(jnp.int32), self._pool_count[j] - 1)
            origin = self._pool_origins[j, col]
            dest = self._pool[j]
            depart = jax.random.randint(k_dep, (n,), 0, self.demand_model.departure_window).astype(jnp.int32)
        else:
            origin, dest, depart = self._origin, self._dest, self._depart
        dep_s = depart.astype(jnp.float32) * self.params.dt
        state = TrafficState(
            t=jnp.zeros((), jnp.int32),
            status=jnp.where(depart <= 0, AT_NODE, WAITING).astype(jnp.int32),
            node=origin,
            link=-jnp.ones(n, jnp.int32),
            prev_link=-jnp.ones(n, jnp.int32),
            progress=jnp.zeros(n, jnp.float32),
            enter=dep_s,
            ready=dep_s,
            ticket=jnp.zeros(n, jnp.int32),
            blocked=jnp.zeros(n, bool),
            last_move=dep_s,
            arrive_time=-jnp.ones(n, jnp.float32),
            travel_time=jnp.zeros(n, jnp.float32),
            arrived_at=-jnp.ones(n, jnp.int32),
            origin=origin,
            dest=dest,
            depart=depart,
            free_od=self._tt[origin, dest],
            head=jnp.zeros(e, jnp.int32),
            tail=jnp.zeros(e, jnp.int32),
            free_at=jnp.full(e, -1e9, jnp.float32),
        )
        return self._obs(state), state

    def step(self, key, state: TrafficState, actions: jax.Array, route: jax.Array | None = None):
        """One step. ``route`` (optional, ``[N, L]`` int32 link ids, −1 padded): each vehicle's
        planned links; a vehicle that crosses further nodes within the step after its chosen
        link takes the link that follows its current one in its row (first occurrence) where
        the turn rules allow it, and the free-flow fastest link (``link_next``) otherwise. The
        DG executor passes its plans here; without it every in-step hop takes ``link_next``.
        The ``step`` link model (at most one link per step) has no in-step hops and ignores it."""
        del key
        p = self.params
        if route is not None and (route.ndim != 2 or route.shape[0] != self.spec.num_agents):
            raise ValueError(f"TrafficEnv.step: route must be [num_agents={self.spec.num_agents}, L] link ids, "
                             f"got shape {tuple(route.shape)}")
        active = (state.status == AT_NODE) | (state.status == ON_LINK)  # [N] en route at the step start
        # The chosen link at the decision node; an invalid action falls back to the first
        # allowed slot (masks make this rare).
        avail = self.avail_actions(state)  # [N, K]
        a = jnp.clip(actions.astype(jnp.int32), 0, self.spec.num_actions - 1)
        ok = jnp.take_along_axis(avail, a[:, None], 1)[:, 0]
        a = jnp.where(ok, a, jnp.argmax(avail, axis=1))
        chosen = self._out[state.node, a]  # [N]
        if p.link_model == "step":
            new, arrived_now, decision, en_route_s = self._move_rounded(state, chosen)
            pending = jnp.zeros((), jnp.int32)
        else:
            move = self._move_heads if self._heads else self._move_continuous
            new, arrived_now, decision, en_route_s = move(state, chosen, route)
            pending = self._pending(new)
        t = new.t
        at_horizon = t >= p.horizon
        arrived = new.status == ARRIVED
        reward = -(en_route_s / p.time_scale) * active.astype(jnp.float32)
        reward += p.arrival_bonus * arrived_now
        reward -= p.late_penalty * (at_horizon & ~arrived)
        if p.team_reward > 0:
            reward = (1.0 - p.team_reward) * reward + p.team_reward * reward.mean()
        done = arrived | at_horizon
        info = {
            "decision": decision,
            "metrics": self._metrics(new),
            "arrived": arrived_now,
            "travel_time": new.travel_time,
            "link_counts": self._link_counts(new),
            "pending_moves": pending,
        }
        return self._obs(new), new, reward.astype(jnp.float32), done, info

    def avail_actions(self, state: TrafficState) -> jax.Array:
        """bool [N, K]: slots of the vehicle's decision node (for a vehicle on a link, the node
        ahead) whose link exists, is a turn the vehicle's current link allows, and can still
        reach its destination. A vehicle with none (arrived, or its next node is its
        destination) gets slot 0 only, so a masked categorical is always well defined."""
        links = self._out[state.node]  # [N, K]
        ls = jnp.maximum(links, 0)
        reach = jnp.isfinite(self._link_tt[ls, state.dest[:, None]])
        on = state.status == ON_LINK
        turn = jnp.where(on[:, None], self._turn[jnp.maximum(state.link, 0)], True)
        avail = (links >= 0) & reach & turn & (state.node != state.dest)[:, None]
        none = ~avail.any(axis=1)
        return avail.at[:, 0].set(avail[:, 0] | none)

    def global_state(self, state: TrafficState) -> jax.Array:
        """[E + 2]: occupancy of every link (n / storage for the queue model, n / c for the
        BPR models), the time fraction, the share still en route. Its size depends on the
        network only, so a centralised critic stays small at large N."""
        occ = self._occupancy(self._link_counts(state))
        en_route = ((state.status == AT_NODE) | (state.status == ON_LINK)).mean()
        frac = state.t.astype(jnp.float32) / self.params.horizon
        return jnp.concatenate([occ, jnp.stack([frac, en_route])])

    # ------------------------------------------------------------------ dynamics
    def _hop(self, ls: jax.Array, dest: jax.Array, rows: jax.Array | None) -> jax.Array:
        """The link a vehicle takes after link ``ls`` when it crosses its head within a step
        without a decision: the one after ``ls`` in its planned ``rows [.., L]`` (``step``'s
        ``route``) if that is an allowed turn from which ``dest`` stays reachable, else the
        free-flow fastest one, ``link_next[ls, dest]``."""
        fastest = self._link_next[ls, dest]
        if rows is None:
            return fastest
        length = rows.shape[-1]
        hit = rows == ls[..., None]
        j = jnp.argmax(hit, axis=-1) + 1  # position after the first occurrence
        planned = jnp.take_along_axis(rows, jnp.minimum(j, length - 1)[..., None], -1)[..., 0]
        ps = jnp.maximum(planned, 0)
        ok = (hit.any(axis=-1) & (j < length) & (planned >= 0) & (self._src[ps] == self._dst[ls])
              & self._turn[ls, self._slot_of[ps]] & jnp.isfinite(self._link_tt[ps, dest]))
        return jnp.where(ok, planned, fastest)

    def _move_continuous(self, s: TrafficState, chosen: jax.Array, route: jax.Array | None = None):
        """The queue / bpr models over one step [T0, T1) in continuous time (module docstring).
        Returns the new state, arrived_now [N], decision [N] and seconds en route in the step."""
        p = self.params
        n, e = self.spec.num_agents, self.network.num_links
        queue = p.link_model == "queue"
        t0 = s.t.astype(jnp.float32) * p.dt
        t1 = t0 + p.dt
        idx = jnp.arange(n, dtype=jnp.int32)
        dep_s = s.depart.astype(jnp.float32) * p.dt
        inf = jnp.float32(jnp.inf)

        def one_pass(c):
            status, node, link, prev, enter, ready, ticket, blocked, last_move, arrive, head, tail, free_at, used, decided = c[:15]
            ls = jnp.maximum(link, 0)
            on = status == ON_LINK
            departing = status == AT_NODE
            at_dest = on & (node == s.dest)
            nxt = jnp.where(used, self._hop(ls, s.dest, route), chosen)
            nxt = jnp.where(at_dest, -1, nxt)  # -1: the destination (a sink without storage)
            ns = jnp.maximum(nxt, 0)
            if queue:
                # FIFO by the time vehicles reach the link's end (= entry order under a fixed
                # running time, whatever order the passes entered them in); ties by ticket.
                lseg = jnp.where(on, ls, e)
                rmin = jax.ops.segment_min(jnp.where(on, ready, inf), lseg, e + 1)
                first_r = on & (ready <= rmin[lseg])
                tmin = jax.ops.segment_min(jnp.where(first_r, ticket, jnp.iinfo(jnp.int32).max), lseg, e + 1)
                head_ok = first_r & (ticket == tmin[lseg])
                x = jnp.where(on, jnp.maximum(ready, free_at[ls]), dep_s)
                # Refused earlier by a full next link: it may go when space appeared there,
                # i.e. when the last vehicle left that link.
                space_time = free_at[ns] - self._headway[ns]
                x = jnp.where(blocked & (nxt >= 0), jnp.maximum(x, space_time), x)
            else:
                head_ok = True
                x = jnp.where(on, ready, dep_s)
            x = jnp.maximum(x, t0)  # an action taken at t0 acts no earlier than t0
            want = ((on & head_ok) | departing) & (x < t1)
            counts = (tail - head).astype(jnp.float32)
            if queue:
                # One entry per link per pass: the earliest candidate (then lowest index).
                into, space, cross = self._one_entry_per_link(want, nxt, ns, x, idx, n, counts)
                blocked = jnp.where(cross, False, blocked | (into & ~space))
            else:
                cross = want
            leaving = cross & on
            entering = cross & (nxt >= 0)
            arriving = cross & (nxt < 0)
            head = head + jax.ops.segment_sum(leaving.astype(jnp.int32), jnp.where(leaving, ls, e), e + 1)[:e]
            if queue:
                free_at = free_at.at[jnp.where(leaving, ls, e)].set(x + self._headway[ls], mode="drop")
            new_ticket = tail[ns]
            tail = tail.at[jnp.where(entering, ns, e)].add(1, mode="drop")
            if queue and p.queue_running == "free":
                run = self._tfree[ns]
            else:
                run = self._bpr_time(ns, counts[ns])
            status = jnp.where(arriving, ARRIVED, jnp.where(entering, ON_LINK, status))
            prev = jnp.where(entering, link, prev)
            link = jnp.where(entering, nxt, jnp.where(arriving, -1, link))
            node = jnp.where(entering, self._dst[ns], node)
            enter = jnp.where(entering, x, enter)
            ready = jnp.where(entering, x + run, ready)
            ticket = jnp.where(entering, new_ticket, ticket)
            last_move = jnp.where(cross, x, last_move)
            arrive = jnp.where(arriving, x, arrive)
            decided = decided | (entering & ~used)
            used = used | cross
            return (status, node, link, prev, enter, ready, ticket, blocked, last_move, arrive, head, tail, free_at,
                    used, decided, c[15] + 1, cross.any())

        # A pass in which nobody crosses changes nothing, so every later pass would not either:
        # stop there (exactly the same result as running all ``moves`` passes, usually sooner).
        init = (s.status, s.node, s.link, s.prev_link, s.enter, s.ready, s.ticket, s.blocked, s.last_move, s.arrive_time,
                s.head, s.tail, s.free_at, jnp.zeros(n, bool), jnp.zeros(n, bool), jnp.zeros((), jnp.int32),
                jnp.ones((), bool))
        out = jax.lax.while_loop(lambda c: (c[15] < self.moves) & c[16], one_pass, init)
        return self._finish_step(s, *out[:13], out[14])

    def _finish_step(self, s, status, node, link, prev, enter, ready, ticket, blocked, last_move, arrive, head, tail,
                     free_at, decided):
        """The end of a continuous step (both pass implementations): progress, seconds en route,
        departures becoming due, travel times."""
        p = self.params
        t0 = s.t.astype(jnp.float32) * p.dt
        t1 = t0 + p.dt
        dep_s = s.depart.astype(jnp.float32) * p.dt
        arrived_now = (status == ARRIVED) & (s.status != ARRIVED)
        on = status == ON_LINK
        progress = jnp.where(on, jnp.clip((t1 - enter) / jnp.maximum(ready - enter, _EPS), 0.0, 1.0), 0.0)
        # Seconds en route within [t0, t1): from max(departure, t0) to min(arrival, t1).
        end = jnp.where(arrived_now, arrive, t1)
        en_route_s = jnp.maximum(end - jnp.maximum(dep_s, t0), 0.0)
        t = s.t + 1
        status = jnp.where((status == WAITING) & (s.depart <= t), AT_NODE, status)
        arrived = status == ARRIVED
        departed = status != WAITING
        travel_time = jnp.where(arrived, arrive - dep_s, jnp.where(departed, jnp.maximum(t1 - dep_s, 0.0), 0.0))
        arrived_at = jnp.where(arrived_now, t, s.arrived_at)
        new = s.replace(
            t=t, status=status, node=node, link=link, prev_link=prev, progress=progress, enter=enter, ready=ready,
            ticket=ticket, blocked=blocked, last_move=last_move, arrive_time=arrive,
            travel_time=travel_time, arrived_at=arrived_at, head=head, tail=tail, free_at=free_at,
        )
        return new, arrived_now, decided, en_route_s

    def _move_heads(self, s: TrafficState, chosen: jax.Array, route: jax.Array | None = None):
        """The queue model's step (free running time) with the same passes and the same results
        as :meth:`_move_continuous`, at O(E) per pass instead of O(N).

        Who can cross in a pass is known in advance: on a link only its FIFO head (by reaching
        time, then ticket), and among the vehicles departing onto a link the one with the
        earliest exit time, then the lowest index (the entry rule). One sort per step puts every
        link's queue and every link's departers in that order; a pass then gathers the E link
        heads and 2E departer heads (departers split by whether a full link refused them
        before: those wait for space, the others go at the step start), applies the same rule
        as :meth:`_move_continuous` to these 3E candidates and scatters the result back. A
        vehicle that enters a link within the step is behind every vehicle already on it (it
        entered later, the running time is the link's free-flow time), so a link's head is the
        next one in its sorted queue, or once that is empty the earliest of the at most
        ``moves`` vehicles that entered it in this step (a small [E, moves] buffer). A pass that
        finds a link full blocks every departer towards it: a per-link flag, applied to the
        departers outside the candidates at the step's end."""
        p = self.params
        n, e, m = self.spec.num_agents, self.network.num_links, self.moves
        t0 = s.t.astype(jnp.float32) * p.dt
        t1 = t0 + p.dt
        idx = jnp.arange(n, dtype=jnp.int32)
        dep_s = s.depart.astype(jnp.float32) * p.dt
        big = jnp.iinfo(jnp.int32).max
        on0 = s.status == ON_LINK
        dep0 = s.status == AT_NODE
        # A departer without a link (no allowed out-link) arrives at once, as the passes would.
        gone = dep0 & (chosen < 0)
        dep0 = dep0 & ~gone
        # Groups: [0, E) queue of link e; [E, 2E) unrefused departers onto e; [2E, 3E) refused ones.
        cs = jnp.maximum(chosen, 0)
        c_ring = self._ring
        # Every link's vehicles by ticket: ring[e, ticket % C] (C > storage + 2M: no live clash).
        ring = jnp.full((e, c_ring), n, jnp.int32)
        ring = ring.at[jnp.where(on0, s.link, e), s.ticket % c_ring].set(idx, mode="drop")  # [E, C]
        # Their reaching times beside them; a vehicle's slot is cleared when it leaves, so a
        # ring entry is always a vehicle on that link (no per-vehicle gathers to check it).
        ring_r = jnp.full((e, c_ring), jnp.inf, jnp.float32).at[jnp.where(on0, s.link, e), s.ticket % c_ring].set(
            s.ready, mode="drop")
        # The first M departers (lowest index) onto each link, unrefused [0, E) / refused [E, 2E).
        dgroup = jnp.where(dep0, jnp.where(s.blocked, e, 0) + cs, 2 * e)
        left = dep0
        firsts = []
        for _ in range(m):
            lo = jax.ops.segment_min(jnp.where(left, idx, n), jnp.where(left, dgroup, 2 * e), 2 * e + 1)[: 2 * e]
            firsts.append(lo)
            left = left & (idx != lo[jnp.minimum(dgroup, 2 * e - 1)])
        dtab = jnp.stack(firsts, axis=1)  # [2E, M] vehicle ids, n where none
        links = jnp.arange(e, dtype=jnp.int32)
        gid = jnp.arange(3 * e, dtype=jnp.int32)
        window = jnp.arange(-m, m, dtype=jnp.int32)  # tickets around each link's exit counter

        status = jnp.where(gone, ARRIVED, s.status)
        arrive = jnp.where(gone, jnp.maximum(dep_s, t0), s.arrive_time)
        last_move = jnp.where(gone, jnp.maximum(dep_s, t0), s.last_move)
        link = jnp.where(gone, -1, s.link)

        def one_pass(c):
            (status, node, link, prev, enter, ready, ticket, blocked, last_move, arrive, head, tail, free_at, used,
             decided, taken, ring, ring_r, refused, k, _) = c
            # Link heads: the remaining vehicles form blocks by entry step (at most M each, FIFO
            # within), so the head is among the tickets head-M .. head+M-1.
            tk = head[:, None] + window  # [E, 2M]
            slot = tk % c_ring
            rv = ring[links[:, None], slot]
            live = (tk >= 0) & (rv < n)
            r_w = jnp.where(live, ring_r[links[:, None], slot], jnp.inf)
            t_w = jnp.where(live & (r_w <= r_w.min(axis=1, keepdims=True)), tk, big)
            j = jnp.argmin(t_w, axis=1)
            link_head = jnp.where(live.any(axis=1), rv[links, j], n)  # [E]
            dep_head = jnp.where(taken < m, dtab[jnp.arange(2 * e), jnp.minimum(taken, m - 1)], n)  # [2E]
            cand = jnp.concatenate([link_head, dep_head])  # [3E]
            valid = cand < n
            v = jnp.minimum(cand, n - 1)
            c_status = status[v]
            on = valid & (c_status == ON_LINK)
            departing = valid & (c_status == AT_NODE)
            c_link = link[v]
            ls = jnp.maximum(c_link, 0)
            c_dest = s.dest[v]
            c_used = used[v]
            at_dest = on & (node[v] == c_dest)
            nxt = jnp.where(c_used, self._hop(ls, c_dest, None if route is None else route[v]), chosen[v])
            nxt = jnp.where(at_dest, -1, nxt)
            ns = jnp.maximum(nxt, 0)
            # Unrefused departers become refused once a pass found their link full.
            c_blocked = blocked[v] | (departing & (gid >= e) & (gid < 2 * e) & refused[ns])
            x = jnp.where(on, jnp.maximum(ready[v], free_at[ls]), dep_s[v])
            space_time = free_at[ns] - self._headway[ns]
            x = jnp.where(c_blocked & (nxt >= 0), jnp.maximum(x, space_time), x)
            x = jnp.maximum(x, t0)
            want = (on | departing) & (x < t1)
            counts = (tail - head).astype(jnp.float32)
            into, space, cross = self._one_entry_per_link(want, nxt, ns, x, cand, n, counts)
            c_blocked = jnp.where(cross, False, c_blocked | (into & ~space))
            refused = refused.at[jnp.where(departing & into & ~space, ns, e)].set(True, mode="drop")
            leaving = cross & on
            entering = cross & (nxt >= 0)
            arriving = cross & (nxt < 0)
            head = head.at[jnp.where(leaving, ls, e)].add(1, mode="drop")
            free_at = free_at.at[jnp.where(leaving, ls, e)].set(x + self._headway[ls], mode="drop")
            new_ticket = tail[ns]
            tail = tail.at[jnp.where(entering, ns, e)].add(1, mode="drop")
            taken = taken + cross[e:].astype(jnp.int32)
            ring = ring.at[jnp.where(leaving, ls, e), ticket[v] % c_ring].set(n, mode="drop")
            ring = ring.at[jnp.where(entering, ns, e), new_ticket % c_ring].set(cand, mode="drop")
            ring_r = ring_r.at[jnp.where(entering, ns, e), new_ticket % c_ring].set(x + self._tfree[ns], mode="drop")
            w = jnp.where(valid, cand, n)  # scatter target (n: dropped)

            def put(arr, val):
                return arr.at[w].set(val, mode="drop")

            status = put(status, jnp.where(arriving, ARRIVED, jnp.where(entering, ON_LINK, c_status)))
            prev = put(prev, jnp.where(entering, c_link, prev[v]))
            link = put(link, jnp.where(entering, nxt, jnp.where(arriving, -1, c_link)))
            node = put(node, jnp.where(entering, self._dst[ns], node[v]))
            enter = put(enter, jnp.where(entering, x, enter[v]))
            ready = put(ready, jnp.where(entering, x + self._tfree[ns], ready[v]))
            ticket = put(ticket, jnp.where(entering, new_ticket, ticket[v]))
            blocked = put(blocked, c_blocked)
            last_move = put(last_move, jnp.where(cross, x, last_move[v]))
            arrive = put(arrive, jnp.where(arriving, x, arrive[v]))
            decided = put(decided, decided[v] | (entering & ~c_used))
            used = put(used, c_used | cross)
            return (status, node, link, prev, enter, ready, ticket, blocked, last_move, arrive, head, tail, free_at,
                    used, decided, taken, ring, ring_r, refused, k + 1, cross.any())

        init = (status, s.node, link, s.prev_link, s.enter, s.ready, s.ticket, s.blocked, last_move, arrive,
                s.head, s.tail, s.free_at, gone, jnp.zeros(n, bool), jnp.zeros(2 * e, jnp.int32),
                ring, ring_r, jnp.zeros(e, bool), jnp.zeros((), jnp.int32), jnp.ones((), bool))
        # Stop after a pass in which nobody crossed, as in _move_continuous (same result).
        out = jax.lax.while_loop(lambda c: (c[19] < m) & c[20], one_pass, init)
        (status, node, link, prev, enter, ready, ticket, blocked, last_move, arrive, head, tail, free_at, _,
         decided, _, _, _, refused, _, _) = out
        # Departers outside the candidates that a full link refused in some pass.
        blocked = blocked | ((status == AT_NODE) & refused[cs] & (chosen >= 0))
        return self._finish_step(s, status, node, link, prev, enter, ready, ticket, blocked, last_move, arrive, head,
                                 tail, free_at, decided)

    def _one_entry_per_link(self, want, nxt, ns, x, ids, n: int, counts):
        """One entry per link per pass, shared by both queue implementations: among the
        candidates that ``want`` to move into link ``nxt`` (``-1``: arriving), the earliest
        ``x`` wins (ties: the lowest id of ``ids``, ``n`` above all), if the link has space.
        Returns ``(into, space, cross)``: heading into a link, that link has space, moves."""
        e = self.network.num_links
        into = want & (nxt >= 0)
        seg = jnp.where(into, nxt, e)
        xmin = jax.ops.segment_min(jnp.where(into, x, jnp.inf), seg, e + 1)
        first = into & (x <= xmin[seg])
        imin = jax.ops.segment_min(jnp.where(first, ids, n), seg, e + 1)
        winner = first & (ids == imin[seg])
        space = counts[ns] < self._storage[ns]
        return into, space, want & ((nxt < 0) | (winner & space))

    def _move_rounded(self, s: TrafficState, chosen: jax.Array):
        """The original step-rounded BPR model (``link_model="step"``): decisions at a node,
        progress ``dt / t_link`` per step, the leftover at a link's end is lost."""
        p = self.params
        deciding = s.status == AT_NODE
        active = deciding | (s.status == ON_LINK)
        link = jnp.where(deciding, chosen, s.link)
        status = jnp.where(deciding, ON_LINK, s.status)
        progress = jnp.where(deciding, 0.0, s.progress)
        on_link = status == ON_LINK
        e = self.network.num_links
        link_safe = jnp.maximum(link, 0)
        counts = jax.ops.segment_sum(on_link.astype(jnp.float32), jnp.where(on_link, link, e), e + 1)[:e]
        n_other = jnp.maximum(counts[link_safe] - 1.0, 0.0)
        t_link = self._tfree[link_safe] * (1.0 + p.alpha * (n_other / self._cap[link_safe]) ** p.beta)
        progress = jnp.where(on_link, progress + p.dt / t_link, progress)
        reached = on_link & (progress >= 1.0 - _EPS)
        node = jnp.where(on_link, self._dst[link_safe], s.node)
        arrived_now = reached & (node == s.dest)
        entered = deciding
        left = reached
        status = jnp.where(reached, jnp.where(arrived_now, ARRIVED, AT_NODE), status)
        link_new = jnp.where(reached, -1, link)
        progress = jnp.where(reached, 0.0, progress)
        travel_time = s.travel_time + jnp.where(active, p.dt, 0.0)
        t = s.t + 1
        t1 = t.astype(jnp.float32) * p.dt
        status = jnp.where((status == WAITING) & (s.depart <= t), AT_NODE, status)
        dep_s = s.depart.astype(jnp.float32) * p.dt
        # Link loads as entry/exit counters, like the continuous models.
        head = s.head + jax.ops.segment_sum(left.astype(jnp.int32), jnp.where(left, link_safe, e), e + 1)[:e]
        tail = s.tail + jax.ops.segment_sum(entered.astype(jnp.int32), jnp.where(entered, link_safe, e), e + 1)[:e]
        new = s.replace(
            t=t, status=status, node=node, link=link_new, progress=progress, travel_time=travel_time,
            arrived_at=jnp.where(arrived_now, t, s.arrived_at),
            arrive_time=jnp.where(arrived_now, dep_s + travel_time, s.arrive_time),
            last_move=jnp.where(deciding | reached, t1, s.last_move), head=head, tail=tail,
        )
        return new, arrived_now, deciding, jnp.full(self.spec.num_agents, p.dt, jnp.float32)

    def _bpr_time(self, links: jax.Array, others: jax.Array) -> jax.Array:
        """BPR running time of ``links`` with ``others`` vehicles already on them."""
        ratio = others / self._cap[links]
        return self._tfree[links] * (1.0 + self._bpr_b[links] * ratio ** self._bpr_p[links])

    def _pending(self, s: TrafficState) -> jax.Array:
        """Vehicles that could still have left their link before the step's end when the
        passes ran out (queue heads / bpr vehicles past their link's end, next link not full)."""
        t_end = s.t.astype(jnp.float32) * self.params.dt
        on = s.status == ON_LINK
        ls = jnp.maximum(s.link, 0)
        if self.params.link_model == "queue":
            x = jnp.maximum(s.ready, s.free_at[ls])
            late = on & (s.ticket == s.head[ls]) & ~s.blocked & (x < t_end - _EPS)
        else:
            late = on & (s.ready < t_end - _EPS)
        return late.sum().astype(jnp.int32)

    # ------------------------------------------------------------------ helpers
    def slot_towards(self, state: TrafficState, next_node: jax.Array) -> jax.Array:
        """int32 [N]: the allowed slot at each vehicle's decision node on the turn-aware
        free-flow fastest path to ``next_node`` [N] (the direct link when adjacent and the turn
        is allowed; a detour when a turn restriction forbids it)."""
        links = self._out[state.node]  # [N, K]
        ls = jnp.maximum(links, 0)
        avail = self.avail_actions(state)
        cost = self._tfree[ls] + self._link_tt[ls, next_node[:, None]]
        cost = jnp.where(avail & jnp.isfinite(cost), cost, jnp.inf)
        slot = jnp.where(jnp.isfinite(cost).any(axis=1), jnp.argmin(cost, axis=1), jnp.argmax(avail, axis=1))
        return slot.astype(jnp.int32)

    def fastest_slot(self, state: TrafficState) -> jax.Array:
        """int32 [N]: the slot on the turn-aware free-flow fastest path to each destination."""
        links = self._out[state.node]  # [N, K]
        ls = jnp.maximum(links, 0)
        cost = jnp.where(self.avail_actions(state), self._tfree[ls] + self._link_tt[ls, state.dest[:, None]], jnp.inf)
        return jnp.argmin(cost, axis=1).astype(jnp.int32)

    def _link_counts(self, s: TrafficState) -> jax.Array:
        """[E] vehicles on each link (entries minus exits)."""
        return (s.tail - s.head).astype(jnp.float32)

    def _occupancy(self, counts: jax.Array) -> jax.Array:
        return counts / (self._storage if self.params.link_model == "queue" else self._cap)

    def _metrics(self, s: TrafficState) -> dict:
        """Episode metrics so far, over *all departed* vehicles (unfinished ones counted up to
        now, which is the horizon at an episode's end); the arrived-only mean is
        ``mean_travel_time_arrived``."""
        arrived = s.status == ARRIVED
        departed = s.status != WAITING
        en_route = departed & ~arrived
        n_dep = jnp.maximum(departed.sum(), 1)
        n_arr = jnp.maximum(arrived.sum(), 1)
        tt = jnp.where(departed, s.travel_time, 0.0)
        now = s.t.astype(jnp.float32) * self.params.dt
        return {
            "arrival_rate": arrived.mean(),
            "mean_travel_time": tt.sum() / n_dep,
            "total_travel_time": tt.sum(),
            "mean_travel_time_arrived": jnp.where(arrived, s.travel_time, 0.0).sum() / n_arr,
            "mean_delay": jnp.where(departed, jnp.maximum(tt - s.free_od, 0.0), 0.0).sum() / n_dep,
            "unfinished": en_route.sum().astype(jnp.float32),
            "stuck": (en_route & (now - s.last_move >= self.params.stuck_time)).sum().astype(jnp.float32),
        }

    def _obs(self, s: TrafficState) -> jax.Array:
        """[N, 12 + 5K] local observation: status one-hot (4), link progress, time fraction,
        steps until departure (fraction of horizon), decision-node xy, destination xy,
        free-flow time from the decision node to the destination; per out-link slot of the
        decision node: allowed, length, free-flow time, occupancy and the free-flow time to
        the destination through that link."""
        h = float(self.params.horizon)
        occ = self._occupancy(self._link_counts(s))  # [E]
        scale = self._tt_scale
        own = jnp.concatenate(
            [
                jax.nn.one_hot(s.status, 4),
                s.progress[:, None],
                jnp.broadcast_to(s.t / h, (self.spec.num_agents, 1)),
                (jnp.maximum(s.depart - s.t, 0) / h)[:, None],
                self._xy[s.node],
                self._xy[s.dest],
                (jnp.minimum(self._tt[s.node, s.dest], 10 * scale) / scale)[:, None],
            ],
            axis=1,
        )
        links = self._out[s.node]  # [N, K]
        valid = self.avail_actions(s) & (links >= 0)
        ls = jnp.maximum(links, 0)
        via = (self._tfree[ls] + self._link_tt[ls, s.dest[:, None]]) / scale
        slot = jnp.stack(
            [valid, self._len_n[ls], self._tfree_n[ls], occ[ls], jnp.where(valid, via, 0.0)], axis=-1
        )  # [N, K, 5]
        slot = jnp.where(valid[..., None], slot, 0.0)
        return jnp.concatenate([own, slot.reshape(self.spec.num_agents, -1)], axis=1).astype(jnp.float32)
