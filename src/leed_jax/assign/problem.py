"""A static traffic assignment problem: links with BPR costs, origins, destinations, demand.

:class:`AssignmentProblem` is host-side numpy, built once; :mod:`leed_jax.assign.solver` moves it
to the device. Constructors: :func:`problem_from_tntp` (a TNTP network and trips matrix) and
:func:`problem_from_scenario` (an env scenario's own network and vehicles, as flows).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from leed_jax.envs.base import ScenarioError


@dataclasses.dataclass(frozen=True, eq=False)
class AssignmentProblem:
    """Links ``e = 0..E-1`` from ``link_src[e]`` to ``link_dst[e]`` (node indices ``0..V-1``),
    BPR cost ``t_e(x) = t0_e (1 + b_e (x / capacity_e)^power_e)`` in the caller's time unit,
    and ``demand [O, D]`` (flow per unit time, e.g. veh/h) from node ``origins[o]`` to node
    ``destinations[d]``. Every positive demand must be routable (checked here).

    ``time_unit`` and ``flow_unit`` only label the reports. Nodes a path may not pass through
    (TNTP zone centroids) are handled by whoever builds the links — e.g. by splitting each into a
    source and a sink node, as :func:`leed_jax.envs.tntp.read_tntp_network` does.
    """

    name: str
    num_nodes: int
    link_src: np.ndarray  # [E] int
    link_dst: np.ndarray  # [E] int
    t0: np.ndarray  # [E] free-flow time
    capacity: np.ndarray  # [E] flow capacity
    b: np.ndarray  # [E]
    power: np.ndarray  # [E]
    origins: np.ndarray  # [O] node index
    destinations: np.ndarray  # [D] node index
    demand: np.ndarray  # [O, D]
    time_unit: str = "min"
    flow_unit: str = "veh/h"
    node_labels: np.ndarray | None = None  # [V] the source's own node numbers (TNTP), for reports

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)
        for k in ("link_src", "link_dst", "origins", "destinations"):
            set_(k, np.asarray(getattr(self, k), np.int64).reshape(-1))
        for k in ("t0", "capacity", "b", "power"):
            set_(k, np.asarray(getattr(self, k), np.float64).reshape(-1))
        set_("demand", np.asarray(self.demand, np.float64))
        e, v = len(self.link_src), int(self.num_nodes)
        for k in ("link_dst", "t0", "capacity", "b", "power"):
            if len(getattr(self, k)) != e:
                raise ScenarioError(f"assignment problem {self.name!r}: {k} has {len(getattr(self, k))} entries, expected {e}")
        if e == 0 or v < 2:
            raise ScenarioError(f"assignment problem {self.name!r}: needs links and at least 2 nodes")
        nodes = np.concatenate([self.link_src, self.link_dst, self.origins, self.destinations])
        if nodes.min() < 0 or nodes.max() >= v:
            raise ScenarioError(f"assignment problem {self.name!r}: a node index is outside 0..{v - 1}")
        if not ((self.t0 > 0).all() and (self.capacity > 0).all()):
            raise ScenarioError(f"assignment problem {self.name!r}: free-flow times and capacities must be positive")
        if not ((self.b >= 0).all() and (self.power >= 0).all()):
            raise ScenarioError(f"assignment problem {self.name!r}: BPR b and power must be non-negative")
        if self.demand.shape != (len(self.origins), len(self.destinations)):
            raise ScenarioError(
                f"assignment problem {self.name!r}: demand is {self.demand.shape}, expected "
                f"({len(self.origins)}, {len(self.destinations)})"
            )
        if not np.isfinite(self.demand).all() or (self.demand < 0).any():
            raise ScenarioError(f"assignment problem {self.name!r}: demand must be finite and non-negative")
        dist = free_flow_times(self)
        bad = (self.demand > 0) & ~np.isfinite(dist)
        if bad.any():
            o, d = np.argwhere(bad)[0]
            raise ScenarioError(
                f"assignment problem {self.name!r}: node {self.destinations[d]} cannot be reached from node "
                f"{self.origins[o]}, which sends it {self.demand[o, d]:g}"
            )

    @property
    def num_links(self) -> int:
        return len(self.link_src)

    @property
    def total_demand(self) -> float:
        return float(self.demand.sum())


def free_flow_times(p: AssignmentProblem) -> np.ndarray:
    """Free-flow shortest times ``[O, D]`` (scipy Dijkstra; inf where unreachable)."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import dijkstra

    best: dict[tuple[int, int], float] = {}
    for s, d, c in zip(p.link_src.tolist(), p.link_dst.tolist(), p.t0.tolist()):
        if c < best.get((s, d), np.inf):
            best[(s, d)] = c
    keys = np.array(list(best), np.int64).reshape(-1, 2)
    g = csr_matrix((np.array(list(best.values())), (keys[:, 0], keys[:, 1])), shape=(p.num_nodes, p.num_nodes))
    dist = dijkstra(g, directed=True, indices=p.origins)
    return dist[:, p.destinations]


def problem_from_tntp(net_file: str | Path, trips_file: str | Path) -> AssignmentProblem:
    """The TNTP assignment problem of a ``*_net.tntp`` and ``*_trips.tntp`` pair, in the files'
    own units (free-flow time as given, usually minutes; capacity and trips in veh/h). Zone
    centroids below ``<FIRST THRU NODE>`` are split into a source and a sink node, so no path
    passes through one. Link ``e`` is the file's ``e``-th link."""
    from leed_jax.envs.tntp import read_tntp_network, read_tntp_trips

    tn = read_tntp_network(net_file, split_centroids=True)
    od = read_tntp_trips(trips_file)
    z = tn.num_zones or od.shape[0]
    if od.shape != (z, z):
        raise ScenarioError(f"{trips_file}: {od.shape[0]} zones but {net_file} has {z}")
    od = od.copy()
    np.fill_diagonal(od, 0.0)  # intra-zonal trips never load a link
    keep = tn.zone_origin >= 0
    return AssignmentProblem(
        name=tn.net.name,
        num_nodes=tn.net.num_nodes,
        link_src=tn.net.link_src,
        link_dst=tn.net.link_dst,
        t0=tn.link_fftime,
        capacity=tn.link_capacity,
        b=tn.link_b,
        power=tn.link_power,
        origins=tn.zone_origin[keep],
        destinations=tn.zone_dest[keep],
        demand=od[np.ix_(keep, keep)],
        time_unit="min",
        flow_unit="veh/h",
        node_labels=tn.node_ids,
    )


def problem_from_network(net, origin, destination, departure_s, window_s: float | None = None, name: str = "") -> AssignmentProblem:
    """An env network (:class:`~leed_jax.envs.network.RoadNetwork`) and vehicles ``origin``,
    ``destination`` [N] (node indices) departing at ``departure_s`` [N] seconds, as a static
    problem: each vehicle is a flow of ``3600 / window_s`` veh/h, where the departure window
    ``window_s`` defaults to the span of the departures (at least one second). Links use the
    network's ``link_tfree`` (seconds), ``link_flow_capacity`` (veh/h), ``link_bpr_b`` and
    ``link_bpr_power``. Times are reported in seconds."""
    origin = np.asarray(origin, np.int64)
    destination = np.asarray(destination, np.int64)
    dep = np.asarray(departure_s, np.float64)
    if window_s is None:
        window_s = float(dep.max() - dep.min()) if len(dep) else 0.0
    window_s = max(float(window_s), 1.0)
    moving = origin != destination
    o_nodes, o_idx = np.unique(origin[moving], return_inverse=True)
    d_nodes, d_idx = np.unique(destination[moving], return_inverse=True)
    demand = np.zeros((len(o_nodes), len(d_nodes)))
    np.add.at(demand, (o_idx, d_idx), 3600.0 / window_s)
    return AssignmentProblem(
        name=name or net.name,
        num_nodes=net.num_nodes,
        link_src=net.link_src,
        link_dst=net.link_dst,
        t0=net.link_tfree,
        capacity=net.link_flow_capacity,
        b=net.link_bpr_b,
        power=net.link_bpr_power,
        origins=o_nodes,
        destinations=d_nodes,
        demand=demand,
        time_unit="s",
        flow_unit="veh/h",
    )


def problem_from_scenario(name_or_path, window_s: float | None = None, **overrides) -> AssignmentProblem:
    """The static problem of an env scenario (bundled name or TOML path, with the same flat
    overrides as :func:`leed_jax.make_env`): its network and its vehicles as flows over the
    departure window (``[demand] departure_window`` steps × ``dt`` unless ``window_s`` is
    given). For UE / SO yardsticks of a scenario: ``solve(problem_from_scenario("traffic-grid"))``.
    """
    from leed_jax.envs.registry import make_env

    env = make_env(name_or_path, **overrides)
    if not hasattr(env, "network") or not hasattr(env, "demand"):
        raise ScenarioError(f"scenario {name_or_path!r} is not a traffic scenario (no road network)")
    dt = float(env.params.dt)
    dem = env.demand
    if window_s is None:
        steps = env.scenario.tables.get("demand", {}).get("departure_window")
        window_s = float(steps) * dt if steps else None
    return problem_from_network(
        env.network, dem.origin, dem.destination, np.asarray(dem.departure) * dt, window_s, name=env.scenario.name
    )
