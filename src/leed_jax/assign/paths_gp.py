"""Path-based user equilibrium by gradient projection, for exact link flows.

Gradient projection (Jayakrishnan, Tsai, Prashker & Rajadhyaksha 1994, *A faster path-based
algorithm for traffic assignment*, TRR 1443), Gauss–Seidel over origins: for each origin, the
shortest-path tree under the current costs adds any new path to each OD pair's path set; then
for each OD pair flow moves from every non-shortest path ``p`` to the shortest one ``b`` by
``(c_p − c_b) / Σ_{a ∈ p ⊕ b} t'_a`` (a Newton step on the path-flow objective, projected at 0),
and link flows and costs are updated at once. Path-based methods keep converging where
link-based Frank–Wolfe methods stall (about 1e-8 on Anaheim), so they give the exact flows a
published solution is compared with.

It runs on the host (numpy, scipy Dijkstra): each OD pair's step depends on the link costs
left by the previous one, which is sequential work that JAX would not speed up. Start it from
a link-based solution's gap (``solve(..., method="gp")`` does).
"""

from __future__ import annotations

import time

import numpy as np

from leed_jax.envs.base import ScenarioError


def _bpr(p, x, links=slice(None), so=False):
    """Cost of ``links`` at their flows ``x`` (``x`` already restricted to them): BPR time, or
    for the system optimum the marginal cost ``t + x t'``."""
    cap, power = p.capacity[links], p.power[links]
    r = np.maximum(x, 0.0) / cap
    k = (1.0 + power) if so else 1.0
    return p.t0[links] * (1.0 + p.b[links] * k * np.where(power == 0, 1.0, r ** power))


def _dbpr(p, x, links=slice(None), so=False):
    cap, power = p.capacity[links], p.power[links]
    r = np.maximum(x, 0.0) / cap
    safe = np.where(r > 0, r, 1.0)
    d = np.where(r > 0, power * safe ** (power - 1.0), np.where(power == 1, 1.0, 0.0))
    k = (1.0 + power) if so else 1.0
    return p.t0[links] * p.b[links] * k * np.where(power == 0, 0.0, d) / cap


def gradient_projection(problem, gap: float = 1e-10, max_iterations: int = 500, time_limit: float | None = None,
                        callback=None, verbose: bool = False, inner: int = 3, so: bool = False):
    """User equilibrium (or, ``so=True``, system optimum on marginal costs) by path-based
    gradient projection. Returns ``(flow [E], relative gap, iterations, seconds, history)``; an
    iteration is one pass over all origins (new shortest paths, one flow shift per OD pair)
    followed by ``inner`` passes that re-equilibrate the path sets under the moving costs."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import dijkstra

    v, e = problem.num_nodes, problem.num_links
    pair = problem.link_src * v + problem.link_dst

    def tree_paths(cost, o):
        """Shortest-path tree from origin ``o`` (cheapest parallel link per node pair)."""
        srt = np.lexsort((cost, pair))
        first = np.ones(e, bool)
        first[1:] = pair[srt[1:]] != pair[srt[:-1]]
        best = srt[first]
        g = csr_matrix((cost[best], (problem.link_src[best], problem.link_dst[best])), shape=(v, v))
        dist, pred = dijkstra(g, directed=True, indices=problem.origins[o], return_predecessors=True)
        link_of = dict(zip(pair[best].tolist(), best.tolist()))
        return dist, pred, link_of

    def path_to(pred, link_of, origin, dest):
        links = []
        node = dest
        while node != origin:
            u = pred[node]
            if u < 0:
                raise ScenarioError(f"assignment problem {problem.name!r}: node {dest} unreachable from {origin}")
            links.append(link_of[u * v + node])
            node = u
        return np.array(links[::-1], np.int64)

    # Path sets: per OD pair a list of link arrays and their flows; start all-or-nothing at free flow.
    x = np.zeros(e)
    paths: dict[tuple[int, int], list[np.ndarray]] = {}
    flows: dict[tuple[int, int], list[float]] = {}
    pairs_by_origin = [[(o, d) for d in range(len(problem.destinations)) if problem.demand[o, d] > 0]
                       for o in range(len(problem.origins))]
    for o, ods in enumerate(pairs_by_origin):
        if not ods:
            continue
        _, pred, link_of = tree_paths(problem.t0, o)
        for od in ods:
            pth = path_to(pred, link_of, problem.origins[o], problem.destinations[od[1]])
            paths[od], flows[od] = [pth], [problem.demand[od]]
            np.add.at(x, pth, problem.demand[od])

    def rel_gap(x):
        t = _bpr(problem, x, so=so)
        total = float(x @ t)
        spt = 0.0
        for o, ods in enumerate(pairs_by_origin):
            if ods:
                dist, _, _ = tree_paths(t, o)
                spt += sum(problem.demand[od] * dist[problem.destinations[od[1]]] for od in ods)
        return (total - spt) / total if total > 0 else 0.0

    def shift(od):
        """Move flow of one OD pair onto its cheapest path (one projected Newton step)."""
        plist, flist = paths[od], flows[od]
        if len(plist) == 1:
            return
        touched = np.unique(np.concatenate(plist))
        tt = _bpr(problem, x[touched], touched, so)  # costs of the links these paths use
        dt = _dbpr(problem, x[touched], touched, so)
        pos = {a: i for i, a in enumerate(touched.tolist())}
        idx = [np.array([pos[a] for a in p.tolist()]) for p in plist]
        cost = np.array([tt[i].sum() for i in idx])
        b = int(np.argmin(cost))
        on_b = np.zeros(len(touched), bool)
        on_b[idx[b]] = True
        moved = 0.0
        for k, i in enumerate(idx):
            if k == b or flist[k] <= 0.0:
                continue
            on_k = np.zeros(len(touched), bool)
            on_k[i] = True
            s = dt[on_k ^ on_b].sum()
            step = (cost[k] - cost[b]) / s if s > 0 else flist[k]
            delta = min(flist[k], max(step, 0.0))
            if delta > 0.0:
                flist[k] -= delta
                moved += delta
                x[plist[k]] -= delta
        if moved > 0.0:
            flist[b] += moved
            x[plist[b]] += moved
        keep = [k for k in range(len(plist)) if flist[k] > 0.0 or k == b]  # drop emptied paths
        paths[od] = [plist[k] for k in keep]
        flows[od] = [flist[k] for k in keep]

    t0 = time.perf_counter()
    history = []
    g = rel_gap(x)
    it = 0
    while g > gap and it < max_iterations and (time_limit is None or time.perf_counter() - t0 < time_limit):
        it += 1
        for o, ods in enumerate(pairs_by_origin):
            if not ods:
                continue
            t = _bpr(problem, x, so=so)
            _, pred, link_of = tree_paths(t, o)
            for od in ods:
                new = path_to(pred, link_of, problem.origins[o], problem.destinations[od[1]])
                plist, flist = paths[od], flows[od]
                if not any(len(p) == len(new) and (p == new).all() for p in plist):
                    plist.append(new)
                    flist.append(0.0)
                shift(od)
        for _ in range(inner):  # re-equilibrate the path sets under the moving costs
            for od in paths:
                shift(od)
        x = np.maximum(x, 0.0)
        g = rel_gap(x)
        history.append((it, g, time.perf_counter() - t0))
        if verbose:
            import sys

            print(f"  [{problem.name} gp] iteration {it}: relative gap {g:.3e} ({time.perf_counter() - t0:.2f} s)",
                  file=sys.stderr, flush=True)
        if callback is not None and callback(it, g, x.copy()):
            break
    return x, g, it, time.perf_counter() - t0, history
