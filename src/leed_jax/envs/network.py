"""Road networks: a directed graph of intersections (nodes) and links, held host-side in numpy.

Constructors: :func:`grid_network` (generated), :func:`read_tntp` (``*_net.tntp``),
:func:`read_sumo` (SUMO ``.net.xml``, optional extra ``sumo``). Every constructor returns a
:class:`RoadNetwork` whose derived tables (padded out-links, all-pairs free-flow times and
next hops) are computed once here, so the JAX env only gathers from them.
"""

from __future__ import annotations

import dataclasses
import math
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
        out_links [V, K] link ids, -1 padded; tt [V, V] free-flow shortest time (inf where
        unreachable); next_hop [V, V] first node after u on a shortest u→v path (-1).

    Optional per-link data (``None`` → the default named here, filled in ``__post_init__``):
        link_ids list[str]: the source's own link names (SUMO edge ids; ``"u-v"`` otherwise,
        ``"u-v#k"`` for the k-th parallel link); link_flow_capacity [E] veh/h (default: the
        occupancy capacity over the free-flow time, ``3600 · link_capacity / link_tfree``);
        link_storage [E] vehicles a link holds at jam (default ``length · lanes / 7.5 m``,
        at least 1); link_bpr_b, link_bpr_power [E] the BPR law's own coefficients (default
        0.15 and 4); connections [C, 2] int (from_link, to_link) pairs a vehicle may turn
        between (default: every out-link of a link's head node). Derived: turn_allowed [E, K]
        bool, ``turn_allowed[e, k]`` = a vehicle arriving on ``e`` may take slot ``k`` of
        ``out_links[link_dst[e]]``.

    Turn-aware routing tables (derived, free flow, respecting ``connections``):
        link_tt [E, V] s from the end of link e to node v (0 where e ends at v, inf where v
        cannot be reached from e); link_next [E, V] the out-link a vehicle at the end of e
        takes on a fastest path to v (-1 at v or unreachable); ``tt`` [V, V] is the fastest
        time from departing at u to v under the same turn rules (equal to the plain graph's
        shortest time when every turn is allowed). ``next_hop`` is the plain graph's next node
        (a routing hint; under turn restrictions the env's masks are authoritative).
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
    connections: np.ndarray | None = None
    link_tfree: np.ndarray = dataclasses.field(init=False)
    out_links: np.ndarray = dataclasses.field(init=False)
    tt: np.ndarray = dataclasses.field(init=False)
    next_hop: np.ndarray = dataclasses.field(init=False)
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
        _, nh = _all_pairs(v, self.link_src, self.link_dst, self.link_tfree)
        link_tt, link_next, od_tt = _turn_aware_times(self)
        set_("tt", od_tt)
        set_("next_hop", nh)
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
            connections=_remap_connections(self.connections, lk),
        )


def _remap_connections(conn: np.ndarray, keep_link: np.ndarray) -> np.ndarray:
    """The connections [C, 2] between kept links, in the kept links' new numbering."""
    new_link = -np.ones(len(keep_link), np.int64)
    new_link[keep_link] = np.arange(int(keep_link.sum()))
    mapped = new_link[conn]
    return mapped[(mapped >= 0).all(axis=1)]


def _all_pairs(v, src, dst, cost):
    """All-pairs free-flow times and next hops (Dijkstra from every node, on the reversed graph
    so that the predecessor of u in the tree rooted at v is u's next hop towards v)."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import shortest_path

    # Parallel links: keep the fastest (csr_matrix would add duplicates up).
    best: dict[tuple[int, int], float] = {}
    for s, d, c in zip(src.tolist(), dst.tolist(), cost.tolist()):
        if s != d and c < best.get((s, d), math.inf):
            best[(s, d)] = c
    rows = np.array([d for (s, d) in best], np.int64)
    cols = np.array([s for (s, d) in best], np.int64)
    rev = csr_matrix((np.array(list(best.values())), (rows, cols)), shape=(v, v))
    dist_rev, pred_rev = shortest_path(rev, method="D", directed=True, return_predecessors=True)
    tt = dist_rev.T.copy()  # tt[u, v] = dist in reversed graph from v to u
    next_hop = pred_rev.T.astype(np.int32)
    next_hop[next_hop < 0] = -1
    np.fill_diagonal(next_hop, np.arange(v))
    return tt, next_hop


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
) -> RoadNetwork:
    """Read a SUMO ``.net.xml`` (or ``.net.xml.gz``) with sumolib (extra ``leed_jax[sumo]``).

    Junctions become nodes, non-internal edges that allow ``vclass`` become links (``link_ids``
    keeps SUMO's edge ids), lane connections between them become ``connections`` (turn
    restrictions), and the network is cut to its largest strongly connected set of links under
    those turns (:meth:`RoadNetwork.largest_strong_component`), so that every origin can reach
    every destination. Flow capacity is ``lanes · flow_per_lane`` veh/h, storage
    ``length · lanes / jam_spacing`` vehicles (at least 1).
    """
    path = Path(path)
    if not path.is_file():
        raise ScenarioError(f"SUMO network file not found: {path}")
    try:
        import sumolib
    except ImportError:
        raise ScenarioError("reading SUMO networks needs the 'sumo' extra: pip install 'leed_jax[sumo]'") from None
    try:
        net = sumolib.net.readNet(str(path), withInternal=False)
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
    length = np.array([max(e.getLength(), 1.0) for e in edges])
    lanes = np.array([float(e.getLaneNumber()) for e in edges])
    link_of = {e.getID(): i for i, e in enumerate(edges)}
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
        link_length=length,
        link_speed=np.array([max(e.getSpeed(), 1.0) for e in edges]),
        link_lanes=lanes,
        link_capacity=_capacity(length, lanes, capacity_per_lane_km),
        link_flow_capacity=_flow(lanes, flow_per_lane),
        link_storage=_storage(length, lanes, jam_spacing),
        link_ids=[e.getID() for e in edges],
        connections=np.array(conn, np.int32).reshape(-1, 2),
    )
    return full.largest_strong_component()


