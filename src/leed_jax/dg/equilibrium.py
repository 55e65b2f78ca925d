"""Simulation-based dynamic equilibrium / optimum planner (the DG stage's traffic expert).

Routes are iterated inside the JAX env itself, so the true dynamics (spatial queues, flow
capacity, storage, spillback) price them:

1. candidate routes per vehicle: ``k`` penalised shortest paths per origin–destination pair
   (each found path's links cost ``penalty`` times more for the next search), computed once
   on the link graph under the network's turn rules (SUMO lane connections);
2. each round the joint plan is simulated by one jit-compiled rollout of fixed routes (the DG
   executor's route follower), recording every vehicle's entry and exit time on each link of
   its route (and, for the ``mean`` table, ``(link, entry-time bin, experienced time)``);
3. each candidate is priced time-dependently on its own clock (a link is entered when the
   last was left): by default with :class:`QueueTable`, which replays the env's FIFO queue
   rule against the other vehicles' recorded traversals (where the vehicle would stand in
   each queue, when the link has room), so that it prices the routes it was built from
   within 0–1.5 % and a vehicle's unilateral switch as the env then times it; or
   (``table="mean"``) with the mean experienced link time per link and entry bin
   ``τ[e, b]`` (a vehicle entering ``e`` at ``t`` leaves at ``t + τ[e, bin(t)]``), all
   vehicles × candidates at once (``vmap``), which misprices them by 2–9 %;
4. the relative gap ``(Σ current − Σ best) / Σ current`` is measured (queue table: both sides
   priced by it; mean table: the current side is the larger of simulated and priced); of
   the vehicles that can improve, each switches to its best candidate with probability equal
   to its relative gain (``switch="gain"``: a gap-proportional step after Lu, Mahmassani &
   Zhou 2009) or ``1 / (k + 1)`` in round ``k`` (``switch="msa"``: method of successive
   averages, Sheffi 1985, *Urban Transportation Networks*, ch. 12); the dynamic,
   simulation-based form follows Peeta & Mahmassani 1995, *Ann. Oper. Res.* 60, 81–113;
5. stop when the gap falls below ``gap_tol`` or after ``rounds``; the best joint plan seen
   is returned (``keep``: for ``equilibrium`` the least gap among the plans not slower in
   total than the warm start, for ``optimum`` the least total).

Objectives. ``equilibrium``: each vehicle's own time (dynamic user equilibrium). ``optimum``:
marginal cost = own time + an estimate of the delay the vehicle imposes on others (dynamic
system optimum, Peeta & Mahmassani 1995). The estimate: on a link served at capacity ``c_e``
(veh/s), one extra entrant delays each vehicle queued behind it by one headway ``1 / c_e``;
we count as "behind it" half of the *delayed* vehicles (experienced time above free flow) that
entered the same link in the same entry-time bin, i.e. ``ext[e, b] = 0.5 · n_delayed[e, b] /
c_e``. It ignores delay propagated upstream by spillback and queues persisting into later
bins, so it under-estimates the externality — a documented lower bound, not an exact
marginal cost.

The simulation hands each vehicle's planned links to the env (``step(..., route=)``), so a
vehicle that crosses several nodes within one step follows its plan there too. Such a span
(several short links in one step) is split over its links: each later link is recorded at its
free-flow time, the first link with the rest (queueing within the step is put on the first
link; the env does not report the intermediate crossing times).
"""

from __future__ import annotations

import dataclasses
import logging
import time
import weakref
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from leed_jax.dg.executor import _traffic_policy, pad_targets, remaining_route, traffic_route
from leed_jax.envs.network import RoadNetwork, path_from_predecessors

log = logging.getLogger("leed_jax.dg")

OBJECTIVES = ("equilibrium", "optimum")
TABLES = ("auto", "queue", "mean")
SWITCHES = ("msa", "gain")
KEEPS = ("auto", "total", "gap")
_AT_NODE, _ARRIVED = 1, 3  # leed_jax.envs.traffic.AT_NODE, ARRIVED


@dataclasses.dataclass(frozen=True)
class EquilibriumConfig:
    """objective: "equilibrium" | "optimum". candidates: routes per OD pair. penalty: cost
    factor on the links of routes already found. rounds / gap_tol: stopping rule. bin_s: width
    of the entry-time bins of the link-time table (seconds; 0 → 6 env steps). censored: also
    record the traversals still under way at the horizon, at their time so far (a lower bound;
    False: only completed traversals, as before). turn_aware: candidate routes searched on the
    link graph under the network's allowed turns (False: on the node graph, as before).
    split_steps: a traversal span that crossed several planned links within one env step is
    split over them (each later link at its free-flow time, the first the rest; False: the
    whole span is recorded as one traversal of its first link, as before). table: how routes
    are priced from the last simulation: "queue" (:class:`QueueTable`: each link's exit time
    from the vehicles' own traversals and the queue's FIFO order), "mean" (mean experienced
    time per link and ``bin_s`` entry bin, as before), "auto" (queue where the env's links are
    spatial queues with free running time, else mean). switch: which vehicles that can improve
    move to their best route each round: "msa" (each with probability ``1 / (k + 1)`` in round
    ``k``: the method of successive averages), "gain" (each with probability equal to its
    relative gain ``(c − c_best) / c``: a gap-proportional step after Lu, Mahmassani & Zhou
    2009, *Transp. Res. B* 43, 345–364, so that a vehicle a few percent from its best
    rarely moves and the step shrinks with the gap). keep: which round's plan is returned:
    "total" (the least simulated total), "gap" (the least gap among the plans whose total is
    not above the first round's, i.e. the warm start's), "auto" ("gap" for ``equilibrium``,
    whose plan should be near an equilibrium, "total" for ``optimum``)."""

    objective: str = "equilibrium"
    candidates: int = 6
    penalty: float = 1.6
    rounds: int = 30
    gap_tol: float = 0.002
    bin_s: float = 0.0
    seed: int = 0
    censored: bool = True
    turn_aware: bool = True
    split_steps: bool = True
    table: str = "auto"
    switch: str = "gain"
    keep: str = "auto"

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective {self.objective!r} is not one of {', '.join(OBJECTIVES)}")
        if self.table not in TABLES:
            raise ValueError(f"table {self.table!r} is not one of {', '.join(TABLES)}")
        if self.switch not in SWITCHES:
            raise ValueError(f"switch {self.switch!r} is not one of {', '.join(SWITCHES)}")
        if self.keep not in KEEPS:
            raise ValueError(f"keep {self.keep!r} is not one of {', '.join(KEEPS)}")
        if self.candidates < 1 or self.rounds < 1 or self.penalty < 1.0:
            raise ValueError("candidates and rounds must be ≥ 1 and penalty ≥ 1")


class PlanResult(NamedTuple):
    paths: list[list[int]]  # node path per vehicle
    total_travel_time: float  # s, of the returned plan, as simulated
    gaps: list[float]  # relative gap per round
    totals: list[float]  # total experienced travel time per round
    seconds: float
    # Per round, Σ|simulated − table-predicted time| / Σ simulated over the current routes: how
    # well the link-time table prices the routes it was built from (a floor for the gap).
    table_errors: list[float]
    # The round whose plan is returned (index into gaps / totals): its gap is gaps[best_round].
    best_round: int = 0


# ----------------------------------------------------------------------------- candidates
def candidate_paths(graph: RoadNetwork, origin, destination, k: int, penalty: float,
                    connections=None):
    """Up to ``k`` distinct node paths per vehicle (penalised shortest paths per OD pair).

    ``connections [C, 2]`` (from_link, to_link), the network's allowed turns: given, paths are
    searched on the link graph, so that they take only allowed turns and every link on them
    can still reach the destination — the env's action masks forbid anything else, and the
    executor would replace a forbidden turn by a detour the link-time table never priced
    (on traffic-sumo-drt such detours looped vehicles until the horizon)."""
    origin = np.asarray(origin, np.int64)
    destination = np.asarray(destination, np.int64)
    pairs, inverse = np.unique(np.stack([origin, destination], 1), axis=0, return_inverse=True)
    inverse = np.asarray(inverse).reshape(-1)
    per_pair: list[list[list[int]]] = [[] for _ in range(len(pairs))]
    sources = np.unique(pairs[:, 0])
    cost = {int(s): graph.link_tfree.copy() for s in sources}
    if connections is not None:
        _turn_aware_candidates(graph, np.asarray(connections, np.int64).reshape(-1, 2), pairs,
                               sources, cost, per_pair, k, penalty)
        return pairs, inverse, per_pair
    for _ in range(k):
        for s in sources:
            _, pred = graph.shortest_from([int(s)], cost[int(s)])
            for pi in np.nonzero(pairs[:, 0] == s)[0]:
                d = int(pairs[pi, 1])
                p = path_from_predecessors(pred[0], int(s), d)
                if len(p) >= 2 and p not in per_pair[pi]:
                    per_pair[pi].append(p)
                for u, v in zip(p[:-1], p[1:]):
                    cost[int(s)][graph.link_index(u, v)] *= penalty
    return pairs, inverse, per_pair


def _turn_aware_candidates(graph, conn, pairs, sources, cost, per_pair, k, penalty) -> None:
    """:func:`candidate_paths` on the link graph: node ``E`` is a virtual start joined to the
    origin's out-links; arc ``a → b`` (an allowed turn) costs ``cost[b]``."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import dijkstra

    e = graph.num_links
    by_dst = [np.flatnonzero(graph.link_dst == v) for v in range(graph.num_nodes)]
    for _ in range(k):
        for s in sources:
            c = cost[int(s)]
            outs = np.flatnonzero(graph.link_src == s)
            rows = np.concatenate([conn[:, 0], np.full(len(outs), e)])
            cols = np.concatenate([conn[:, 1], outs])
            g = csr_matrix((c[cols], (rows, cols)), shape=(e + 1, e + 1))
            dist, pred = dijkstra(g, directed=True, indices=e, return_predecessors=True)
            for pi in np.nonzero(pairs[:, 0] == s)[0]:
                ends = by_dst[int(pairs[pi, 1])]
                if not len(ends) or not np.isfinite(dist[ends]).any():
                    continue
                link = int(ends[np.argmin(dist[ends])])
                links = []
                while link != e and link >= 0:
                    links.append(link)
                    link = int(pred[link])
                links.reverse()
                p = [int(s)] + [int(graph.link_dst[x]) for x in links]
                if len(p) >= 2 and p not in per_pair[pi]:
                    per_pair[pi].append(p)
                c[links] *= penalty


def _links_of(graph: RoadNetwork, path: list[int]) -> list[int]:
    return [graph.link_index(u, v) for u, v in zip(path[:-1], path[1:])]


# ----------------------------------------------------------------------------- simulation
def _build_sim(env, num_bins: int, bin_s: float, censored: bool = True, split_steps: bool = True):
    policy = _traffic_policy(env)
    dt = float(env.params.dt)
    e = int(env.network.link_src.shape[0])
    horizon = env.spec.horizon
    size = e * num_bins + 1  # flat (link, bin) table, last cell a sink for "nothing"

    def record(tables, mask, links, enter, spent, delayed):
        tsum, cnt, ndel = tables
        b = jnp.clip((enter / bin_s).astype(jnp.int32), 0, num_bins - 1)
        idx = jnp.where(mask, jnp.maximum(links, 0) * num_bins + b, e * num_bins).reshape(-1)
        tsum = tsum + jax.ops.segment_sum(jnp.where(mask, spent, 0.0).reshape(-1), idx, size)
        cnt = cnt + jax.ops.segment_sum(mask.astype(jnp.float32).reshape(-1), idx, size)
        ndel = ndel + jax.ops.segment_sum((mask & delayed).astype(jnp.float32).reshape(-1), idx, size)
        return tsum, cnt, ndel

    def run(key, obs, state, targets):
        n = targets.shape[0]
        route = traffic_route(env, state.origin, targets)  # [N, L] planned links
        pos = jnp.arange(route.shape[1])
        n_links = (route >= 0).sum(axis=1)  # [N] planned links (the route is left-aligned)

        def first(hit):
            return jnp.where(hit.any(axis=1), jnp.argmax(hit, axis=1), route.shape[1])

        def position(link, ptr, on):
            # Where ``link`` sits on each vehicle's route, searched from the pointer (which runs
            # on over the padding while a vehicle waits on its last link, hence the cap at the
            # route's length); the route's length where ``on`` is False.
            rest = remaining_route(route, jnp.minimum(ptr, n_links))
            return jnp.where(on, first(rest == link[:, None]), route.shape[1])

        def body(carry, key_t):
            s, ptr, tables, ent, ext = carry
            jq = position(s.link, ptr, s.link >= 0)  # before this step's decision moves ptr
            action, ptr = policy(s, targets, ptr)
            rest = remaining_route(route, ptr)
            _, s2, _, _, _ = env.step(key_t, s, action, route=rest)
            was_on = s.link >= 0
            left = was_on & ((s2.link != s.link) | (s2.enter != s.enter))
            arrived = s2.status == _ARRIVED
            exit_t = jnp.where(arrived, s2.arrive_time, s2.enter)  # end of the span left in this step
            exp = jnp.maximum(exit_t - s.enter, 0.0)
            if split_steps:
                # The span from s.link's entry to exit_t may include links crossed whole within
                # this step (short links); with the plan followed they are the planned links
                # between s.link and s2.link. Each gets its free-flow time (entered backwards
                # from exit_t), s.link the rest, so the table prices every link of the span.
                departed_now = (s.status == _AT_NODE) & (s2.status != _AT_NODE)
                j0 = jnp.where(was_on, first(rest == s.link[:, None]), -1)
                after = pos[None, :] > j0[:, None]
                j1 = jnp.where(arrived, route.shape[1], first((rest == s2.link[:, None]) & after))
                ok = (left | departed_now) & (j0 < route.shape[1]) & (arrived | (j1 < route.shape[1]))
                mid = ok[:, None] & after & (pos[None, :] < j1[:, None]) & (rest >= 0)
                mt = jnp.where(mid, tfree[jnp.maximum(rest, 0)], 0.0)  # [N, L]
                to_end = jnp.cumsum(mt[:, ::-1], axis=1)[:, ::-1]  # free-flow time from link j's entry to exit_t
                tables = record(tables, mid, rest, exit_t[:, None] - to_end, mt, jnp.zeros_like(mid))
                exp = jnp.where(ok & was_on, jnp.maximum(exp - mt.sum(axis=1), 0.0), exp)
                # Per-vehicle traversals (queue table): the span's links at their split times.
                ent = jnp.where(mid, exit_t[:, None] - to_end, ent)
                ext = jnp.where(mid, exit_t[:, None] - to_end + mt, ext)
            delayed = exp > tfree[jnp.maximum(s.link, 0)] * 1.05 + 1e-3
            tables = record(tables, left, s.link, s.enter, exp, delayed)
            at0 = left[:, None] & (pos[None, :] == jq[:, None])
            ent = jnp.where(at0, s.enter[:, None], ent)
            ext = jnp.where(at0, (s.enter + exp)[:, None], ext)
            return (s2, ptr, tables, ent, ext), None

        z = jnp.zeros(size, jnp.float32)
        keys = jax.random.split(key, horizon)
        nan = jnp.full(route.shape, jnp.nan, jnp.float32)  # [N, L] entry / exit per route position
        (sf, ptr, tables, ent, ext), _ = jax.lax.scan(
            body, (state, jnp.zeros(n, jnp.int32), (z, z, z), nan, nan), keys)
        if censored:
            # Vehicles still on a link at the horizon: their time so far is a lower bound of
            # that traversal. Left out, a jammed link's late bins would look free (no one
            # left it), and the search would keep sending vehicles into the jam.
            on = (sf.link >= 0) & (sf.status != _ARRIVED)
            so_far = jnp.maximum(sf.t.astype(jnp.float32) * dt - sf.enter, 0.0)
            tables = record(tables, on, sf.link, sf.enter, so_far, on)
            j = position(sf.link, ptr, on)
            at = on[:, None] & (pos[None, :] == j[:, None])
            ent = jnp.where(at, sf.enter[:, None], ent)
            ext = jnp.where(at, jnp.float32(horizon * dt), ext)  # still there: exit ≥ the horizon
        tsum, cnt, ndel = tables
        departed = sf.status != 0
        return (tsum[:-1].reshape(e, num_bins), cnt[:-1].reshape(e, num_bins),
                ndel[:-1].reshape(e, num_bins), jnp.where(departed, sf.travel_time, 0.0),
                sf.status == _ARRIVED, route, ent, ext)

    tfree = jnp.asarray(np.asarray(env.network.link_tfree), jnp.float32)
    return jax.jit(run)


def _build_cost(num_bins: int, bin_s: float):
    """Time-dependent cost of padded link sequences: ``links [N, K, L]`` (−1 pad),
    ``depart [N]`` s, link table ``[E, B]`` → ``[N, K]`` seconds (inf where no route)."""

    def one(links, t0, table):
        def step(t, e):
            b = jnp.clip((t / bin_s).astype(jnp.int32), 0, num_bins - 1)
            return jnp.where(e >= 0, t + table[jnp.maximum(e, 0), b], t), None

        t, _ = jax.lax.scan(step, t0, links)
        return t - t0

    per_vehicle = jax.vmap(one, in_axes=(0, None, None))  # over candidates
    cost = jax.vmap(per_vehicle, in_axes=(0, 0, None))  # over vehicles

    def run(links, depart, table, valid):
        return jnp.where(valid, cost(links, depart, table), jnp.inf)

    return jax.jit(run)


def link_headways(network) -> np.ndarray:
    """Seconds between exits at capacity per link ``[E]``, as the env holds them (float32 of
    ``3600 / link_flow_capacity``): the queue table's ``headway``."""
    flow = np.asarray(network.link_flow_capacity, np.float64) / 3600.0
    return (1.0 / flow).astype(np.float32).astype(np.float64)


class QueueTable:
    """Link entry and exit times of a newcomer from the last simulation's per-vehicle
    traversals (the ``queue`` table), for the env's spatial-queue links with free running time.

    The env serves each link FIFO: a vehicle entering link ``e`` at ``a`` is ready to leave
    at ``u = max(a + t_e, x_prev + h_e)`` (``x_prev``: the exit of the vehicle ahead of it,
    ``h_e`` one capacity headway) and leaves then, or when the next link has room
    (spillback). Ahead of vehicle ``i`` entering at ``a`` are the vehicles that entered ``e``
    before ``a``, and at exactly ``a`` those of lower index (the env's tie rule). A link ``f``
    with storage ``S_f`` admits its ``m``-th entrant once ``m − S_f`` vehicles have left it;
    the entrants are served in the order they became ready (``u`` of their previous link,
    their departure for the first), none before ``m`` others have entered. With the other vehicles' traversals fixed, a route is
    priced link by link on its own clock: wait for room on ``f`` behind those ready earlier,
    enter, be ready to leave at ``u``. That prices a vehicle's own route as the env times it
    (its own traversal is excluded: it does not queue behind itself), and any other route as
    a point queue with storage would (Newell's cumulative counts; the vehicle's effect on the
    others is left out, as a best response's is). The mean table (time per link and entry
    bin) instead gives every vehicle of a bin the bin's mean, whatever its place in the
    queue: on traffic-grid, where most vehicles of a bin enter together and leave one headway
    apart, that alone misprices the routes it was built from by 6–8 %.

    ``optimum`` adds the mean table's externality estimate per link and entry bin (module
    docstring). The point queue's own marginal cost (Ghali & Smith 1995, *Transp. Res. B* 29,
    155–170: a vehicle joining a queue delays every later one of its busy period by one
    headway) was tried and made the simultaneous switching oscillate (traffic-grid-large key
    0: totals 150k–240k), so it is not used."""

    _TICK = 1024.0  # times compared to 1/1024 s; equal times are ordered by vehicle index

    def __init__(self, links, ent, ext, depart, tfree, headway, storage, horizon_s: float):
        # links, ent, ext: [N, L] link id (−1 pad), entry and exit time (NaN: not traversed);
        # depart [N] s; tfree, headway, storage [E].
        n, length = links.shape
        num_links = len(tfree)
        self.tfree = np.asarray(tfree, np.float64)
        self.h = np.asarray(headway, np.float64)
        self.room = np.ceil(np.asarray(storage, np.float64)).astype(np.int64)  # n < S ⇔ n < ceil(S)
        self.horizon_s = float(horizon_s)
        self._n1 = n + 1
        self._ticks = int(np.ceil((horizon_s + 1.0) * self._TICK)) + 2
        ok = (links >= 0) & np.isfinite(ent) & np.isfinite(ext)
        vid_all = np.broadcast_to(np.arange(n)[:, None], links.shape)
        e, a, x, vid = links[ok].astype(np.int64), ent[ok].astype(np.float64), ext[ok].astype(np.float64), vid_all[ok]
        flat = np.flatnonzero(ok.reshape(-1))  # where each traversal sits in [N, L]
        big = 4.0 * (horizon_s + 1e4)  # links stacked apart, so one cumulative max serves all

        # By entry: the last exit so far on the link (the vehicle ahead's), the ready time u.
        key = self._key(e, a, vid)
        order = np.argsort(key, kind="stable")
        self.keys, e_s, a_s, x_s = key[order], e[order], a[order], x[order]
        self.start = np.searchsorted(self.keys, self._key(np.arange(num_links + 1), 0.0, 0))  # [E + 1]
        self.run_max = np.maximum.accumulate(x_s + e_s * big) - e_s * big
        first = np.ones(len(e_s), bool)
        first[1:] = e_s[1:] != e_s[:-1]
        prev = np.where(first, -np.inf, np.concatenate([[-np.inf], self.run_max[:-1]]))
        ready = np.maximum(a_s + self.tfree[e_s], prev + self.h[e_s])

        # By the time each entrant became ready to enter (its previous link's ready time, or its
        # departure): the order in which a full link admits them.
        u = np.full(n * length, np.nan)
        u[flat[order]] = ready
        want = np.concatenate([np.asarray(depart, np.float64)[:, None], u.reshape(n, length)[:, :-1]], 1)[ok]
        want = np.where(np.isfinite(want), want, a)
        self.wkeys = np.sort(self._key(e, want, vid))
        self.entries = a_s  # entry times, ascending per link
        self.wstart = np.searchsorted(self.wkeys, self._key(np.arange(num_links + 1), 0.0, 0))
        # Exits per link in time order: the m-th entrant needs exit number m − room.
        e_sorted = np.sort(e)
        self.exits = np.sort(x + e * big) - e_sorted * big
        self.xstart = np.searchsorted(e_sorted, np.arange(num_links + 1))

    def _key(self, e, t, vid):
        tick = np.clip(np.floor(np.asarray(t, np.float64) * self._TICK), 0, self._ticks - 1).astype(np.int64)
        return (np.asarray(e, np.int64) * self._ticks + tick) * self._n1 + np.asarray(vid, np.int64)

    def cost(self, links, depart, valid, vid, extra=None, bin_s: float = 1.0):
        """``links [N, K, L]`` (−1 pad), ``depart [N]`` s, ``valid [N, K]``, ``vid [N]`` →
        ``(own [N, K], with_extra [N, K])`` seconds (inf where no route): each link entered
        when the last was left (the route's own clock); ``extra [E, B]``: seconds added per
        link and ``bin_s`` entry bin (the optimum's externality), not to the clock."""
        t0 = np.broadcast_to(np.asarray(depart, np.float64)[:, None], links.shape[:2])
        t = t0.copy()
        ext_sum = np.zeros(links.shape[:2])
        v = np.broadcast_to(np.asarray(vid)[:, None], links.shape[:2])
        for j in range(links.shape[2]):
            e = links[:, :, j]
            on = e >= 0
            if not on.any():
                break
            es = np.maximum(e, 0)
            # Room on e: behind the m entrants ready before it, it needs exit number m − room.
            w = np.searchsorted(self.wkeys, self._key(es, t, v), side="left")
            m = w - self.wstart[es]
            # Not before m vehicles have entered (the m-th entry; robust to the env admitting a
            # few out of that order, where one ready earlier was held up at its own link's head).
            admitted = np.where(m > 0, self.entries[np.clip(self.start[es] + m - 1, 0, len(self.entries) - 1)], -np.inf)
            need = self.xstart[es] + m - self.room[es]
            has = need < self.xstart[es + 1]
            room_at = np.where(m < self.room[es], -np.inf,
                               np.where(has, self.exits[np.clip(need, 0, len(self.exits) - 1)], self.horizon_s))
            a = np.maximum(np.maximum(t, room_at), admitted)
            q = self._key(es, a, v)
            p = np.searchsorted(self.keys, q, side="left")  # traversals ahead of it
            last = np.where(p > self.start[es], self.run_max[np.maximum(p - 1, 0)], -np.inf)
            x = np.maximum(a + self.tfree[es], last + self.h[es])
            if extra is not None:  # [E, B] seconds added per link and entry bin
                b = np.clip((a / bin_s).astype(np.int64), 0, extra.shape[1] - 1)
                ext_sum += np.where(on, extra[es, b], 0.0)
            t = np.where(on, x, t)
        own = np.where(valid, t - t0, np.inf)
        return own, np.where(valid, own + ext_sum, np.inf)


# Compiled simulation and cost programs per env object (weak keys: they go with the env), so
# that planning many episodes of one scenario (the DG stage's episodes, the yardsticks' two
# objectives per episode) compiles once, not once per episode.
_COMPILED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _compiled(env, num_bins: int, bin_s: float, censored: bool = True, split_steps: bool = True):
    per_env = _COMPILED.setdefault(env, {})
    key = (num_bins, float(bin_s), bool(censored), bool(split_steps))
    if key not in per_env:
        per_env[key] = (_build_sim(env, num_bins, bin_s, censored, split_steps), _build_cost(num_bins, bin_s))
    return per_env[key]


# ----------------------------------------------------------------------------- planner
def plan_routes(env, key=None, state=None, obs=None, config: EquilibriumConfig = EquilibriumConfig(),
                initial: list[list[int]] | None = None, progress: bool = False) -> PlanResult:
    """Iterate routes in ``env`` (an episode from ``reset(key)``, or ``state``/``obs``) to a
    dynamic equilibrium or optimum (module docstring). ``initial``: the first round's paths
    (default: each vehicle's free-flow shortest path)."""
    t_start = time.perf_counter()
    if key is None:
        key = jax.random.PRNGKey(0)
    if state is None:
        obs, state = env.reset(key)
    graph = env.network
    origin = np.asarray(state.origin)
    dest = np.asarray(state.dest)
    depart_s = np.asarray(state.depart, np.float64) * env.params.dt
    n = origin.shape[0]
    horizon_s = env.spec.horizon * env.params.dt
    bin_s = config.bin_s or 6 * env.params.dt
    num_bins = int(np.ceil(horizon_s / bin_s)) + 1

    conn = getattr(env.network, "connections", None) if config.turn_aware else None
    pairs, inverse, per_pair = candidate_paths(graph, origin, dest, config.candidates, config.penalty,
                                               connections=conn)
    if initial is not None:  # the warm start's routes join the candidates
        for i, p in enumerate(initial):
            if len(p) >= 2 and p not in per_pair[inverse[i]]:
                per_pair[inverse[i]].append(list(p))
    # ≥ candidates + 1 (the warm start's route may join them): one shape per scenario.
    k = max(1, config.candidates + 1, max(len(p) for p in per_pair))
    max_len = max(1, max((len(p) - 1 for ps in per_pair for p in ps), default=1))
    max_len = -(-max_len // 8) * 8  # rounded up so that other episodes reuse the compiled cost
    links = -np.ones((n, k, max_len), np.int32)
    valid = np.zeros((n, k), bool)
    pair_links = [[_links_of(graph, p) for p in ps] for ps in per_pair]
    for i in range(n):
        for c, ls in enumerate(pair_links[inverse[i]]):
            links[i, c, : len(ls)] = ls
            valid[i, c] = True
    choice = np.zeros(n, np.int64)  # candidate 0 = free-flow shortest path
    if initial is not None:
        for i, p in enumerate(initial):
            cands = per_pair[inverse[i]]
            if p in cands:
                choice[i] = cands.index(p)

    def paths_of(ch):
        return [per_pair[inverse[i]][ch[i]] if valid[i, ch[i]] else [int(origin[i])]
                for i in range(n)]

    sim, cost_fn = _compiled(env, num_bins, bin_s, config.censored, config.split_steps)
    p = env.params
    use_queue = config.table == "queue" or (
        config.table == "auto" and p.link_model == "queue" and p.queue_running == "free")
    storage = np.asarray(graph.link_storage, np.float64)
    vid = np.arange(n)
    keep = config.keep if config.keep != "auto" else ("gap" if config.objective == "equilibrium" else "total")
    tfree = graph.link_tfree[:, None] * np.ones((1, num_bins))
    flow = np.asarray(graph.link_flow_capacity, np.float64) / 3600.0  # veh/s
    headway = link_headways(graph)
    rng = np.random.default_rng(config.seed)
    sim_key = jax.random.fold_in(key, 1)
    links_j, depart_j, valid_j = jnp.asarray(links), jnp.asarray(depart_s, jnp.float32), jnp.asarray(valid)
    gaps, totals, errors = [], [], []
    best = (np.inf, choice.copy(), 0)
    for r in range(config.rounds):
        targets = pad_targets([p[1:] if len(p) > 1 else p for p in paths_of(choice)])
        tsum, cnt, ndel, tt, arrived, route, ent, ext = jax.device_get(
            sim(sim_key, obs, state, jnp.asarray(targets)))
        total = float(tt.sum())
        totals.append(total)
        plan = choice.copy()
        by_total = keep == "total" or r == 0
        if by_total and total < best[0]:
            best = (total, plan, r)
        # optimum: the delay a vehicle imposes on others, per link and entry bin (both tables).
        extra = 0.5 * ndel / np.maximum(flow[:, None], 1e-9) if config.objective == "optimum" else None
        if use_queue:
            own_all, cost = QueueTable(route, ent, ext, depart_s, graph.link_tfree, headway, storage,
                                       horizon_s).cost(links, depart_s, valid, vid, extra=extra, bin_s=bin_s)
            current, current_own = cost[vid, choice], own_all[vid, choice]
            # Both sides priced by the same table (a consistent gap); its error on the current
            # routes is reported beside it.
            experienced = current
        else:
            seen = cnt > 0
            own = np.where(seen, tsum / np.maximum(cnt, 1), tfree)
            table = own if extra is None else own + extra
            cost = np.asarray(cost_fn(links_j, depart_j, jnp.asarray(table, jnp.float32), valid_j))
            current = cost[vid, choice]
            if config.objective == "optimum":  # own time of the current routes, for the table error
                current_own = np.asarray(cost_fn(links_j, depart_j, jnp.asarray(own, jnp.float32), valid_j))[vid, choice]
            else:
                current_own = current
            # Experienced cost of the current routes: simulated time (a vehicle that did not
            # arrive counts its time so far plus the table's estimate would double count; use max).
            experienced = np.maximum(tt, current) if config.objective == "equilibrium" else current
        best_c = cost.min(1)
        denom = max(float(experienced.sum()), 1e-9)
        gap = float((experienced.sum() - best_c.sum()) / denom)
        gaps.append(gap)
        if keep == "gap" and r > 0 and total <= totals[0] and gap < gaps[best[2]]:
            best = (total, plan, r)
        errors.append(float(np.abs(tt - current_own).sum() / max(float(tt.sum()), 1e-9)))
        if progress or log.isEnabledFor(logging.INFO):
            log.info("equilibrium planner (%s) round %d: total %.0f s, gap %.4f, table error %.4f",
                     config.objective, r + 1, total, gap, errors[-1])
        if gap < config.gap_tol:
            break
        improve = best_c < current - 1e-3
        if config.switch == "gain":  # each with probability its relative gain
            share = (current - best_c) / np.maximum(current, 1e-9)
        else:  # MSA
            share = 1.0 / (r + 2)
        switch = improve & (rng.random(n) < share)
        choice = np.where(switch, cost.argmin(1), choice)
    return PlanResult(paths_of(best[1]), best[0], gaps, totals, time.perf_counter() - t_start, errors, best[2])


def yardsticks(env, keys, config: EquilibriumConfig = EquilibriumConfig(), rounds: int | None = None) -> dict:
    """Dynamic equilibrium's and optimum's total / mean travel time on the episodes of
    ``keys`` (one ``reset(key)`` each): ``{"equilibrium": {"total_travel_time", "mean_travel_time"},
    "optimum": {...}}``, means over the episodes; mean is per vehicle."""
    out = {}
    for obj in OBJECTIVES:
        cfg = dataclasses.replace(config, objective=obj, rounds=rounds or config.rounds)
        totals, means = [], []
        for k in keys:
            res = plan_routes(env, key=k, config=cfg)
            totals.append(res.total_travel_time)
            means.append(res.total_travel_time / max(len(res.paths), 1))
        out[obj] = {"total_travel_time": float(np.mean(totals)), "mean_travel_time": float(np.mean(means))}
    return out
