"""All-or-nothing loading in JAX: shortest paths from every origin at once, flows down the trees.

Shortest paths are a batched Bellman–Ford (Bellman 1958; Ford 1956) on a node-major ``[V, O]``
distance table: each round, every node takes the cheapest of its in-links' ``dist[src] + cost``
(a gather over a padded in-link table, no scatter) until no distance changes, all origins in
one vectorised sweep. It starts from the previous iteration's trees costed under the new link
costs (an upper bound made of real paths, so the result is still exact), which cuts the rounds
from the trees' depth to the few hops where the trees change. Loading gives each tree link the
demand of the subtree below it, by doubling: ceil(log2 V) rounds of "push 2^k levels up".
Everything runs inside ``jax.jit`` (``lax.while_loop``), so an equilibrium solve is one XLA
program. :class:`HostAllOrNothing` is the same on the host with scipy's Dijkstra (compared in
``benchmarks/assignment.py``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Graph(NamedTuple):
    """Device tables of a problem (``V`` nodes, ``E`` links, ``O`` origins, ``Ki``/``Ko`` max in/out
    degree). Padded entries point at the dummy link ``E`` (cost inf, flow 0)."""

    src: jax.Array  # [E] int32
    dst: jax.Array  # [E] int32
    in_links: jax.Array  # [V, Ki] int32, E-padded
    out_links: jax.Array  # [V, Ko] int32, E-padded
    origins: jax.Array  # [O] int32
    node_demand: jax.Array  # [O, V] demand from origin o to node v


def make_graph(problem) -> Graph:
    """Pack an :class:`~leed_jax.assign.problem.AssignmentProblem` into device tables."""
    v, e = problem.num_nodes, problem.num_links

    def padded(keys):
        deg = np.bincount(keys, minlength=v)
        table = np.full((v, max(int(deg.max()), 1)), e, np.int32)
        fill = np.zeros(v, np.int64)
        for link, u in enumerate(keys.tolist()):
            table[u, fill[u]] = link
            fill[u] += 1
        return table

    node_demand = np.zeros((len(problem.origins), v))
    for d, node in enumerate(problem.destinations.tolist()):
        node_demand[:, node] += problem.demand[:, d]
    ftype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    return Graph(
        src=jnp.asarray(problem.link_src, jnp.int32),
        dst=jnp.asarray(problem.link_dst, jnp.int32),
        in_links=jnp.asarray(padded(problem.link_dst)),
        out_links=jnp.asarray(padded(problem.link_src)),
        origins=jnp.asarray(problem.origins, jnp.int32),
        node_demand=jnp.asarray(node_demand, ftype),
    )


def _doublings(v: int) -> int:
    return max(1, int(np.ceil(np.log2(v + 1))))


def tree_costs(g: Graph, cost: jax.Array, tree: jax.Array) -> jax.Array:
    """Cost ``[V, O]`` of each node's path in ``tree`` under ``cost`` (inf where the tree does
    not reach; 0 at the origin): root-to-node sums by pointer jumping, ceil(log2 V) rounds."""
    v, num_o = tree.shape
    e = g.src.shape[0]
    src_p = jnp.concatenate([g.src, jnp.full((1,), v, jnp.int32)])
    is_origin = jnp.zeros((v, num_o), bool).at[g.origins, jnp.arange(num_o)].set(True)
    own = jnp.where(tree == e, jnp.where(is_origin, 0.0, jnp.inf), jnp.concatenate([cost, jnp.zeros((1,), cost.dtype)])[tree])
    d = jnp.concatenate([own, jnp.zeros((1, num_o), cost.dtype)])  # [V+1, O]; row V: above the root
    anc = jnp.concatenate([src_p[tree], jnp.full((1, num_o), v, jnp.int32)])
    def jump(_, c):
        d, anc = c
        return d + jnp.take_along_axis(d, anc, axis=0), jnp.take_along_axis(anc, anc, axis=0)

    d, _ = jax.lax.fori_loop(0, _doublings(v), jump, (d, anc))
    return d[:v]


def shortest_paths(g: Graph, cost: jax.Array, warm_tree: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Distances ``[V, O]`` from every origin and each node's tree link ``[V, O]`` (the in-link on
    a shortest path; ``E`` at the origin and where unreachable). ``cost`` [E] must be positive.

    ``warm_tree`` (the previous iteration's trees): start Bellman–Ford from the cost of the
    old tree paths under the new costs — an upper bound made of real paths, so the relaxation
    still ends at the exact distances, usually in a few rounds once costs change little.
    Node-major layout: a gather of whole rows (all origins of a node) is contiguous."""
    num_o, v = g.node_demand.shape
    e = g.src.shape[0]
    cost_p = jnp.concatenate([cost, jnp.full((1,), jnp.inf, cost.dtype)])  # [E+1]
    src_p = jnp.concatenate([g.src, jnp.zeros((1,), jnp.int32)])
    in_cost = cost_p[g.in_links][..., None]  # [V, Ki, 1]
    in_src = src_p[g.in_links]  # [V, Ki]
    init = jnp.full((v, num_o), jnp.inf, cost.dtype).at[g.origins, jnp.arange(num_o)].set(0.0)
    start = init if warm_tree is None else jnp.minimum(init, tree_costs(g, cost, warm_tree))

    def relax(dist):
        cand = dist[in_src] + in_cost  # [V, Ki, O]
        return jnp.minimum(init, cand.min(1)), cand

    def body(c):
        dist, _ = c
        new, _ = relax(dist)
        new = jnp.minimum(new, dist)
        return new, jnp.any(new < dist)

    dist, _ = jax.lax.while_loop(lambda c: c[1], body, (start, jnp.array(True)))
    _, cand = relax(dist)
    k = jnp.argmin(cand, axis=1)  # [V, O]
    tree = jnp.take_along_axis(g.in_links, k, axis=1)  # [V, O]
    reached = jnp.isfinite(dist) & (init != 0.0)
    return dist, jnp.where(reached, tree, e)


def load(g: Graph, tree: jax.Array) -> jax.Array:
    """Link flows [E] when every origin sends its demand down its shortest-path ``tree`` [V, O].

    The flow through node v is the demand of v's whole subtree, ``S = Σ_j T^j d`` (T: push one
    level up the tree). By doubling, ``Σ_{j<2^K} T^j = Π_k (I + T^{2^k})``: K = ceil(log2 V)
    rounds of "push 2^k levels up" (a segment sum) and "jump to the 2^(k+1)-th ancestor" (a
    gather), instead of one round per tree level."""
    v, num_o = tree.shape
    e = g.src.shape[0]
    src_p = jnp.concatenate([g.src, jnp.full((1,), v, jnp.int32)])  # dummy link E → dummy node V
    cols = jnp.arange(num_o)[None, :]
    anc = jnp.concatenate([src_p[tree], jnp.full((1, num_o), v, jnp.int32)])  # [V+1, O] parent; V = none
    x = jnp.concatenate([g.node_demand.T, jnp.zeros((1, num_o), g.node_demand.dtype)])  # [V+1, O]
    def push(_, c):
        x, anc = c
        pushed = jax.ops.segment_sum(x.reshape(-1), (anc * num_o + cols).reshape(-1), num_segments=(v + 1) * num_o)
        return x + pushed.reshape(v + 1, num_o).at[v].set(0.0), jnp.take_along_axis(anc, anc, axis=0)

    x, _ = jax.lax.fori_loop(0, _doublings(v), push, (x, anc))
    flow = jax.ops.segment_sum(x[:v].reshape(-1), tree.reshape(-1), num_segments=e + 1)
    return flow[:e]


def all_or_nothing(g: Graph, cost: jax.Array, warm_tree: jax.Array | None = None):
    """All-or-nothing flows [E] under ``cost``, the total shortest-path cost ``Σ demand · dist``
    (the lower bound of the relative gap) and the shortest-path trees [V, O] (to warm-start the
    next call)."""
    dist, tree = shortest_paths(g, cost, warm_tree)
    spt = jnp.where(g.node_demand.T > 0, g.node_demand.T * dist, 0.0).sum()
    return load(g, tree), spt, tree


class HostAllOrNothing:
    """All-or-nothing loading on the host: scipy's Dijkstra from every origin, then each origin's
    demand pushed up its tree in one pass over the nodes, farthest first (vectorised over
    origins). Built once per problem; ``__call__(cost [E]) -> (flow [E], Σ demand · dist)``."""

    def __init__(self, problem):
        v, e = problem.num_nodes, problem.num_links
        self.v, self.e = v, e
        self.src, self.dst = problem.link_src, problem.link_dst
        self.origins = problem.origins
        # Parallel links share a (src, dst) pair: Dijkstra sees the cheapest of each pair.
        pair = self.src * v + self.dst
        self.pairs, self.pair_of = np.unique(pair, return_inverse=True)
        self.node_demand = np.zeros((len(self.origins), v))
        for d, node in enumerate(problem.destinations.tolist()):
            self.node_demand[:, node] += problem.demand[:, d]

    def __call__(self, cost: np.ndarray) -> tuple[np.ndarray, float]:
        from scipy.sparse import csr_matrix
        from scipy.sparse.csgraph import dijkstra

        v = self.v
        order = np.lexsort((cost, self.pair_of))
        first = np.ones(self.e, bool)
        first[1:] = self.pair_of[order[1:]] != self.pair_of[order[:-1]]
        best_link = order[first]  # [P] cheapest link of each pair, in pair order
        ps, pd = self.pairs // v, self.pairs % v
        g = csr_matrix((cost[best_link], (ps, pd)), shape=(v, v))
        dist, pred = dijkstra(g, directed=True, indices=self.origins, return_predecessors=True)  # [O, V]
        spt = float(np.where(self.node_demand > 0, self.node_demand * np.where(np.isfinite(dist), dist, 0.0), 0.0).sum())
        num_o = len(self.origins)
        has = pred >= 0  # [O, V] reached and not the origin
        pair_idx = np.searchsorted(self.pairs, np.where(has, pred, 0) * v + np.arange(v)[None, :])
        tree_link = best_link[pair_idx[has]]
        # Subtree sums by doubling (see `load`): ceil(log2 V) rounds, not one per tree level.
        anc = np.where(has, pred, v)  # [O, V] parent; v = none
        anc = np.concatenate([anc, np.full((num_o, 1), v)], 1)  # [O, V+1]
        base = (np.arange(num_o) * (v + 1))[:, None]
        x = np.concatenate([self.node_demand, np.zeros((num_o, 1))], 1)  # [O, V+1]
        for _ in range(max(1, int(np.ceil(np.log2(v + 1))))):
            x = x + np.bincount((anc + base).ravel(), weights=x.ravel(), minlength=num_o * (v + 1)).reshape(num_o, v + 1)
            x[:, v] = 0.0
            anc = np.take_along_axis(anc, anc, axis=1)
        flow = np.bincount(tree_link, weights=x[:, :v][has], minlength=self.e)
        return flow, spt
