"""Travel demand: each vehicle's origin, destination and departure step."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np

from leed_jax.envs.base import ScenarioError
from leed_jax.envs.network import RoadNetwork


@dataclasses.dataclass(frozen=True, eq=False)
class Demand:
    """``origin``, ``destination`` (node indices) and ``departure`` (step), each ``[N]`` int32."""

    origin: np.ndarray
    destination: np.ndarray
    departure: np.ndarray

    @property
    def num_agents(self) -> int:
        return len(self.origin)


def random_demand(
    net: RoadNetwork,
    num_agents: int,
    departure_window: int,
    seed: int = 0,
    hotspots: int = 0,
) -> Demand:
    """Uniform random origin–destination pairs (never unreachable, never origin == destination),
    departures uniform over ``[0, departure_window)``. With ``hotspots > 0`` destinations are
    drawn from that many fixed nodes, which concentrates traffic and creates congestion."""
    if num_agents <= 0:
        raise ScenarioError(f"num_agents must be positive, got {num_agents}")
    if departure_window <= 0:
        raise ScenarioError(f"departure_window must be positive, got {departure_window}")
    rng = np.random.default_rng(seed)
    v = net.num_nodes
    dest_pool = np.arange(v) if hotspots <= 0 else rng.choice(v, size=min(hotspots, v), replace=False)
    origin = rng.integers(0, v, num_agents)
    dest = dest_pool[rng.integers(0, len(dest_pool), num_agents)]
    # Redraw the few pairs that are degenerate or unreachable; a bounded loop, then a clear error.
    for _ in range(100):
        bad = (origin == dest) | ~np.isfinite(net.tt[origin, dest])
        if not bad.any():
            break
        origin[bad] = rng.integers(0, v, int(bad.sum()))
        dest[bad] = dest_pool[rng.integers(0, len(dest_pool), int(bad.sum()))]
    else:
        raise ScenarioError(f"network {net.name!r}: could not draw reachable origin-destination pairs")
    departure = rng.integers(0, departure_window, num_agents)
    order = np.argsort(departure, kind="stable")  # agents numbered by departure: easier to read
    return Demand(origin[order].astype(np.int32), dest[order].astype(np.int32), departure[order].astype(np.int32))


def read_demand(net: RoadNetwork, path: str | Path) -> Demand:
    """Read a CSV with header ``origin,destination,departure``; origins and destinations are node
    names (as in ``net.node_names``) or indices. Unreachable pairs are an error naming the line."""
    path = Path(path)
    if not path.is_file():
        raise ScenarioError(f"demand file not found: {path}")
    names = {n: i for i, n in enumerate(net.node_names)}
    o, d, t = [], [], []
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"origin", "destination", "departure"} - set(reader.fieldnames or [])
        if missing:
            raise ScenarioError(f"{path}:1: demand header lacks column(s) {sorted(missing)}")
        for lineno, row in enumerate(reader, 2):
            a = _node(row["origin"], names, net, path, lineno)
            b = _node(row["destination"], names, net, path, lineno)
            try:
                dep = int(row["departure"])
            except (TypeError, ValueError):
                raise ScenarioError(f"{path}:{lineno}: departure {row['departure']!r} is not an integer step") from None
            if dep < 0:
                raise ScenarioError(f"{path}:{lineno}: departure {dep} is negative")
            if a == b:
                raise ScenarioError(f"{path}:{lineno}: origin and destination are the same node")
            if not np.isfinite(net.tt[a, b]):
                raise ScenarioError(
                    f"{path}:{lineno}: destination {net.node_names[b]} cannot be reached from {net.node_names[a]}"
                )
            o.append(a)
            d.append(b)
            t.append(dep)
    if not o:
        raise ScenarioError(f"{path}: no vehicles")
    return Demand(np.array(o, np.int32), np.array(d, np.int32), np.array(t, np.int32))


def _node(text, names, net, path, lineno) -> int:
    text = (text or "").strip()
    if text in names:
        return names[text]
    if text.lstrip("-").isdigit() and 0 <= int(text) < net.num_nodes:
        return int(text)
    raise ScenarioError(f"{path}:{lineno}: unknown node {text!r} (network {net.name!r} has {net.num_nodes} nodes)")
