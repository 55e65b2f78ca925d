"""The classical expert ("planner" source): writes the same instruction text an LLM would.

Traffic — congestion-aware incremental assignment. Vehicles are taken in departure order and
split into at most ``increments`` groups; each group is routed with Dijkstra on BPR link times
``t_free · (1 + α (n / c)^β)``, where ``n`` is the *expected occupancy* of the link from the
vehicles routed before the group that are still travelling when it departs: a vehicle with
trip time ``T`` counts ``t_e / T`` on each link ``e`` of its route (the share of its trip it
spends there), until its estimated arrival. Vehicles of one group do not see each other, so
``increments = N`` is the exact one-by-one version; the default caps the number of Dijkstra
rounds so that 10,000 vehicles plan in about a second.

MPE simple spread — the optimal agent–landmark assignment (Hungarian method on distances).
"""

from __future__ import annotations

import heapq
import itertools

import numpy as np
from scipy.optimize import linear_sum_assignment

from leed_jax.envs.network import RoadNetwork, path_from_predecessors
from leed_jax.dg.instructions import format_instruction


def bpr_time(graph: RoadNetwork, occupancy: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """Link travel time ``[E]`` in seconds under ``occupancy [E]`` vehicles."""
    ratio = np.maximum(occupancy, 0.0) / np.maximum(graph.link_capacity, 1e-9)
    return graph.link_tfree * (1.0 + alpha * ratio**beta)


def traffic_routes(
    graph: RoadNetwork,
    origin: np.ndarray,
    destination: np.ndarray,
    departure: np.ndarray,
    *,
    dt: float,
    alpha: float,
    beta: float,
    increments: int = 200,
) -> list[list[int]]:
    """Node path ``origin .. destination`` per vehicle (``[]`` if it is unreachable)."""
    origin = np.asarray(origin, dtype=np.int64)
    destination = np.asarray(destination, dtype=np.int64)
    depart_s = np.asarray(departure, dtype=np.float64) * dt
    n = origin.shape[0]
    paths: list[list[int]] = [[] for _ in range(n)]
    occupancy = np.zeros(graph.num_links)
    leaving: list[tuple[float, int]] = []  # heap of (estimated arrival s, vehicle)
    shares: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    order = np.argsort(depart_s, kind="stable")
    for group in np.array_split(order, max(1, min(int(increments), n))):
        if group.size == 0:
            continue
        now = depart_s[group[0]]
        while leaving and leaving[0][0] < now:
            _, j = heapq.heappop(leaving)
            links, share = shares.pop(j)
            np.subtract.at(occupancy, links, share)
        cost = bpr_time(graph, occupancy, alpha, beta)
        sources, which = np.unique(origin[group], return_inverse=True)
        _, pred = graph.shortest_from(sources, cost)
        added = []
        for k, j in enumerate(group):
            o, d = int(origin[j]), int(destination[j])
            path = path_from_predecessors(pred[which[k]], o, d)
            paths[j] = path
            if len(path) < 2:
                continue
            links = np.array([graph.link_index(u, v) for u, v in itertools.pairwise(path)])
            t_links = cost[links]
            trip = float(t_links.sum())
            added.append((j, links, t_links / max(trip, 1e-9), depart_s[j] + trip))
        for j, links, share, arrival in added:
            np.add.at(occupancy, links, share)
            shares[j] = (links, share)
            heapq.heappush(leaving, (arrival, int(j)))
    return paths


def routes_to_text(paths: list[list[int]]) -> str:
    """One ``[MoveTo, Intersection_k, Agent_i]`` line per waypoint after the origin."""
    lines = [
        format_instruction("Intersection", node, i)
        for i, path in enumerate(paths)
        for node in path[1:]
    ]
    return "\n".join(lines) + "\n"


def spread_assignment(agent_pos: np.ndarray, landmark_pos: np.ndarray) -> np.ndarray:
    """Landmark per agent ``[N]`` minimising the summed distance (one agent per landmark when
    ``N ≤ L``; agents beyond the landmarks take their nearest one)."""
    agent_pos = np.asarray(agent_pos, dtype=np.float64)  # [N, 2]
    landmark_pos = np.asarray(landmark_pos, dtype=np.float64)  # [L, 2]
    dist = np.linalg.norm(agent_pos[:, None, :] - landmark_pos[None, :, :], axis=-1)  # [N, L]
    rows, cols = linear_sum_assignment(dist)
    out = dist.argmin(axis=1)
    out[rows] = cols
    return out


def assignment_to_text(targets: np.ndarray) -> str:
    return "\n".join(
        format_instruction("Landmark", lm, i) for i, lm in enumerate(np.asarray(targets))
    ) + "\n"
