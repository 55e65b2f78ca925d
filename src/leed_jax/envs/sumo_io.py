"""Replay traffic-env episodes in SUMO: record each vehicle's realised route, write a SUMO
network and route file, run SUMO (mesoscopic) and read its trip output back.

The pieces, in the order a user needs them:

* :func:`record_episode` steps a traffic env with any policy (``policy(key, obs, state) ->
  actions [N]``: a trained actor, a planner's plan, fixed routes) and returns an
  :class:`Episode`: every vehicle's departure time, its sequence of links and its travel time
  in the env.
* :func:`write_network` writes the env's road network as a SUMO ``.net.xml``: a network read
  from SUMO is copied as it is (its edge ids are the env's ``link_ids``); a generated grid or a
  TNTP network is written as plain XML (``.nod.xml``, ``.edg.xml``) with the env's lanes,
  speeds, lengths and link ids, and turned into a ``.net.xml`` by ``netconvert``.
* :func:`write_routes` writes a ``.rou.xml``: one vehicle per departed env vehicle, its
  departure time and its route as SUMO edge ids.
* :func:`export_episode` does both into one directory (with a ``.sumocfg``), which is what
  ``python -m leed_jax.run --export-sumo DIR`` calls.
* :func:`run_sumo` runs ``sumo`` on them and :func:`read_tripinfo` parses its ``tripinfo``
  output, which ``benchmarks/validate_traffic.py`` compares with the env.

SUMO comes from the optional extra ``leed_jax[sumo]`` (the ``eclipse-sumo`` wheel carries the
``sumo`` and ``netconvert`` binaries). File formats follow SUMO's documentation: plain XML
networks (``nodes``/``edges``), route files (``vType``/``vehicle``/``route``) and
``tripinfo`` output.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from leed_jax.envs.base import ScenarioError
from leed_jax.envs.network import RoadNetwork

# policy(key, obs [N, D], state) -> actions [N] int
Policy = Callable[[Any, Any, Any], Any]

VTYPE_ID = "leed"


class SumoError(RuntimeError):
    """SUMO is missing, or one of its tools failed (the message names the tool and its output)."""


@dataclasses.dataclass(frozen=True)
class Episode:
    """One realised episode of a traffic env.

    Attributes (``N`` vehicles):
        origin, destination [N] int: this episode's nodes (an env that draws its demand per
        episode has them in its state);
        depart_s [N] float: scheduled departure time, seconds from the episode start;
        routes list[list[int]]: each vehicle's links in the order driven (empty: never moved);
        travel_time [N] float: the env's travel time, seconds (time en route up to the horizon
        when unfinished);
        arrived [N] bool: reached its destination within the horizon;
        dt: the env's step, seconds; horizon_s: the episode length, seconds;
        filled_links: links that no observation showed and were filled in along the free-flow
        shortest path between two observed positions (0 when the env reports its choices).
    """

    origin: np.ndarray
    destination: np.ndarray
    depart_s: np.ndarray
    routes: list[list[int]]
    travel_time: np.ndarray
    arrived: np.ndarray
    dt: float
    horizon_s: float
    filled_links: int = 0

    @property
    def num_vehicles(self) -> int:
        return len(self.depart_s)


def episode_demand(env, state) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(origin, destination, departure step) ``[N]`` of the episode that ``state`` belongs to:
    the state's own demand where the env keeps one per episode, else the scenario's."""
    if hasattr(state, "dest") and hasattr(state, "origin") and hasattr(state, "depart"):
        return np.asarray(state.origin), np.asarray(state.dest), np.asarray(state.depart)
    d = env.demand
    return np.asarray(d.origin), np.asarray(d.destination), np.asarray(d.departure)


# ---------------------------------------------------------------------------- recording
def record_episode(env, policy: Policy, key=None, state=None) -> Episode:
    """Step ``env`` (a traffic env) for one episode with ``policy`` and record every vehicle's
    links. ``policy(key, obs, state) -> actions [N]``, or a stateful policy with
    ``init(state) -> carry`` and ``policy(key, obs, state, carry) -> (actions, carry)`` such as
    :class:`RoutePolicy`. ``state`` defaults to ``env.reset(key)``. The whole episode runs as one
    ``jax.lax.scan`` under ``jit``; the routes are assembled on the host afterwards.

    Per step the recorder keeps the link each vehicle's action chose at its decision node (as
    the env resolves it: an unavailable slot falls back to the first available one), whether
    the env used it (``info["decision"]``) and the link the vehicle is on at the end of the
    step. A vehicle that crosses several nodes within one step takes its chosen link first and
    then, as the env moves it, the network's fastest links towards its destination
    (``net.link_next``); what is still unexplained is filled in along free-flow shortest paths
    and counted in ``Episode.filled_links``.
    """
    import jax
    import jax.numpy as jnp

    if getattr(env, "family", None) != "traffic":
        raise ScenarioError(f"routes can only be recorded from a traffic env, not {getattr(env, 'family', env)!r}")
    key = jax.random.PRNGKey(0) if key is None else key
    k_reset, k_run = jax.random.split(key)
    if state is None:
        obs, state = env.reset(k_reset)
    else:
        obs = env._obs(state)
    horizon = env.spec.horizon
    out_links = jnp.asarray(env.network.out_links)
    stateful = hasattr(policy, "init")

    def run(obs, state, key):
        def body(carry, k):
            obs, state, pc = carry
            k_act, k_step = jax.random.split(k)
            if stateful:
                actions, pc = policy(k_act, obs, state, pc)
            else:
                actions = policy(k_act, obs, state)
            a = jnp.clip(jnp.asarray(actions, jnp.int32), 0, env.spec.num_actions - 1)
            avail = env.avail_actions(state)
            ok = jnp.take_along_axis(avail, a[:, None], 1)[:, 0]
            a = jnp.where(ok, a, jnp.argmax(avail, axis=1))  # the env's own fallback
            chosen = out_links[state.node, a]
            obs, state, _, _, info = env.step(k_step, state, a)
            return (obs, state, pc), (chosen, info["decision"], state.link, state.node)

        pc0 = policy.init(state) if stateful else jnp.zeros(())
        (_, final, _), trace = jax.lax.scan(body, (obs, state, pc0), jax.random.split(key, horizon))
        return final, trace

    final, trace = jax.jit(run)(obs, state, k_run)
    chosen, decision, links, nodes = (np.asarray(x) for x in trace)  # each [T, N]
    net = env.network
    origin, dest, depart = episode_demand(env, state)
    arrived = np.asarray(final.status) == _arrived_code()
    routes, filled = [], 0
    for i in range(chosen.shape[1]):
        r, f = _assemble_route(net, int(origin[i]), int(dest[i]), chosen[:, i], decision[:, i], links[:, i], nodes[:, i])
        routes.append(r)
        filled += f
    return Episode(
        origin=origin.astype(np.int64),
        destination=dest.astype(np.int64),
        depart_s=depart.astype(np.float64) * float(env.params.dt),
        routes=routes,
        travel_time=np.asarray(final.travel_time, np.float64),
        arrived=arrived,
        dt=float(env.params.dt),
        horizon_s=float(env.params.dt) * horizon,
        filled_links=filled,
    )


def _arrived_code() -> int:
    from leed_jax.envs import traffic

    return int(traffic.ARRIVED)


def _assemble_route(net: RoadNetwork, origin: int, dest: int, chosen, decision, links, nodes) -> tuple[list[int], int]:
    """One vehicle's link sequence from its per-step chosen link, decision flag, end-of-step
    link (−1 off a link) and end-of-step node ``[T]`` each; returns it and the number of links
    filled in by shortest paths."""
    link_next = getattr(net, "link_next", None)
    route: list[int] = []
    filled = 0
    for c, d, b, node in zip(chosen.tolist(), decision.tolist(), links.tolist(), nodes.tolist()):
        at = int(net.link_dst[route[-1]]) if route else origin
        if d and c >= 0 and int(net.link_src[c]) == at:
            route.append(int(c))  # the action's link at the node it crossed
            at = int(net.link_dst[c])
        if b >= 0:
            if route and route[-1] == b:
                continue
            stop = lambda link, b=b: link == b  # noqa: E731
        else:
            if not route or at == node:
                continue
            stop = lambda link, node=node: int(net.link_dst[link]) == node  # noqa: E731
        # Crossed further nodes within the step: the env took its fastest links onwards.
        path = _follow(link_next, route[-1], dest, stop) if (link_next is not None and route) else None
        if path is not None:
            route.extend(path)
            continue
        target = int(net.link_src[b]) if b >= 0 else node
        filled += _close_gap(net, route, at, target)
        if b >= 0:
            route.append(int(b))
    return route, filled


def _follow(link_next: np.ndarray, link: int, dest: int, stop) -> list[int] | None:
    """The links after ``link`` along ``link_next`` towards ``dest`` up to the first one that
    ``stop`` accepts, or None if the path ends before."""
    path: list[int] = []
    for _ in range(link_next.shape[0]):
        link = int(link_next[link, dest])
        if link < 0:
            return None
        path.append(link)
        if stop(link):
            return path
    return None


def _close_gap(net: RoadNetwork, route: list[int], frm: int, to: int) -> int:
    """Append to ``route`` the free-flow shortest path of links from node ``frm`` to ``to``;
    returns how many links it appended."""
    nodes = net.shortest_path(frm, to)
    if not nodes:
        raise ScenarioError(f"recorded route jumps from node {frm} to {to}, which is unreachable")
    for u, nxt in zip(nodes[:-1], nodes[1:]):
        cands = [l for l in net.out_links[u] if l >= 0 and net.link_dst[l] == nxt]
        route.append(int(min(cands, key=lambda l: net.link_tfree[l])))
    return len(nodes) - 1


# ---------------------------------------------------------------------------- policies
class RoutePolicy:
    """Drives each vehicle along its own fixed link sequence (a stateful policy: its carry is
    a pointer ``[N]`` into each route, which :func:`record_episode` threads through the scan).

    The action is always ``route[ptr]``'s slot at the vehicle's decision node. A vehicle seen on
    link ``route[k]`` (``k ≥ ptr``) moves the pointer to ``k + 1``; one standing at a node that
    ``route[ptr]`` does not leave has finished it. This follows routes that pass a node twice
    (turn restrictions can make them the fastest) and links crossed unseen within one step. ``routes[i]`` must start at vehicle i's origin and end at its
    destination (:func:`check_routes`)."""

    def __init__(self, env, routes: list[list[int]], origin=None, destination=None):
        import jax.numpy as jnp

        net = env.network
        n = env.spec.num_agents
        if len(routes) != n:
            raise ScenarioError(f"{len(routes)} routes for {n} vehicles")
        origin = env.demand.origin if origin is None else origin
        destination = env.demand.destination if destination is None else destination
        problems = check_routes(net, routes, origin, destination)
        if problems:
            raise ScenarioError(f"fixed routes: {problems[0]} ({len(problems)} problems)")
        if any(not r for r in routes):
            raise ScenarioError("fixed routes: every vehicle needs at least one link")
        slot_of = np.zeros(net.num_links, np.int32)  # slot of each link in its tail node's out-list
        for u in range(net.num_nodes):
            for j, link in enumerate(net.out_links[u]):
                if link >= 0:
                    slot_of[link] = j
        width = max(len(r) for r in routes)
        table = np.empty((n, width), np.int32)  # [N, L] links, padded with the last
        for i, r in enumerate(routes):
            table[i, : len(r)] = r
            table[i, len(r):] = r[-1]
        self._routes = jnp.asarray(table)
        self._src = jnp.asarray(net.link_src)
        self._slot = jnp.asarray(slot_of)
        self._width = width

    def init(self, state):
        import jax.numpy as jnp

        return jnp.zeros(state.node.shape, jnp.int32)

    def __call__(self, key, obs, state, ptr):
        import jax.numpy as jnp

        del key, obs
        rows = jnp.arange(ptr.shape[0])
        # On a link: the pointer moves past that link (searching forward from the pointer, so a
        # route may pass a node twice, and links crossed within one step are skipped).
        cols = jnp.arange(self._width)[None, :]
        seen = (self._routes == state.link[:, None]) & (cols >= ptr[:, None]) & (state.link[:, None] >= 0)
        ptr = jnp.where(seen.any(axis=1), jnp.argmax(seen, axis=1) + 1, ptr)
        # At a node, not on the link the pointer names: that link is done (an env that lets a
        # vehicle finish a link within the step it entered never shows it on the link).
        at_node = state.link < 0
        done_link = at_node & (self._src[self._routes[rows, jnp.minimum(ptr, self._width - 1)]] != state.node)
        ptr = jnp.minimum(ptr + done_link.astype(jnp.int32), self._width - 1)
        return self._slot[self._routes[rows, ptr]], ptr


def route_policy(env, routes: list[list[int]], origin=None, destination=None) -> RoutePolicy:
    """The fixed-route policy of ``routes`` (see :class:`RoutePolicy`)."""
    return RoutePolicy(env, routes, origin, destination)


def shortest_routes(net: RoadNetwork, origin, destination) -> list[list[int]]:
    """Free-flow fastest link sequences for each origin–destination pair that use only the
    turns the network allows. Where the network carries the env's own turn-aware tables
    (``link_tt``, ``link_next``), the route after the first link is the env's fastest path
    (same ties as the env); otherwise Dijkstra on the link graph (one node per link, one arc
    per allowed turn, weighted by the next link's free-flow time; a virtual node per origin
    leads into its out-links)."""
    link_next, link_tt = getattr(net, "link_next", None), getattr(net, "link_tt", None)
    if link_next is not None and link_tt is not None:
        routes = []
        for o, d in zip(np.asarray(origin).tolist(), np.asarray(destination).tolist()):
            outs = [int(l) for l in net.out_links[o] if l >= 0]
            cost = [net.link_tfree[l] + link_tt[l, d] for l in outs]
            if o == d or not outs or not np.isfinite(min(cost)):
                raise ScenarioError(f"no route from {net.node_names[o]} to {net.node_names[d]} that respects the turns")
            r = [outs[int(np.argmin(cost))]]
            while int(net.link_dst[r[-1]]) != d and len(r) <= net.num_links:
                r.append(int(link_next[r[-1], d]))
                if r[-1] < 0:
                    raise ScenarioError(f"link_next has no way on towards {net.node_names[d]}")
            routes.append(r)
        return routes
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import dijkstra

    e, v = net.num_links, net.num_nodes
    conn = np.asarray(net.connections).reshape(-1, 2)
    src = np.concatenate([conn[:, 0], e + net.link_src])  # origin node u -> its out-links
    dst = np.concatenate([conn[:, 1], np.arange(e)])
    # tiny positive floor: csr drops explicit zeros, which would read as "no arc"
    w = np.maximum(net.link_tfree[dst], 1e-6)
    graph = csr_matrix((w, (src, dst)), shape=(e + v, e + v))
    origin, destination = np.asarray(origin).tolist(), np.asarray(destination).tolist()
    sources = sorted(set(origin))
    dist, pred = dijkstra(graph, directed=True, indices=[e + o for o in sources], return_predecessors=True)
    row_of = {o: k for k, o in enumerate(sources)}
    into = [np.flatnonzero(net.link_dst == d) for d in range(v)]
    routes = []
    for o, d in zip(origin, destination):
        row = row_of[o]
        cands = into[d]
        if o == d or not len(cands) or not np.isfinite(dist[row, cands]).any():
            raise ScenarioError(f"no route from {net.node_names[o]} to {net.node_names[d]} that respects the turns")
        link = int(cands[np.argmin(dist[row, cands])])
        r = [link]
        while pred[row, link] >= 0 and pred[row, link] < e:
            link = int(pred[row, link])
            r.append(link)
        routes.append(r[::-1])
    return routes


def greedy_policy(actor: Callable[[Any, Any, Any], Any], env) -> Policy:
    """A policy from ``actor(obs [N, D], avail [N, A]) -> logits [N, A]``: the argmax of the
    masked logits (what the trainer's greedy evaluation does)."""
    import jax.numpy as jnp

    def policy(key, obs, state):
        del key
        avail = env.avail_actions(state)
        logits = actor(obs, avail)
        return jnp.argmax(jnp.where(avail, logits, -jnp.inf), axis=-1)

    return policy


# ---------------------------------------------------------------------------- checks
def check_routes(net: RoadNetwork, routes: list[list[int]], origin=None, destination=None) -> list[str]:
    """Problems with ``routes`` (an empty list when every route is a connected link sequence
    from its origin to its destination, and uses only turns the network allows)."""
    problems = []
    allowed = {(int(a), int(b)) for a, b in np.asarray(net.connections).reshape(-1, 2)}
    for i, r in enumerate(routes):
        if not r:
            continue
        if origin is not None and int(net.link_src[r[0]]) != int(np.asarray(origin)[i]):
            problems.append(f"vehicle {i}: route starts at {net.node_names[net.link_src[r[0]]]}, not at its origin")
        if destination is not None and int(net.link_dst[r[-1]]) != int(np.asarray(destination)[i]):
            problems.append(f"vehicle {i}: route ends at {net.node_names[net.link_dst[r[-1]]]}, not at its destination")
        for a, b in zip(r, r[1:]):
            if net.link_dst[a] != net.link_src[b]:
                problems.append(f"vehicle {i}: links {net.link_ids[a]} and {net.link_ids[b]} do not meet")
            elif (a, b) not in allowed:
                problems.append(f"vehicle {i}: no turn from {net.link_ids[a]} to {net.link_ids[b]}")
    return problems


# ---------------------------------------------------------------------------- SUMO files
def sumo_binary(name: str = "sumo") -> str:
    """Path of a SUMO tool (``sumo``, ``netconvert``): the eclipse-sumo wheel's, else ``PATH``'s."""
    try:
        import sumo as sumo_pkg

        cand = Path(sumo_pkg.SUMO_HOME) / "bin" / name
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    except ImportError:
        pass
    found = shutil.which(name)
    if found:
        return found
    raise SumoError(f"{name!r} not found: install the 'sumo' extra (pip install 'leed_jax[sumo]')")


def has_sumo() -> bool:
    """Whether ``sumo`` and ``netconvert`` can be run."""
    try:
        sumo_binary("sumo")
        sumo_binary("netconvert")
    except SumoError:
        return False
    return True


def network_source(env) -> Path | None:
    """The ``.net.xml`` a SUMO-read scenario was built from (None for grids and TNTP)."""
    sc = getattr(env, "scenario", None)
    if sc is None or sc.tables.get("network", {}).get("kind") != "sumo":
        return None
    from leed_jax.envs.registry import _data_path

    return _data_path(sc.tables["network"].get("file"), sc.path)


def write_network(net: RoadNetwork, out_dir: str | Path, source: str | Path | None = None, name: str = "network") -> Path:
    """Write ``net`` as ``out_dir/name.net.xml`` and return its path.

    With ``source`` (the SUMO network ``net`` was read from) the file is copied (unzipped if
    ``.gz``): its edge ids are ``net.link_ids``. Otherwise ``name.nod.xml`` and ``name.edg.xml``
    carry the env's nodes and links (edge id = link id, lanes, speed, length), ``name.con.xml``
    every turn the env allows (``net.connections``, U-turns included), and ``netconvert``
    builds the network: no internal junction lanes (a link's length is its whole length),
    coordinates kept.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    net_file = out_dir / f"{name}.net.xml"
    if source is not None:
        source = Path(source)
        if source.suffix == ".gz":
            with gzip.open(source, "rb") as src, net_file.open("wb") as dst:
                shutil.copyfileobj(src, dst)
        else:
            shutil.copyfile(source, net_file)
        return net_file
    nod, edg = out_dir / f"{name}.nod.xml", out_dir / f"{name}.edg.xml"
    nodes = ET.Element("nodes")
    for i, (x, y) in enumerate(net.node_xy.tolist()):
        ET.SubElement(nodes, "node", id=_node_id(net, i), x=f"{x:.3f}", y=f"{y:.3f}", type="priority")
    _write_xml(nodes, nod)
    edges = ET.Element("edges")
    for e in range(net.num_links):
        ET.SubElement(
            edges,
            "edge",
            id=net.link_ids[e],
            attrib={"from": _node_id(net, int(net.link_src[e])), "to": _node_id(net, int(net.link_dst[e]))},
            numLanes=str(max(1, int(round(float(net.link_lanes[e]))))),
            speed=f"{float(net.link_speed[e]):.4f}",
            length=f"{float(net.link_length[e]):.3f}",
        )
    _write_xml(edges, edg)
    # Every turn the env allows (U-turns included) becomes a SUMO connection.
    con = out_dir / f"{name}.con.xml"
    cons = ET.Element("connections")
    for a, b in np.asarray(net.connections).reshape(-1, 2).tolist():
        ET.SubElement(cons, "connection", attrib={"from": net.link_ids[a], "to": net.link_ids[b]})
    _write_xml(cons, con)
    cmd = [
        sumo_binary("netconvert"),
        "--node-files", str(nod), "--edge-files", str(edg), "--connection-files", str(con),
        "--output-file", str(net_file),
        "--no-internal-links", "true",  # no junction lanes: travel time = the links' own
        "--offset.disable-normalization", "true",
        "--geometry.remove", "false",
        "--junctions.join", "false",
        "--no-warnings", "true",
    ]
    _run(cmd, "netconvert")
    return net_file


def _node_id(net: RoadNetwork, i: int) -> str:
    name = str(net.node_names[i])
    return name if name and not any(c.isspace() for c in name) else f"n{i}"


def write_routes(
    net: RoadNetwork,
    episode: Episode,
    path: str | Path,
    vehicle_length: float = 5.0,
    min_gap: float = 2.5,
) -> Path:
    """Write ``episode``'s routes as a SUMO route file: one ``vType`` (length + minGap = the jam
    spacing; speed factor 1 without deviation, so vehicles drive at the edges' speeds as in the
    env) and one vehicle per routed env vehicle, ``id = "veh<i>"`` (i = env agent index),
    sorted by departure as SUMO requires. Vehicles that never entered a link are left out."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    root = ET.Element("routes")
    ET.SubElement(
        root, "vType", id=VTYPE_ID, length=f"{vehicle_length:g}", minGap=f"{min_gap:g}",
        speedFactor="1", speedDev="0", maxSpeed="70", sigma="0",
    )
    order = np.argsort(episode.depart_s, kind="stable")
    for i in order.tolist():
        r = episode.routes[i]
        if not r:
            continue
        veh = ET.SubElement(
            root, "vehicle", id=f"veh{i}", type=VTYPE_ID, depart=f"{float(episode.depart_s[i]):.2f}",
            departLane="best", departPos="base", departSpeed="max", arrivalPos="max",
        )
        ET.SubElement(veh, "route", edges=" ".join(net.link_ids[l] for l in r))
    _write_xml(root, path)
    return path


def export_episode(env, episode: Episode, out_dir: str | Path, name: str | None = None) -> dict[str, Path]:
    """Write ``env``'s network and ``episode``'s routes into ``out_dir`` (``<name>.net.xml``,
    ``<name>.rou.xml``, ``<name>.sumocfg`` for ``sumo -c``) and return the paths."""
    net = env.network
    problems = check_routes(net, episode.routes, episode.origin, None)
    if problems:
        raise ScenarioError(f"episode routes are not valid SUMO routes: {problems[0]} ({len(problems)} problems)")
    name = name or str(getattr(env, "name", "episode"))
    out_dir = Path(out_dir)
    net_file = write_network(net, out_dir, network_source(env), name=name)
    rou_file = write_routes(net, episode, out_dir / f"{name}.rou.xml", **_vtype_spacing(net))
    cfg = ET.Element("configuration")
    inp = ET.SubElement(cfg, "input")
    ET.SubElement(inp, "net-file", value=net_file.name)
    ET.SubElement(inp, "route-files", value=rou_file.name)
    out = ET.SubElement(cfg, "output")
    ET.SubElement(out, "tripinfo-output", value=f"{name}.tripinfo.xml")
    cfg_file = out_dir / f"{name}.sumocfg"
    _write_xml(cfg, cfg_file)
    return {"net": net_file, "routes": rou_file, "config": cfg_file}


def export_trained_policy(env, result, out_dir: str | Path) -> tuple[dict[str, Path], Episode]:
    """Record one greedy episode of a trained policy (``leed_jax.train``'s result, seed 0) and
    export it with :func:`export_episode` (``python -m leed_jax.run --export-sumo DIR``)."""
    import jax

    params = jax.tree_util.tree_map(lambda x: x[0], result.params)  # seed 0 of [K, ...]

    def actor(obs, avail):
        return result.trainer.policy.logits(params, obs, avail)

    episode = record_episode(env, greedy_policy(actor, env), jax.random.PRNGKey(result.config.seed))
    return export_episode(env, episode, out_dir), episode


def jam_spacing(net: RoadNetwork) -> float:
    """The network's jam spacing, metres per vehicle per lane (median of length·lanes/storage
    over links long enough not to be floored at one vehicle)."""
    per = (net.link_length - net.link_junction) * net.link_lanes / net.link_storage
    long_enough = net.link_storage > 1.5
    return float(np.median(per[long_enough] if long_enough.any() else per))


def _vtype_spacing(net: RoadNetwork) -> dict:
    spacing = jam_spacing(net)
    # SUMO's default car: 5 m long, 2.5 m min gap (7.5 m). Keep the 2:1 split at other spacings.
    return {"vehicle_length": spacing * 2 / 3, "min_gap": spacing / 3}


def _write_xml(root: ET.Element, path: Path) -> None:
    ET.indent(root)
    ET.ElementTree(root).write(path, encoding="UTF-8", xml_declaration=True)


def _run(cmd: list[str], tool: str, timeout: float | None = None) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SumoError(f"{tool} did not finish within {timeout} s") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise SumoError(f"{tool} failed (exit {proc.returncode}): " + " | ".join(tail))
    return proc


# ---------------------------------------------------------------------------- running SUMO
@dataclasses.dataclass(frozen=True)
class SumoResult:
    """What one SUMO run gave: per vehicle (env agent index) its travel time from the scheduled
    departure to arrival, or None when it did not arrive; SUMO's warnings and errors."""

    travel_time: dict[int, float]
    unfinished: list[int]
    teleports: int
    warnings: list[str]
    wall_s: float


def run_sumo(
    net_file: str | Path,
    route_file: str | Path,
    out_dir: str | Path,
    meso: bool = True,
    end_s: float | None = None,
    additional: list[str | Path] = (),
    extra_args: list[str] = (),
    timeout: float = 600.0,
) -> SumoResult:
    """Run ``sumo`` (``--mesosim`` by default) on a network and route file and read its
    tripinfo output. Teleports are off (a stuck vehicle stays stuck, as in the env); vehicles
    still on the road at ``end_s`` are reported as unfinished."""
    import time

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    trip = out_dir / "tripinfo.xml"
    cmd = [
        sumo_binary("sumo"), "-n", str(net_file), "-r", str(route_file),
        "--tripinfo-output", str(trip), "--tripinfo-output.write-unfinished", "true",
        "--no-step-log", "true", "--time-to-teleport", "-1", "--seed", "0",
        "--ignore-route-errors", "false",
    ]
    if meso:
        cmd += ["--mesosim", "true"]
    if end_s is not None:
        cmd += ["--end", f"{end_s:g}"]
    if additional:
        cmd += ["--additional-files", ",".join(str(a) for a in additional)]
    cmd += list(extra_args)
    t0 = time.perf_counter()
    proc = _run(cmd, "sumo", timeout)
    wall = time.perf_counter() - t0
    tt, unfinished = read_tripinfo(trip)
    lines = (proc.stderr or "").splitlines()
    warnings = [ln for ln in lines if ln.startswith(("Warning", "Error"))]
    teleports = sum("teleport" in ln.lower() for ln in warnings)
    return SumoResult(tt, unfinished, teleports, warnings, wall)


def read_tripinfo(path: str | Path) -> tuple[dict[int, float], list[int]]:
    """``tripinfo`` output → ({agent index: travel time s}, [unfinished agent indices]).

    Travel time counts from the scheduled departure (``depart − departDelay``), so time spent
    waiting to enter the network counts, as it does in the env. Vehicle ids must be
    ``veh<i>`` (what :func:`write_routes` writes)."""
    path = Path(path)
    if not path.is_file():
        raise SumoError(f"no tripinfo output at {path}")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise SumoError(f"{path}: unreadable tripinfo output ({exc})") from None
    tt, unfinished = {}, []
    for trip in root.iter("tripinfo"):
        vid = trip.get("id", "")
        if not vid.startswith("veh") or not vid[3:].isdigit():
            continue
        i = int(vid[3:])
        arrival = float(trip.get("arrival", "-1"))
        if arrival < 0 or trip.get("vaporized"):
            unfinished.append(i)
            continue
        depart = float(trip.get("depart")) - float(trip.get("departDelay", "0"))
        tt[i] = arrival - depart
    return tt, unfinished


def meso_types_file(
    net: RoadNetwork, net_file: str | Path, path: str | Path, spacing: float | None = None
) -> tuple[Path, dict]:
    """An additional file that gives SUMO's mesoscopic queues the env's flow capacities.

    MESO's gross time headway per lane is ``tau + spacing / v`` (Eissfeldt's model as SUMO
    implements it, ``MESegment::tauWithVehLength``, with ``tau / lanes`` per edge); for a flow
    capacity of ``q`` vehicles per hour per lane that is ``tau = 3600 / q − spacing / v``. Both
    ``q`` (``net.link_flow_capacity / lanes``) and ``v`` differ between links, so links are
    grouped by (``q``, ``v``) into meso edge types, one ``<type>`` each with the free–free,
    free–jam and jam–free headways set to ``tau`` (a queue discharges at the link's capacity
    whatever the state up- and downstream, as in the env); the jam–jam headway, which sets how
    fast space frees upstream of a jam, keeps SUMO's default. ``net_file`` is rewritten so that
    each edge names its type. Returns the file and a summary (types, tau range, clamped links:
    those whose ``q`` is above what SUMO can reach at tau = 0, i.e. ``3600 v / spacing``).
    """
    spacing = jam_spacing(net) if spacing is None else spacing
    q = np.asarray(net.link_flow_capacity, np.float64) / np.maximum(np.round(net.link_lanes), 1.0)  # veh/h/lane
    v = np.asarray(net.link_speed, np.float64)
    tau = 3600.0 / q - spacing / v
    clamped = int((tau < 0).sum())
    tau = np.maximum(tau, 0.0)
    groups: dict[float, str] = {}
    edge_type: dict[str, str] = {}
    for e in range(net.num_links):
        key = round(float(tau[e]), 3)
        edge_type[net.link_ids[e]] = groups.setdefault(key, f"leed_meso_{len(groups)}")
    root = ET.Element("additional")
    for t, tid in groups.items():
        typ = ET.SubElement(root, "type", id=tid)
        ET.SubElement(typ, "meso", tauff=f"{t:.3f}", taufj=f"{t:.3f}", taujf=f"{t:.3f}")
    path = Path(path)
    _write_xml(root, path)
    tree = ET.parse(net_file)
    for edge in tree.getroot().iter("edge"):
        tid = edge_type.get(edge.get("id", ""))
        if tid is not None:
            edge.set("type", tid)
    tree.write(net_file, encoding="UTF-8", xml_declaration=True)
    summary = {
        "meso_types": len(groups), "tau_min_s": float(tau.min()), "tau_max_s": float(tau.max()),
        "links_capacity_clamped": clamped, "spacing_m": spacing,
    }
    return path, summary
