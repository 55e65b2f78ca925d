"""TNTP files (Transportation Networks for Research format) in full: network, zones, trips, flows.

The format and the public test networks (Sioux Falls, Anaheim, ...) are published by the
Transportation Networks for Research collection (github.com/bstabler/TransportationNetworks,
originally H. Bar-Gera's TNTP pages). Their terms: academic research use only, and any
publication that relies on them must name that source. leed_jax does not ship them; every
reader here takes the path the user gives (tests and benchmarks look in
``<repo>/../shared/data/tntp/``, see :func:`default_tntp_dir`).

Readers:
    :func:`read_tntp_network` ``*_net.tntp`` → :class:`TntpNetwork` (a :class:`RoadNetwork`
        with every per-link field of the file, plus zones and ``<FIRST THRU NODE>``);
    :func:`read_tntp_trips` ``*_trips.tntp`` → origin–destination matrix ``[Z, Z]``;
    :func:`read_tntp_flow` ``*_flow.tntp`` → a published link-flow solution;
    :func:`tntp_demand` OD matrix → env vehicles (a seeded sample scaled to N over a
        departure window); :func:`od_pairs` the same matrix as weighted node pairs.

Zones: TNTP zones ``1..Z`` are the nodes of the same numbers (zone centroids). Nodes numbered
below ``<FIRST THRU NODE>`` are centroids that traffic may start or end at but never pass
through. By default (``split_centroids=True``) each such centroid becomes two nodes: the
original, which keeps only its out-links (where trips start), and a copy appended after the
other nodes, which receives its in-links (where trips end). No path can then pass through a
centroid, for every consumer of the network (the env's masks and shortest-path tables, the
planner, :mod:`leed_jax.assign`), without any turn rule. This matters: on Anaheim the
centroid connectors (1 mile at 55 mph) are shortcuts, and 901 of the 1,406 zone pairs'
free-flow shortest paths would pass through another centroid. With ``split_centroids=False``
the nodes stay as in the file and the rule is expressed as turn restrictions
(``connections``: no in-link → out-link turn at a centroid) and ``through_ok``, which
:mod:`leed_jax.assign` honours.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import numpy as np

from leed_jax.envs.base import ScenarioError
from leed_jax.envs.demand import Demand
from leed_jax.envs.network import RoadNetwork

# Length units named in a file's <ORIGINAL HEADER> (e.g. Anaheim: "Length (ft)") → metres.
_LENGTH_UNITS = {"m": 1.0, "km": 1000.0, "ft": 0.3048, "feet": 0.3048, "mi": 1609.344, "mile": 1609.344, "miles": 1609.344}
# Flow per lane used to express a TNTP capacity (veh/h) as lanes (TNTP files give no lanes).
LANE_FLOW_VEH_H = 1800.0


def default_tntp_dir() -> Path:
    """``$LEED_TNTP_DIR``, else ``<repository root>/../shared/data/tntp`` (where tests and
    benchmarks look; the data are not shipped with leed_jax)."""
    import os

    env = os.environ.get("LEED_TNTP_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[3].parent / "shared" / "data" / "tntp"


@dataclasses.dataclass(frozen=True, eq=False)
class TntpNetwork:
    """A TNTP network: the env's :class:`RoadNetwork` plus what only TNTP has.

    Attributes (``V`` nodes, ``E`` links, ``Z`` zones):
        net: the RoadNetwork (seconds, metres; ``link_flow_capacity`` = the file's capacity in
            veh/h, ``link_bpr_b`` / ``link_bpr_power`` the file's own b and power per link);
        node_ids [V] int: the TNTP number of each node index (a split centroid's two nodes
            share it);
        num_zones: Z; first_thru_node: the file's ``<FIRST THRU NODE>`` (1 when absent);
        zone_origin, zone_dest [Z] int: node index where trips of zone ``z + 1`` start / end
            (the same node unless centroids are split; -1 if no link touches the zone);
        through_ok [V] bool: whether traffic may pass through a node (all True once split;
            False for centroids below ``first_thru_node`` otherwise);
        link_fftime [E]: free-flow time in the file's own unit (minutes, as usually read);
        link_capacity [E]: capacity in the file's unit (veh/h); link_b, link_power [E];
        link_toll, link_type [E]: the file's columns (0 where absent).
    """

    net: RoadNetwork
    node_ids: np.ndarray
    num_zones: int
    first_thru_node: int
    zone_origin: np.ndarray
    zone_dest: np.ndarray
    through_ok: np.ndarray
    link_fftime: np.ndarray
    link_capacity: np.ndarray
    link_b: np.ndarray
    link_power: np.ndarray
    link_toll: np.ndarray
    link_type: np.ndarray
    path: Path


def _metadata(line: str) -> tuple[str, str] | None:
    m = re.match(r"\s*<([^>]+)>(.*)$", line)
    return (m.group(1).strip().upper(), m.group(2).strip()) if m else None


def _int(text: str, path: Path, lineno: int) -> int:
    try:
        return int(text.strip().split()[0])
    except (ValueError, IndexError):
        raise ScenarioError(f"{path}:{lineno}: expected an integer, got {text.strip()!r}") from None


def _require(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ScenarioError(
            f"TNTP {what} file not found: {path} (the TNTP data are not shipped: get them from "
            f"github.com/bstabler/TransportationNetworks and give their path)"
        )
    return path


def read_tntp_network(
    path: str | Path, capacity_scale: float = 1.0, length_unit: str = "auto", split_centroids: bool = True
) -> TntpNetwork:
    """Read a ``*_net.tntp`` file.

    Columns after ``<END OF METADATA>``: init_node term_node capacity length free_flow_time b
    power speed toll link_type (the last five optional: b = 0.15, power = 4, toll = type = 0).
    ``capacity`` is a flow (veh/h) → ``link_flow_capacity``; ``free_flow_time`` is read as
    minutes. The env's BPR-on-occupancy law gets the occupancy capacity ``capacity · t_free``
    (vehicles on the link at capacity flow and free-flow speed) times ``capacity_scale``; the
    flow capacity is scaled too. ``length_unit``: "m", "km", "ft", "mi", or "auto" (the unit
    the file's ``<ORIGINAL HEADER>`` names for Length, else metres; a length of 0 becomes the
    free-flow time in seconds × 1 m/s). Lanes are capacity / 1,800 veh/h (at least 1) since
    TNTP has none; storage follows from length × lanes. Node coordinates come from a sibling
    ``*_node.tntp`` when there is one, else a circle. ``split_centroids``: see the module
    docstring. Links keep the file's order.
    """
    path = _require(path, "network")
    if not capacity_scale > 0:
        raise ScenarioError(f"{path}: capacity_scale must be > 0, got {capacity_scale}")
    cols: list[list[float]] = []
    meta: dict[str, str] = {}
    in_data = False
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{path}: cannot read ({exc})") from None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("~"):
            continue
        if not in_data:
            kv = _metadata(line)
            if kv is not None:
                meta[kv[0]] = kv[1]
                if kv[0] == "END OF METADATA":
                    in_data = True
                elif kv[0] in ("NUMBER OF NODES", "NUMBER OF ZONES", "FIRST THRU NODE", "NUMBER OF LINKS"):
                    _int(kv[1], path, lineno)
            continue
        fields = line.rstrip(";").split()
        if len(fields) < 5:
            raise ScenarioError(
                f"{path}:{lineno}: expected at least 5 columns (init term capacity length fftime), got {len(fields)}"
            )
        try:
            row = [float(f) for f in fields[:10]]
        except ValueError:
            raise ScenarioError(f"{path}:{lineno}: non-numeric link fields {fields[:10]}") from None
        row += [0.15, 4.0, 0.0, 0.0, 0.0][len(row) - 5:]
        a, b = row[0], row[1]
        if a != int(a) or b != int(b) or a < 1 or b < 1:
            raise ScenarioError(f"{path}:{lineno}: node numbers must be positive integers, got {fields[:2]}")
        if not all(math.isfinite(v) for v in row):
            raise ScenarioError(f"{path}:{lineno}: non-finite link fields {fields[:10]}")
        if row[4] <= 0 or row[2] <= 0:
            raise ScenarioError(f"{path}:{lineno}: free_flow_time and capacity must be positive")
        if row[5] < 0 or row[6] < 0:
            raise ScenarioError(f"{path}:{lineno}: BPR b and power must be non-negative")
        cols.append(row[:10])
    if not in_data:
        raise ScenarioError(f"{path}: no <END OF METADATA> line; not a TNTP network file")
    if not cols:
        raise ScenarioError(f"{path}: no links after <END OF METADATA>")
    data = np.array(cols)  # [E, 10]
    src_id, dst_id = data[:, 0].astype(np.int64), data[:, 1].astype(np.int64)
    num_zones = int(meta.get("NUMBER OF ZONES", "0").split()[0] or 0)
    first_thru = int(meta.get("FIRST THRU NODE", "1").split()[0] or 1)
    ids = np.unique(np.concatenate([src_id, dst_id]))
    declared = meta.get("NUMBER OF NODES")
    if declared is not None and ids.max() > int(declared.split()[0]):
        raise ScenarioError(f"{path}: link refers to node {ids.max()} but <NUMBER OF NODES> is {declared.split()[0]}")
    index = -np.ones(int(ids.max()) + 1, np.int64)
    index[ids] = np.arange(len(ids))
    src, dst = index[src_id], index[dst_id]
    through_ok = ids >= first_thru  # [V]
    node_ids, xy = ids, _node_xy(path, ids.tolist())
    zone_origin = np.array([index[z] if z < len(index) else -1 for z in range(1, num_zones + 1)], np.int64)
    zone_dest = zone_origin.copy()
    if split_centroids and not through_ok.all():
        # Each centroid's in-links go to its copy V + k: it becomes a pure sink, the original a pure source.
        cen = np.flatnonzero(~through_ok)
        copy_of = -np.ones(len(ids), np.int64)
        copy_of[cen] = len(ids) + np.arange(len(cen))
        dst = np.where(copy_of[dst] >= 0, copy_of[dst], dst)
        zone_dest = np.where(zone_origin >= 0, np.where(copy_of[zone_origin] >= 0, copy_of[zone_origin], zone_origin), -1)
        node_ids = np.concatenate([ids, ids[cen]])
        xy = np.concatenate([xy, xy[cen]])
        through_ok = np.ones(len(node_ids), bool)
    cap, tfree_min = data[:, 2], data[:, 4]
    tfree_s = tfree_min * 60.0
    unit = _length_unit(meta.get("ORIGINAL HEADER", ""), length_unit, path)
    length = np.where(data[:, 3] > 0, data[:, 3] * unit, tfree_s)
    lanes = np.maximum(np.round(cap / LANE_FLOW_VEH_H), 1.0)
    net = RoadNetwork(
        name=path.name.replace("_net.tntp", "").replace(".tntp", ""),
        node_xy=xy,
        node_names=[f"Intersection_{i}" for i in range(len(node_ids))],
        link_src=src,
        link_dst=dst,
        link_length=length,
        link_speed=length / tfree_s,
        link_lanes=lanes,
        link_capacity=np.maximum(cap / 3600.0 * tfree_s * capacity_scale, 1.0),
        link_flow_capacity=cap * capacity_scale,
        link_bpr_b=data[:, 5],
        link_bpr_power=data[:, 6],
        connections=None if through_ok.all() else _no_through_turns(src, dst, through_ok),
    )
    return TntpNetwork(
        net=net,
        node_ids=node_ids,
        num_zones=num_zones,
        first_thru_node=first_thru,
        zone_origin=zone_origin,
        zone_dest=zone_dest,
        through_ok=through_ok,
        link_fftime=tfree_min,
        link_capacity=cap,
        link_b=data[:, 5],
        link_power=data[:, 6],
        link_toll=data[:, 8],
        link_type=data[:, 9],
        path=path,
    )


def _length_unit(header: str, length_unit: str, path: Path) -> float:
    if length_unit != "auto":
        if length_unit not in _LENGTH_UNITS:
            raise ScenarioError(f"{path}: length_unit {length_unit!r} is not one of auto, {', '.join(_LENGTH_UNITS)}")
        return _LENGTH_UNITS[length_unit]
    m = re.search(r"length\s*\(\s*([a-z]+)\s*\)", header, re.IGNORECASE)
    return _LENGTH_UNITS.get(m.group(1).lower(), 1.0) if m else 1.0


def _no_through_turns(src: np.ndarray, dst: np.ndarray, through_ok: np.ndarray) -> np.ndarray:
    """Allowed turns [C, 2] (from_link, to_link): every in-link → out-link pair at a node, except
    at centroids (``through_ok`` False), which traffic may not pass through."""
    out_of: dict[int, list[int]] = {}
    for e, u in enumerate(src.tolist()):
        out_of.setdefault(u, []).append(e)
    pairs = [(e, f) for e, v in enumerate(dst.tolist()) if through_ok[v] for f in out_of.get(v, [])]
    return np.array(pairs, np.int32).reshape(-1, 2)


def _node_xy(path: Path, ids: list[int]) -> np.ndarray:
    node_file = path.with_name(path.name.replace("_net.tntp", "_node.tntp"))
    coords: dict[int, tuple[float, float]] = {}
    if node_file != path and node_file.is_file():
        for lineno, raw in enumerate(node_file.read_text(errors="replace").splitlines(), 1):
            f = raw.strip().rstrip(";").split()
            if len(f) >= 3 and f[0].lstrip("-").isdigit():
                try:
                    coords[int(f[0])] = (float(f[1]), float(f[2]))
                except ValueError:
                    raise ScenarioError(f"{node_file}:{lineno}: non-numeric coordinates {f[:3]}") from None
    if all(i in coords for i in ids):
        return np.array([coords[i] for i in ids])
    angle = 2 * np.pi * np.arange(len(ids)) / len(ids)
    return np.stack([np.cos(angle), np.sin(angle)], 1) * 1000.0


def read_tntp_trips(path: str | Path) -> np.ndarray:
    """Read a ``*_trips.tntp`` origin–destination matrix → ``od [Z, Z]`` float64 (trips from zone
    ``o + 1`` to zone ``d + 1``, usually per peak hour). Checks ``<TOTAL OD FLOW>`` when given
    (to 1e-4 relative, the files print two decimals)."""
    path = _require(path, "trips")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{path}: cannot read ({exc})") from None
    meta: dict[str, str] = {}
    entries: list[tuple[int, int, float, int]] = []
    origin = None
    in_data = False
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("~"):
            continue
        kv = _metadata(line)
        if kv is not None:
            meta[kv[0]] = kv[1]
            in_data = in_data or kv[0] == "END OF METADATA"
            continue
        if line.lower().startswith("origin"):
            origin = _int(line[6:], path, lineno)
            continue
        if origin is None:
            if in_data or meta:
                raise ScenarioError(f"{path}:{lineno}: destination entries before any 'Origin' line")
            raise ScenarioError(f"{path}:{lineno}: not a TNTP trips file")
        for item in line.split(";"):
            item = item.strip()
            if not item:
                continue
            parts = item.split(":")
            try:
                dest, value = int(parts[0]), float(parts[1])
            except (ValueError, IndexError):
                raise ScenarioError(f"{path}:{lineno}: expected 'destination : trips;', got {item!r}") from None
            if not math.isfinite(value) or value < 0:
                raise ScenarioError(f"{path}:{lineno}: trips must be finite and non-negative, got {value}")
            entries.append((origin, dest, value, lineno))
    if not entries:
        raise ScenarioError(f"{path}: no origin–destination entries")
    zones = int(meta.get("NUMBER OF ZONES", "0").split()[0] or 0) or max(max(o, d) for o, d, _, _ in entries)
    od = np.zeros((zones, zones))
    for o, d, v, lineno in entries:
        if not (1 <= o <= zones and 1 <= d <= zones):
            raise ScenarioError(f"{path}:{lineno}: zone {o if not 1 <= o <= zones else d} outside 1..{zones}")
        od[o - 1, d - 1] += v
    total = meta.get("TOTAL OD FLOW")
    if total is not None:
        try:
            declared = float(total.split()[0])
        except ValueError:
            raise ScenarioError(f"{path}: <TOTAL OD FLOW> {total!r} is not a number") from None
        if abs(od.sum() - declared) > 1e-4 * max(declared, 1.0):
            raise ScenarioError(f"{path}: entries sum to {od.sum():.2f} but <TOTAL OD FLOW> is {declared}")
    return od


def read_tntp_flow(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read a ``*_flow.tntp`` solution (header ``From To Volume Cost``) → (from [E], to [E]
    TNTP node numbers, volume [E], cost [E])."""
    path = _require(path, "flow")
    rows = []
    for lineno, raw in enumerate(path.read_text(errors="replace").splitlines(), 1):
        f = raw.strip().rstrip(";").split()
        if not f or not f[0].lstrip("-").isdigit():
            continue
        try:
            rows.append((int(f[0]), int(f[1]), float(f[2]), float(f[3])))
        except (ValueError, IndexError):
            raise ScenarioError(f"{path}:{lineno}: expected 'from to volume cost', got {raw.strip()!r}") from None
    if not rows:
        raise ScenarioError(f"{path}: no link flows")
    a = np.array(rows)
    return a[:, 0].astype(np.int64), a[:, 1].astype(np.int64), a[:, 2], a[:, 3]


def od_pairs(tn: TntpNetwork, od: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The OD matrix as weighted node pairs for a demand model that redraws vehicles (e.g. per
    episode, inside jit): ``origin [P]``, ``destination [P]`` node indices and ``trips [P]`` of
    the inter-zonal pairs with trips (``trips / trips.sum()`` are the draw probabilities)."""
    od = np.asarray(od, np.float64)
    z = od.shape[0]
    o, d = np.nonzero((od > 0) & ~np.eye(z, dtype=bool))
    return tn.zone_origin[o], tn.zone_dest[d], od[o, d]


def tntp_demand(
    tn: TntpNetwork,
    od: np.ndarray,
    num_agents: int | None = None,
    departure_window: int = 360,
    seed: int = 0,
) -> Demand:
    """OD matrix → env vehicles: ``num_agents`` vehicles (default: the matrix total, rounded, i.e.
    one vehicle per trip) spread over the OD pairs in proportion to their trips, departures
    uniform over ``[0, departure_window)`` steps; seeded.

    Each pair gets ``floor(q)`` of its expected count ``q = od · N / total`` and the remaining
    vehicles go to distinct pairs drawn with probability ∝ the fractional parts, so every
    pair's count is within one vehicle of its expectation and the total is exactly N.
    Intra-zonal trips (origin = destination zone) are left out: they never use the network.
    """
    od = np.asarray(od, np.float64)
    z = tn.num_zones or od.shape[0]
    if od.shape != (z, z):
        raise ScenarioError(f"{tn.path}: trips matrix is {od.shape[0]}×{od.shape[1]} but the network has {z} zones")
    od = od.copy()
    np.fill_diagonal(od, 0.0)
    total = od.sum()
    if total <= 0:
        raise ScenarioError(f"{tn.path}: the trips matrix has no inter-zonal trips")
    n = round(total) if num_agents is None else int(num_agents)
    if n <= 0:
        raise ScenarioError(f"num_agents must be positive, got {n}")
    if departure_window <= 0:
        raise ScenarioError(f"departure_window must be positive, got {departure_window}")
    missing = [k + 1 for k in range(z) if tn.zone_origin[k] < 0 and (od[k].any() or od[:, k].any())]
    if missing:
        raise ScenarioError(f"{tn.path}: zone(s) {missing[:5]} carry trips but no link touches them")
    rng = np.random.default_rng(seed)
    q = od.ravel() * (n / total)
    count = np.floor(q).astype(np.int64)
    frac = q - count
    rest = n - int(count.sum())
    if rest > 0:
        extra = rng.choice(len(q), size=rest, replace=False, p=frac / frac.sum())
        count[extra] += 1
    pair = np.repeat(np.arange(len(q)), count)
    o_zone, d_zone = pair // z, pair % z
    origin, dest = tn.zone_origin[o_zone], tn.zone_dest[d_zone]
    unreachable = ~np.isfinite(tn.net.tt[origin, dest])
    if unreachable.any():
        k = int(np.flatnonzero(unreachable)[0])
        raise ScenarioError(f"{tn.path}: zone {d_zone[k] + 1} cannot be reached from zone {o_zone[k] + 1}")
    departure = rng.integers(0, departure_window, n)
    order = np.lexsort((rng.random(n), departure))  # by departure; shuffled within a step
    return Demand(origin[order].astype(np.int32), dest[order].astype(np.int32), departure[order].astype(np.int32))


def scenario_demand(net_file: Path, table: dict, scenario_path: Path, net_options: dict | None = None) -> Demand:
    """The ``[demand] kind = "tntp"`` table of a scenario: ``trips`` (path, relative to the
    scenario file), ``num_agents`` (default: one vehicle per trip), ``departure_window``
    (steps), ``seed``. ``net_options``: the ``[network]`` table's reader options, so that zones
    map to the same nodes as in the env's network."""
    known = {"kind", "trips", "num_agents", "departure_window", "seed"}
    unknown = sorted(set(table) - known)
    if unknown:
        raise ScenarioError(f"{scenario_path}: [demand] kind 'tntp' does not take {unknown}; it takes {sorted(known)}")
    trips = table.get("trips")
    if not trips:
        raise ScenarioError(f"{scenario_path}: [demand] kind 'tntp' needs trips = 'path/to/X_trips.tntp'")
    trips_path = Path(trips) if Path(trips).is_absolute() else scenario_path.parent / trips
    try:
        tn = read_tntp_network(net_file, **(net_options or {}))
    except TypeError as exc:
        raise ScenarioError(f"{scenario_path}: [network] {exc}") from None
    n = table.get("num_agents")
    return tntp_demand(
        tn,
        read_tntp_trips(trips_path),
        num_agents=None if n is None else int(n),
        departure_window=int(table.get("departure_window", 360)),
        seed=int(table.get("seed", 0)),
    )
