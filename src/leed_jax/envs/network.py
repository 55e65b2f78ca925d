"""Road networks: a directed graph of intersections (nodes) and links, held host-side in numpy.

Constructors: :func:`grid_network` (generated), :func:`read_tntp` (``*_net.tntp``),
:func:`read_sumo` (SUMO ``.net.xml``, optional extra ``sumo``). Every constructor returns a
:class:`RoadNetwork` whose derived tables (padded out-links, turn-aware all-pairs free-flow
times) are computed once here, so the JAX env only gathers from them. The same object is the
DG stage's routing graph: node-level queries (``link_index``, ``successors``, ``shortest_from``
on any link costs, ``shortest_path``, the plain all-pairs ``node_tt``) are computed on first use
and cached, so an env that never plans pays nothing for them. Shortest paths use
``scipy.sparse.csgraph.dijkstra`` (C speed, many sources at once).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import numpy as np

from leed_jax.envs.base import ScenarioError


@dataclasses.dataclass(frozen=True, eq=False)
class RoadNetwork:
    """A directed road graph. Units: metres, metres/second, seconds, vehicles.

    Attributes (``V`` nodes, ``E`` links, ``K`` max out-degree):
        node_xy [V, 2]; node_names list[str]; link_src, link_dst [E] int;
        link_length [E] m; link_speed [E] m/s; link_lanes [E]; link_capacity [E] vehicles the
        link holds before the BPR law bites (n / c = 1); link_tfree [E] s;
        out_links [V, K] link ids, -1 padded; tt [V, V] free-flow shortest time under the
        turn rules (inf where unreachable; see below).

    Optional per-link data (``None`` → the default named here, filled in ``__post_init__``):
        link_ids list[str]: the source's own link names (SUMO edge ids; ``"u-v"`` otherwise,
        ``"u-v#k"`` for the k-th parallel link); link_flow_capacity [E] veh/h (default: the
        occupancy capacity over the free-flow time, ``3600 · link_capacity / link_tfree``);
        link_storage [E] vehicles a link holds at jam (default ``length · lanes / 7.5 m``,
        at least 1); link_bpr_b, link_bpr_power [E] the BPR law's own coefficients (default
        0.15 and 4); link_junction [E] m of ``link_length`` that is the junction crossing at
        the link's end (SUMO's internal lanes, see :func:`read_sumo`; default 0: storage and
        exports use ``link_length - link_junction``); connections [C, 2] int (from_link, to_link) pairs a vehicle may turn
        between (default: every out-link of a link's head node). Derived: turn_allowed [E, K]
        bool, ``turn_allowed[e, k]`` = a vehicle arriving on ``e`` may take slot ``k`` of
        ``out_links[link_dst[e]]``.

    Turn-aware routing tables (derived, free flow, respecting ``connections``):
        link_tt [E, V] s from the end of link e to node v (0 where e ends at v, inf where v
        cannot be reached from e); link_next [E, V] the out-link a vehicle at the end of e
        takes on a fastest path to v (-1 at v or unreachable); ``tt`` [V, V] is the fastest
        time from departing at u to v under the same turn rules (equal to the plain graph's
        shortest time when every turn is allowed).

    Node-level routing (the DG stage's planner, validator and prompts; computed on first use):
        the plain directed graph of node pairs, every turn allowed, where parallel links
        collapse to the fastest one (``link_index``); ``node_tt`` [V, V] its all-pairs
        free-flow times. Under turn restrictions these are routing hints: the env's masks are
        authoritative.
    """

    name: str
    node_xy: np.ndarray
    node_names: list[str]
    link_src: np.ndarray
    link_dst: np.ndarray
    link_length: np.ndarray
    link_speed: np.ndarray
    link_lanes: np.ndarray
    link_capacity: np.ndarray
    link_ids: list[str] | None = None
    link_flow_capacity: np.ndarray | None = None
    link_storage: np.ndarray | None = None
    link_bpr_b: np.ndarray | None = None
    link_bpr_power: np.ndarray | None = None
    link_junction: np.ndarray | None = None
    connections: np.ndarray | None = None
    link_tfree: np.ndarray = dataclasses.field(init=False)
    out_links: np.ndarray = dataclasses.field(init=False)
    tt: np.ndarray = dataclasses.field(init=False)
    turn_allowed: np.ndarray = dataclasses.field(init=False)
    link_tt: np.ndarray = dataclasses.field(init=False)
    link_next: np.ndarray = dataclasses.field(init=False)

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)
        set_("link_src", np.asarray(self.link_src, np.int32))
        set_("link_dst", np.asarray(self.link_dst, np.int32))
        for k in ("link_length", "link_speed", "link_lanes", "link_capacity"):
            set_(k, np.asarray(getattr(self, k), np.float64))
        set_("node_xy", np.asarray(self.node_xy, np.float64).reshape(-1, 2))
        v, e = self.num_nodes, len(self.link_src)
        if e == 0:
            raise ScenarioError(f"network {self.name!r} has no links")
        if len(self.node_names) != v:
            raise ScenarioError(f"network {self.name!r}: {len(self.node_names)} names for {v} nodes")
        for k in ("link_dst", "link_length", "link_speed", "link_lanes", "link_capacity"):
            if len(getattr(self, k)) != e:
                raise ScenarioError(f"network {self.name!r}: {k} has {len(getattr(self, k))} entries, expected {e}")
        if self.link_src.min() < 0 or max(self.link_src.max(), self.link_dst.max()) >= v:
            raise ScenarioError(f"network {self.name!r}: a link refers to a node outside 0..{v - 1}")
        if (self.link_length <= 0).any() or (self.link_speed <= 0).any() or (self.link_capacity <= 0).any():
            bad = int(np.flatnonzero((self.link_length <= 0) | (self.link_speed <= 0) | (self.link_capacity <= 0))[0])
            raise ScenarioError(f"network {self.name!r}: link {bad} has a non-positive length, speed or capacity")
        set_("link_tfree", self.link_length / self.link_speed)
        deg = np.bincount(self.link_src, minlength=v)
        k = max(int(deg.max()), 1)
        out = -np.ones((v, k), np.int32)
        fill = np.zeros(v, np.int32)
        for link, u in enumerate(self.link_src):
            out[u, fill[u]] = link
            fill[u] += 1
        set_("out_links", out)
        self._fill_optional(set_)
        link_tt, link_next, od_tt = _turn_aware_times(self)
        set_("tt", od_tt)
        set_("link_tt", link_tt)
        set_("link_next", link_next)

    def _fill_optional(self, set_) -> None:
        """Defaults and checks for the optional per-link data (see the class docstring)."""
        e = self.num_links
        if self.link_ids is None:
            seen: dict[tuple[int, int], int] = {}
            ids = []
            for s, d in zip(self.link_src.tolist(), self.link_dst.tolist()):
                k = seen.get((s, d), 0)
                seen[(s, d)] = k + 1
                ids.append(f"{s}-{d}" if k == 0 else f"{s}-{d}#{k}")
            set_("link_ids", ids)
        elif len(self.link_ids) != e or len(set(self.link_ids)) != e:
            raise ScenarioError(f"network {self.name!r}: link_ids must be {e} distinct names")
        else:
            set_("link_ids", [str(i) for i in self.link_ids])
        defaults = {
            "link_flow_capacity": lambda: 3600.0 * self.link_capacity / self.link_tfree,
            "link_storage": lambda: np.maximum(self.link_length * self.link_lanes / 7.5, 1.0),
            "link_bpr_b": lambda: np.full(e, 0.15),
            "link_bpr_power": lambda: np.full(e, 4.0),
            "link_junction": lambda: np.zeros(e),
        }
        for k, make in defaults.items():
            arr = np.asarray(make() if getattr(self, k) is None else getattr(self, k), np.float64)
            if arr.shape != (e,) or not np.isfinite(arr).all() or (arr < 0).any():
                raise ScenarioError(f"network {self.name!r}: {k} must be {e} finite non-negative values")
            set_(k, arr)
        if (self.link_flow_capacity <= 0).any() or (self.link_storage <= 0).any():
            raise ScenarioError(f"network {self.name!r}: link_flow_capacity and link_storage must be positive")
        k_max = self.out_links.shape[1]
        if self.connections is None:
            allowed = self.out_links[self.link_dst] >= 0  # [E, K]
            rows, slots = np.nonzero(allowed)
            set_("connections", np.stack([rows, self.out_links[self.link_dst[rows], slots]], 1).astype(np.int32))
        else:
            conn = np.asarray(self.connections, np.int32).reshape(-1, 2)
            if len(conn) and (conn.min() < 0 or conn.max() >= e):
                raise ScenarioError(f"network {self.name!r}: a connection refers to a link outside 0..{e - 1}")
            if len(conn) and (self.link_dst[conn[:, 0]] != self.link_src[conn[:, 1]]).any():
                bad = conn[np.flatnonzero(self.link_dst[conn[:, 0]] != self.link_src[conn[:, 1]])[0]]
                raise ScenarioError(f"network {self.name!r}: connection {bad.tolist()} joins links that do not meet")
            allowed = np.zeros((e, k_max), bool)
            slot = np.zeros(e, np.int64)  # slot of each link in its tail node's out-list
            for u in range(self.num_nodes):
                for j, link in enumerate(self.out_links[u]):
                    if link >= 0:
                        slot[link] = j
            allowed[conn[:, 0], slot[conn[:, 1]]] = True
            set_("connections", conn)
        set_("turn_allowed", allowed)

    @property
    def num_nodes(self) -> int:
        return len(self.node_xy)

    @property
    def num_links(self) -> int:
        return len(self.link_src)

    @property
    def max_out_degree(self) -> int:
        return self.out_links.shape[1]

    # -- node-level routing: the plain graph of node pairs (see the class docstring) -----------
    @cached_property
    def _pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(pair [P], link_pair [E], fastest [P])``: the adjacent node pairs as ``u * V + v``
        (sorted), each link's pair, and the fastest link of each pair (the one a router takes;
        among links of equal time the last listed)."""
        key = self.link_src.astype(np.int64) * self.num_nodes + self.link_dst
        pair, inv = np.unique(key, return_inverse=True)
        order = np.lexsort((-np.arange(self.num_links), self.link_tfree, key))
        _, first = np.unique(key[order], return_index=True)
        return pair, inv.reshape(-1), order[first]

    @cached_property
    def _pair_to_link(self) -> dict[tuple[int, int], int]:
        pair, _, fastest = self._pairs
        v = self.num_nodes
        return {(int(p // v), int(p % v)): int(e) for p, e in zip(pair, fastest)}

    def link_index(self, u: int, v: int) -> int:
        """Index of the (fastest) link ``u → v``, or -1 if the nodes are not adjacent."""
        return self._pair_to_link.get((int(u), int(v)), -1)

    @cached_property
    def successors(self) -> tuple[tuple[int, ...], ...]:
        """The nodes one link away from each node, ascending."""
        out: list[list[int]] = [[] for _ in range(self.num_nodes)]
        for (u, v) in self._pair_to_link:  # already sorted by (u, v)
            out[u].append(v)
        return tuple(tuple(s) for s in out)

    def _matrix(self, link_cost: np.ndarray | None):
        from scipy.sparse import csr_matrix

        cost = self.link_tfree if link_cost is None else np.asarray(link_cost, dtype=np.float64)
        # Parallel links: csr_matrix would add their costs; keep the cheapest instead.
        pair, inv, _ = self._pairs
        best = np.full(pair.shape, np.inf)
        np.minimum.at(best, inv, np.maximum(cost, 1e-9))  # csgraph ignores explicit zeros
        v = self.num_nodes
        return csr_matrix((best, (pair // v, pair % v)), shape=(v, v))

    def shortest_from(
        self, sources: Sequence[int] | np.ndarray, link_cost: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Dijkstra from each source on the node graph, on free-flow times unless
        ``link_cost [E]``: ``(dist [S, V], predecessor [S, V])`` (-9999 = none)."""
        from scipy.sparse.csgraph import dijkstra

        return dijkstra(self._matrix(link_cost), directed=True, indices=np.asarray(sources),
                        return_predecessors=True)

    @cached_property
    def _free_all_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        return self.shortest_from(np.arange(self.num_nodes))

    @property
    def node_tt(self) -> np.ndarray:
        """All-pairs free-flow travel time ``[V, V]`` in seconds on the node graph (every turn
        allowed; inf if unreachable)."""
        return self._free_all_pairs[0]

    def reachable(self, u: int, v: int) -> bool:
        return bool(np.isfinite(self.node_tt[u, v]))

    def shortest_path(self, u: int, v: int, link_cost: np.ndarray | None = None) -> list[int]:
        """Nodes ``u .. v`` of a shortest path (free-flow times unless ``link_cost [E]``);
        ``[]`` if ``v`` cannot be reached from ``u``."""
        if link_cost is None:
            pred = self._free_all_pairs[1][u]
        else:
            pred = self.shortest_from([u], link_cost)[1][0]
        return path_from_predecessors(pred, u, v)

    def largest_strong_component(self) -> RoadNetwork:
        """The sub-network on the largest strongly connected set of *links*, where link e
        leads to link f when a vehicle may turn from e into f (``connections``). Every kept
        link can then reach every other kept link under the turn rules, so a vehicle departing
        from any kept node can reach any kept node: nobody is trapped by a turn restriction.
        (Without restrictions this is the usual strongly connected set of nodes.)"""
        from scipy.sparse import csr_matrix
        from scipy.sparse.csgraph import connected_components

        e = self.num_links
        conn = self.connections
        adj = csr_matrix((np.ones(len(conn)), (conn[:, 0], conn[:, 1])), shape=(e, e))
        _, labels = connected_components(adj, directed=True, connection="strong")
        lk = labels == np.bincount(labels).argmax()
        if lk.all():
            return self
        v = self.num_nodes
        keep = np.zeros(v, bool)
        keep[self.link_src[lk]] = True
        keep[self.link_dst[lk]] = True
        new_id = -np.ones(v, np.int64)
        new_id[keep] = np.arange(keep.sum())
        return RoadNetwork(
            name=self.name,
            node_xy=self.node_xy[keep],
            node_names=[n for n, k in zip(self.node_names, keep) if k],
            link_src=new_id[self.link_src[lk]],
            link_dst=new_id[self.link_dst[lk]],
            link_length=self.link_length[lk],
            link_speed=self.link_speed[lk],
            link_lanes=self.link_lanes[lk],
            link_capacity=self.link_capacity[lk],
            link_ids=[i for i, k in zip(self.link_ids, lk) if k],
            link_flow_capacity=self.link_flow_capacity[lk],
            link_storage=self.link_storage[lk],
            link_bpr_b=self.link_bpr_b[lk],
            link_bpr_power=self.link_bpr_power[lk],
            link_junction=self.link_junction[lk],
            connections=_remap_connections(self.connections, lk),
        )


def _remap_connections(conn: np.ndarray, keep_link: np.ndarray) -> np.ndarray:
    """The connections [C, 2] between kept links, in the kept links' new numbering."""
    new_link = -np.ones(len(keep_link), np.int64)
    new_link[keep_link] = np.arange(int(keep_link.sum()))
    mapped = new_link[conn]
    return mapped[(mapped >= 0).all(axis=1)]


def path_from_predecessors(pred: np.ndarray, u: int, v: int) -> list[int]:
    """Walk a Dijkstra predecessor row back from ``v`` to ``u``."""
    if u == v:
        return [int(u)]
    if pred[v] < 0:
        return []
    path = [int(v)]
    while path[-1] != u:
        path.append(int(pred[path[-1]]))
    return path[::-1]


def _turn_aware_times(net: RoadNetwork) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Free-flow shortest times on the link graph (link e -> link f where the turn e->f is
    allowed, cost t_free[f]): ``link_tt`` [E, V], ``link_next`` [E, V] and the node-to-node
    ``tt`` [V, V] (see the RoadNetwork docstring). Dijkstra from every link, O(E · C log E)."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import shortest_path

    e, v = net.num_links, net.num_nodes
    conn = net.connections
    tf = net.link_tfree
    # dist[a, b]: time from the end of link a to the end of link b (0 on the diagonal).
    if len(conn):
        g = csr_matrix((tf[conn[:, 1]], (conn[:, 0], conn[:, 1])), shape=(e, e))
        dist = shortest_path(g, method="D", directed=True)
    else:
        dist = np.full((e, e), np.inf)
        np.fill_diagonal(dist, 0.0)
    # link_tt[a, w] = min over links b ending at w of dist[a, b]: a column-group minimum.
    order = np.argsort(net.link_dst, kind="stable")
    heads = net.link_dst[order]
    starts = np.flatnonzero(np.r_[True, heads[1:] != heads[:-1]])
    link_tt = np.full((e, v), np.inf)
    link_tt[:, heads[starts]] = np.minimum.reduceat(dist[:, order], starts, axis=1)
    link_tt[np.arange(e), net.link_dst] = 0.0
    # The next link: the allowed out-link f minimising t_free[f] + link_tt[f, w].
    out = net.out_links[net.link_dst]  # [E, K]
    f = np.maximum(out, 0)
    via = np.where((net.turn_allowed & (out >= 0))[:, :, None], tf[f][:, :, None] + link_tt[f], np.inf)
    best = via.argmin(axis=1)  # [E, V]
    link_next = np.take_along_axis(out, best, axis=1).astype(np.int32)
    reach = np.isfinite(link_tt)
    link_next[~reach | (link_tt == 0.0)] = -1
    # Departing from node u: any out-link of u, then on from its end.
    od = np.full((v, v), np.inf)
    for k in range(net.out_links.shape[1]):
        lk = net.out_links[:, k]
        has = lk >= 0
        od[has] = np.minimum(od[has], tf[lk[has]][:, None] + link_tt[lk[has]])
    np.fill_diagonal(od, 0.0)
    return link_tt, link_next, od


def _flow(lanes, per_lane_h):
    if per_lane_h <= 0:
        raise ScenarioError(f"flow_per_lane must be positive, got {per_lane_h}")
    return np.asarray(lanes, np.float64) * float(per_lane_h)


def _storage(length_m, lanes, jam_spacing):
    if jam_spacing <= 0:
        raise ScenarioError(f"jam_spacing must be positive, got {jam_spacing}")
    return np.maximum(np.asarray(length_m) * np.asarray(lanes) / float(jam_spacing), 1.0)


def _capacity(length_m, lanes, per_lane_km):
    return np.maximum(np.asarray(lanes) * np.asarray(length_m) / 1000.0 * per_lane_km, 1.0)


def grid_network(
    rows: int,
    cols: int,
    link_length: float = 200.0,
    speed: float = 10.0,
    lanes: float = 1.0,
    capacity_per_lane_km: float = 20.0,
    flow_per_lane: float = 1800.0,
    jam_spacing: float = 7.5,
) -> RoadNetwork:
    """A rows × cols grid of intersections with two-way streets between 4-neighbours.

    Node ``r * cols + c`` sits at ``(c * link_length, r * link_length)``. ``flow_per_lane``
    (veh/h per lane) sets the links' flow capacity and ``jam_spacing`` (m per vehicle at jam)
    their storage for the queue model; ``capacity_per_lane_km`` is the BPR models' occupancy
    capacity.
    """
    if rows < 1 or cols < 1 or rows * cols < 2:
        raise ScenarioError(f"grid network needs at least 2 nodes, got rows={rows}, cols={cols}")
    xy = [(c * link_length, r * link_length) for r in range(rows) for c in range(cols)]
    src, dst = [], []
    for r in range(rows):
        for c in range(cols):
            u = r * cols + c
            for dr, dc in ((0, 1), (1, 0), (0, -1), (-1, 0)):
                rr, cc = r + dr, c + dc
                if 0 <= rr < rows and 0 <= cc < cols:
                    src.append(u)
                    dst.append(rr * cols + cc)
    e = len(src)
    length = np.full(e, float(link_length))
    lanes_arr = np.full(e, float(lanes))
    return RoadNetwork(
        name=f"grid{rows}x{cols}",
        node_xy=np.array(xy),
        node_names=[f"Intersection_{i}" for i in range(rows * cols)],
        link_src=np.array(src),
        link_dst=np.array(dst),
        link_length=length,
        link_speed=np.full(e, float(speed)),
        link_lanes=lanes_arr,
        link_capacity=_capacity(length, lanes_arr, capacity_per_lane_km),
        link_flow_capacity=_flow(lanes_arr, flow_per_lane),
        link_storage=_storage(length, lanes_arr, jam_spacing),
    )


def read_tntp(
    path: str | Path, capacity_scale: float = 1.0, length_unit: str = "auto", split_centroids: bool = True
) -> RoadNetwork:
    """Read a TNTP ``*_net.tntp`` file (Transportation Networks for Research format).

    Every per-link field is kept: capacity as a flow (``link_flow_capacity``, veh/h), the
    link's own BPR ``b`` and ``power``, and zone centroids below ``<FIRST THRU NODE>`` that no
    path may pass through (split into a source and a sink node by default, else turn
    restrictions). See :func:`leed_jax.envs.tntp.read_tntp_network`, which also returns zones.
    """
    from leed_jax.envs.tntp import read_tntp_network

    tn = read_tntp_network(path, capacity_scale=capacity_scale, length_unit=length_unit, split_centroids=split_centroids)
    return tn.net


def read_sumo(
    path: str | Path,
    capacity_per_lane_km: float = 20.0,
    vclass: str = "passenger",
    flow_per_lane: float = 1800.0,
    jam_spacing: float = 7.5,
    junctions: bool = True,
) -> RoadNetwork:
    """Read a SUMO ``.net.xml`` (or ``.net.xml.gz``) with sumolib (extra ``leed_jax[sumo]``).

    Junctions become nodes, non-internal edges that allow ``vclass`` become links (``link_ids``
    keeps SUMO's edge ids), lane connections between them become ``connections`` (turn
    restrictions), and the network is cut to its largest strongly connected set of links under
    those turns (:meth:`RoadNetwork.largest_strong_component`), so that every origin can reach
    every destination. Flow capacity is ``lanes · flow_per_lane`` veh/h, storage
    ``length · lanes / jam_spacing`` vehicles (at least 1).

    Junction crossings (``junctions=True``, the default): SUMO's vehicles also drive across each
    junction on its internal lanes, which a link-based env has no element for. Each link's
    length (hence its free-flow time) includes the crossing into the next links it connects to:
    per next link the shortest of SUMO's lane-to-lane crossings (the via lanes, all their
    pieces), averaged over the next links (a link-based model cannot make a left turn longer
    than a right one). The crossing belongs to the link that leads into the junction, where a
    vehicle spends it before it reaches the next link's queue; storage stays the edge's own
    (vehicles do not queue inside the junction). ``junctions=False`` gives the edge lengths
    alone, SUMO's ``length`` attribute.
    """
    path = Path(path)
    if not path.is_file():
        raise ScenarioError(f"SUMO network file not found: {path}")
    try:
        import sumolib
    except ImportError:
        raise ScenarioError("reading SUMO networks needs the 'sumo' extra: pip install 'leed_jax[sumo]'") from None
    try:
        net = sumolib.net.readNet(str(path), withInternal=junctions)
    except Exception as exc:  # noqa: BLE001 (sumolib raises plain xml/sax errors)
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ScenarioError(f"{path}: not a readable SUMO network ({msg})") from None
    edges = [
        e
        for e in net.getEdges()
        if e.getFunction() != "internal" and e.allows(vclass) and e.getFromNode() is not e.getToNode()
    ]
    if not edges:
        raise ScenarioError(f"{path}: no edges that allow {vclass!r}")
    nodes = sorted({n.getID() for e in edges for n in (e.getFromNode(), e.getToNode())})
    index = {n: i for i, n in enumerate(nodes)}
    coord = {e.getFromNode().getID(): e.getFromNode().getCoord() for e in edges}
    coord.update({e.getToNode().getID(): e.getToNode().getCoord() for e in edges})
    edge_length = np.array([max(e.getLength(), 1.0) for e in edges])
    lanes = np.array([float(e.getLaneNumber()) for e in edges])
    link_of = {e.getID(): i for i, e in enumerate(edges)}
    crossing = _crossings(net, edges, link_of, vclass) if junctions else np.zeros(len(edges))
    # Lane connections: a vehicle on edge a may take edge b only where SUMO connects a lane of a
    # to a lane of b that both allow vclass (turn restrictions).
    conn = sorted({
        (link_of[e.getID()], link_of[to.getID()])
        for e in edges
        for to, cons in e.getOutgoing().items()
        if to.getID() in link_of
        and any(c.getFromLane().allows(vclass) and c.getToLane().allows(vclass) for c in cons)
    })
    full = RoadNetwork(
        name=path.name.split(".")[0],
        node_xy=np.array([coord[n][:2] for n in nodes]),
        node_names=nodes,
        link_src=np.array([index[e.getFromNode().getID()] for e in edges]),
        link_dst=np.array([index[e.getToNode().getID()] for e in edges]),
        link_length=edge_length + crossing,
        link_speed=np.array([max(e.getSpeed(), 1.0) for e in edges]),
        link_lanes=lanes,
        link_capacity=_capacity(edge_length, lanes, capacity_per_lane_km),
        link_flow_capacity=_flow(lanes, flow_per_lane),
        link_storage=_storage(edge_length, lanes, jam_spacing),
        link_junction=crossing,
        link_ids=[e.getID() for e in edges],
        connections=np.array(conn, np.int32).reshape(-1, 2),
    )
    return full.largest_strong_component()




def _crossings(net, edges, link_of: dict, vclass: str) -> np.ndarray:
    """[len(edges)] metres: per edge, the mean over the next edges it connects to (lanes that
    allow ``vclass``) of the shortest junction crossing into that edge (its chain of internal
    "via" lanes; 0 where SUMO builds none). See :func:`read_sumo`."""
    out = np.zeros(len(edges))
    for i, edge in enumerate(edges):
        per_next = []
        for to, cons in edge.getOutgoing().items():
            if to.getID() not in link_of:
                continue
            lens = []
            for con in cons:
                if not (con.getFromLane().allows(vclass) and con.getToLane().allows(vclass)):
                    continue
                total, via, hops = 0.0, con.getViaLaneID(), 0
                while via and hops < 16:  # a crossing may be split into several internal lanes
                    lane = net.getLane(via)
                    total += lane.getLength()
                    nxt = lane.getOutgoing()
                    via, hops = (nxt[0].getViaLaneID() if nxt else ""), hops + 1
                lens.append(total)
            if lens:
                per_next.append(min(lens))
        out[i] = float(np.mean(per_next)) if per_next else 0.0
    return out
