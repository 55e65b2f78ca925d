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


@dataclasses.dataclass(frozen=True, eq=False)
class RandomDemandModel:
    """The scenario's random demand model: destinations uniform over ``pool`` (all nodes, or
    ``hotspots`` fixed nodes drawn once from the scenario seed), origins uniform over the nodes
    that can reach the destination (never the destination itself), departures uniform over
    steps ``[0, departure_window)``. :meth:`draw` is the host (numpy) draw of one episode;
    the env's ``reset`` draws episodes from the same law inside ``jit`` (see :meth:`tables`).
    """

    num_agents: int
    departure_window: int
    pool: np.ndarray  # [P] destination nodes
    origins: np.ndarray  # [P, V] valid origins of each pool node, padded with the first one
    origin_count: np.ndarray  # [P] how many valid origins each pool node has

    @classmethod
    def build(cls, net: RoadNetwork, num_agents: int, departure_window: int, seed: int = 0,
              hotspots: int = 0) -> RandomDemandModel:
        if num_agents <= 0:
            raise ScenarioError(f"num_agents must be positive, got {num_agents}")
        if departure_window <= 0:
            raise ScenarioError(f"departure_window must be positive, got {departure_window}")
        v = net.num_nodes
        rng = np.random.default_rng(seed)
        pool = np.arange(v) if hotspots <= 0 else np.sort(rng.choice(v, size=min(hotspots, v), replace=False))
        ok = np.isfinite(net.tt[:, pool]).T & (np.arange(v)[None, :] != pool[:, None])  # [P, V]
        if not ok.any(axis=1).all():
            keep = ok.any(axis=1)
            if not keep.any():
                raise ScenarioError(f"network {net.name!r}: no node can reach any destination of the demand")
            pool, ok = pool[keep], ok[keep]
        count = ok.sum(1)
        origins = np.zeros(ok.shape, np.int32)
        for j, row in enumerate(ok):
            idx = np.flatnonzero(row)
            origins[j, : len(idx)] = idx
            origins[j, len(idx):] = idx[0]
        return cls(int(num_agents), int(departure_window), pool.astype(np.int32), origins, count.astype(np.int32))

    def draw(self, seed: int) -> Demand:
        """One episode's vehicles (numpy), numbered by departure."""
        rng = np.random.default_rng(seed)
        n = self.num_agents
        j = rng.integers(0, len(self.pool), n)
        origin = self.origins[j, (rng.random(n) * self.origin_count[j]).astype(np.int64)]
        departure = rng.integers(0, self.departure_window, n)
        order = np.argsort(departure, kind="stable")
        return Demand(origin[order].astype(np.int32), self.pool[j][order].astype(np.int32),
                      departure[order].astype(np.int32))


def random_demand(
    net: RoadNetwork,
    num_agents: int,
    departure_window: int,
    seed: int = 0,
    hotspots: int = 0,
) -> Demand:
    """Uniform random origin–destination pairs (never unreachable, never origin == destination),
    departures uniform over ``[0, departure_window)``. With ``hotspots > 0`` destinations are
    drawn from that many fixed nodes, which concentrates traffic and creates congestion.
    (One draw of :class:`RandomDemandModel` with the same seed.)"""
    return RandomDemandModel.build(net, num_agents, departure_window, seed, hotspots).draw(seed)


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
