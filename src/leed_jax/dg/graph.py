"""A host-side view of a road network for the DG stage: adjacency, reachability, shortest paths.

The validator and the planner only need a directed graph with link lengths, free-flow times
and capacities; :class:`RouteGraph` holds exactly that, so both can be tested without a full
env, and is built from the traffic env's ``RoadNetwork`` with :meth:`RouteGraph.from_network`.
Shortest paths use ``scipy.sparse.csgraph.dijkstra`` (C speed, many sources at once).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from functools import cached_property

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra


@dataclasses.dataclass(frozen=True, eq=False)
class RouteGraph:
    """Directed road graph. Arrays are numpy, links indexed ``0..E-1``, nodes ``0..V-1``."""

    num_nodes: int
    link_src: np.ndarray  # [E] int
    link_dst: np.ndarray  # [E] int
    link_length: np.ndarray  # [E] float, metres
    link_tfree: np.ndarray  # [E] float, free-flow time in seconds
    link_capacity: np.ndarray  # [E] float, vehicles
    node_names: tuple[str, ...] = ()

    @classmethod
    def from_network(cls, net) -> RouteGraph:
        """From ``leed_jax.envs.network.RoadNetwork`` (or anything with the same fields)."""
        return cls(
            num_nodes=int(net.num_nodes),
            link_src=np.asarray(net.link_src, dtype=np.int64),
            link_dst=np.asarray(net.link_dst, dtype=np.int64),
            link_length=np.asarray(net.link_length, dtype=np.float64),
            link_tfree=np.asarray(net.link_tfree, dtype=np.float64),
            link_capacity=np.asarray(net.link_capacity, dtype=np.float64),
            node_names=tuple(str(n) for n in getattr(net, "node_names", ()) or ()),
        )

    @property
    def num_links(self) -> int:
        return int(self.link_src.shape[0])

    @cached_property
    def _pair_to_link(self) -> dict[tuple[int, int], int]:
        # Parallel links: keep the fastest one (the one a router would take).
        best: dict[tuple[int, int], int] = {}
        for e in np.argsort(-self.link_tfree, kind="stable"):
            best[(int(self.link_src[e]), int(self.link_dst[e]))] = int(e)
        return best

    def link_index(self, u: int, v: int) -> int:
        """Index of the link ``u → v``, or -1 if the nodes are not adjacent."""
        return self._pair_to_link.get((int(u), int(v)), -1)

    @cached_property
    def successors(self) -> tuple[tuple[int, ...], ...]:
        out: list[list[int]] = [[] for _ in range(self.num_nodes)]
        for (u, v) in sorted(self._pair_to_link):
            out[u].append(v)
        return tuple(tuple(s) for s in out)

    def _matrix(self, link_cost: np.ndarray | None) -> csr_matrix:
        cost = self.link_tfree if link_cost is None else np.asarray(link_cost, dtype=np.float64)
        # Parallel links: csr_matrix would add their costs; keep the cheapest instead.
        pair = self.link_src * self.num_nodes + self.link_dst
        uniq, inv = np.unique(pair, return_inverse=True)
        best = np.full(uniq.shape, np.inf)
        np.minimum.at(best, inv, np.maximum(cost, 1e-9))  # csgraph ignores explicit zeros
        v = self.num_nodes
        return csr_matrix((best, (uniq // v, uniq % v)), shape=(v, v))

    def shortest_from(
        self, sources: Sequence[int] | np.ndarray, link_cost: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Dijkstra from each source: ``(dist [S, V], predecessor [S, V])`` (-9999 = none)."""
        dist, pred = dijkstra(
            self._matrix(link_cost), directed=True, indices=np.asarray(sources),
            return_predecessors=True,
        )
        return dist, pred

    @cached_property
    def tt(self) -> np.ndarray:
        """All-pairs free-flow travel time ``[V, V]`` in seconds (inf if unreachable)."""
        return self.shortest_from(np.arange(self.num_nodes))[0]

    @cached_property
    def _free_pred(self) -> np.ndarray:
        return self.shortest_from(np.arange(self.num_nodes))[1]

    def reachable(self, u: int, v: int) -> bool:
        return bool(np.isfinite(self.tt[u, v]))

    def shortest_path(self, u: int, v: int, link_cost: np.ndarray | None = None) -> list[int]:
        """Nodes ``u .. v`` of a shortest path (free-flow times unless ``link_cost [E]``);
        ``[]`` if ``v`` cannot be reached from ``u``."""
        if link_cost is None:
            pred = self._free_pred[u]
        else:
            pred = self.shortest_from([u], link_cost)[1][0]
        return path_from_predecessors(pred, u, v)


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


def grid_graph(rows: int, cols: int, length: float = 200.0, speed: float = 13.9,
               capacity: float = 10.0) -> RouteGraph:
    """A bidirectional ``rows × cols`` grid with ``capacity`` vehicles per link (tests and
    examples), built from the env's own grid generator."""
    from leed_jax.envs.network import grid_network

    graph = RouteGraph.from_network(grid_network(rows, cols, link_length=length, speed=speed))
    return dataclasses.replace(graph, link_capacity=np.full(graph.num_links, float(capacity)))
