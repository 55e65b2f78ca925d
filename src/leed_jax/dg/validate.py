"""Strict validation and repair of instruction texts, for both env families.

Every problem is reported with its reply line (``leed_jax.dg.report.Issue``) and counted per
agent in the :class:`~leed_jax.dg.report.DGReport`:

* an unknown command, agent or target, a target of the wrong kind, or an agent that was not
  part of the request → the instruction is dropped;
* traffic: a waypoint that cannot be reached from the previous one, from which the destination
  cannot be reached, or that comes after the destination → dropped;
  consecutive waypoints that are not adjacent → joined with the free-flow shortest path
  (a *gap fill*); a plan that stops short of the destination → completed with the shortest
  path (a *completion*);
* an agent the model left out, or whose every instruction was dropped, or whose repaired route
  is absurdly long (more than ``2 V`` nodes) → the planner's plan (a *fallback*).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from leed_jax.envs.network import RoadNetwork
from leed_jax.dg.instructions import ParsedReply
from leed_jax.dg.report import FALLBACK, FROM_MODEL, PLANNER, REPAIRED, DGReport, Issue


@dataclasses.dataclass(frozen=True)
class Request:
    """A reply to validate, with the agents its prompt asked about."""

    index: int
    agents: Sequence[int]
    reply: ParsedReply


@dataclasses.dataclass(frozen=True)
class Step:
    target: int
    line: int
    request: int


def collect_targets(
    requests: Sequence[Request],
    *,
    target_kind: str,
    num_agents: int,
    num_targets: int,
    report: DGReport,
) -> list[list[Step]]:
    """Checks that do not depend on the env's dynamics; returns each agent's targets in order."""
    per_agent: list[list[Step]] = [[] for _ in range(num_agents)]
    target_word = "node" if target_kind == "Intersection" else "landmark"
    for req in requests:
        allowed = {int(a) for a in req.agents}
        for p in req.reply.issues:
            report.add(Issue(_parse_kind(p.reason), str(p), line=p.line, request=req.index))
        for ins in req.reply.instructions:
            where = {"line": ins.line, "request": req.index}
            text = ins.text()
            agent_ok = ins.agent_kind == "Agent" and 0 <= ins.agent < num_agents
            if ins.command != "MoveTo":
                report.add(Issue("unknown command", f"unknown command {ins.command!r} in {text}",
                                 agent=ins.agent if agent_ok else -1, **where))
            elif not agent_ok:
                report.add(Issue("unknown agent", f"unknown agent {ins.agent_kind}_{ins.agent} "
                                 f"in {text} (agents are Agent_0..Agent_{num_agents - 1})",
                                 **where))
                continue
            elif ins.agent not in allowed:
                # Not held against that agent: its own request decides its plan.
                report.add(Issue("agent not requested", f"Agent_{ins.agent} was not part of "
                                 f"this request: {text}", agent=ins.agent, **where))
                continue
            elif ins.target_kind != target_kind:
                report.add(Issue(f"unknown {target_word}", f"expected a {target_kind}, got "
                                 f"{ins.target_kind!r} in {text}", agent=ins.agent, **where))
            elif not 0 <= ins.target < num_targets:
                report.add(Issue(f"unknown {target_word}", f"unknown {target_word} "
                                 f"{target_kind}_{ins.target} in {text} "
                                 f"({target_kind}_0..{target_kind}_{num_targets - 1} exist)",
                                 agent=ins.agent, **where))
            else:
                per_agent[ins.agent].append(Step(ins.target, ins.line, req.index))
                continue
            if agent_ok:
                report.dropped[ins.agent] += 1
    return per_agent


def _parse_kind(reason: str) -> str:
    if reason.startswith("reply of"):
        return "oversized reply"
    if reason.startswith("reply cut off"):
        return "truncated reply"
    return {"no instruction found": "no instruction"}.get(reason, reason)


def _no_plan(report: DGReport, agent: int, requested: np.ndarray | None) -> str:
    """Record why an agent has no usable instruction; returns the fallback reason."""
    if report.dropped[agent]:
        report.add(Issue("unusable plan", f"Agent_{agent}: every instruction was dropped",
                         agent=agent))
        return "unusable"
    if requested is None or requested[agent]:
        report.add(Issue("missing agent", f"no instruction for Agent_{agent}", agent=agent))
    return "missing"


def _settle(report: DGReport, agent: int, source: str, used_model: bool, reason: str = ""):
    if source == "planner":
        report.plan_origin[agent] = PLANNER
    elif not used_model:
        report.plan_origin[agent] = FALLBACK
        report.fallback_reason[agent] = reason
    elif report.dropped[agent] or report.gap_fills[agent] or report.completions[agent]:
        report.plan_origin[agent] = REPAIRED
    else:
        report.plan_origin[agent] = FROM_MODEL


def traffic_paths(
    graph: RoadNetwork,
    origin: np.ndarray,
    destination: np.ndarray,
    targets: list[list[Step]],
    fallback: Sequence[Sequence[int]],
    report: DGReport,
    *,
    source: str,
    requested: np.ndarray | None = None,
) -> list[list[int]]:
    """Turn each agent's waypoints into a full node path ``origin .. destination`` in which
    consecutive nodes are adjacent. ``fallback[i]`` is the planner's path for agent ``i``;
    ``requested [N] bool`` marks agents whose plan was asked for (others keep the fallback
    silently, e.g. agents of a request that failed)."""
    n = len(targets)
    max_nodes = 2 * graph.num_nodes
    paths: list[list[int]] = []
    for i in range(n):
        o, d = int(origin[i]), int(destination[i])
        steps = targets[i]
        if not steps:
            _settle(report, i, source, False, _no_plan(report, i, requested))
            paths.append(list(fallback[i]))
            continue
        path = [o]
        for s in steps:
            cur = path[-1]
            where = {"line": s.line, "request": s.request, "agent": i}
            w = s.target
            if cur == d:
                report.add(Issue("after destination", f"Agent_{i}: Intersection_{w} comes after "
                                 f"its destination Intersection_{d}", **where))
                report.dropped[i] += 1
                continue
            if w == cur:
                continue  # restating where the vehicle is: harmless
            if not graph.reachable(cur, w):
                report.add(Issue("unreachable", f"Agent_{i}: Intersection_{w} cannot be reached "
                                 f"from Intersection_{cur}", **where))
                report.dropped[i] += 1
                continue
            if not graph.reachable(w, d):
                report.add(Issue("unreachable", f"Agent_{i}: destination Intersection_{d} cannot "
                                 f"be reached from Intersection_{w}", **where))
                report.dropped[i] += 1
                continue
            if graph.link_index(cur, w) < 0:
                report.gap_fills[i] += 1
                hop = graph.shortest_path(cur, w)[1:]
            else:
                hop = [w]
            if d in hop:  # the filled gap passes the destination: the trip ends there
                hop = hop[: hop.index(d) + 1]
            path.extend(hop)
        if len(path) == 1 and o != d:
            _settle(report, i, source, False, "unusable")
            report.add(Issue("unusable plan", f"Agent_{i}: every instruction was dropped",
                             agent=i))
            paths.append(list(fallback[i]))
            continue
        if path[-1] != d:
            report.completions[i] += 1
            path.extend(graph.shortest_path(path[-1], d)[1:])
        if len(path) > max_nodes:
            report.add(Issue("unusable plan", f"Agent_{i}: route of {len(path)} nodes is longer "
                             f"than {max_nodes}", agent=i))
            _settle(report, i, source, False, "unusable")
            paths.append(list(fallback[i]))
            continue
        _settle(report, i, source, True)
        paths.append(path)
    return paths


def mpe_targets(
    targets: list[list[Step]],
    fallback: Sequence[Sequence[int]],
    report: DGReport,
    *,
    source: str,
    requested: np.ndarray | None = None,
) -> list[list[int]]:
    """Each agent's landmark sequence (consecutive repeats collapsed); the planner's landmark
    for an agent without a usable instruction. Two agents sharing a final landmark is legal
    but reported (``"shared landmark"``) — it costs reward."""
    out: list[list[int]] = []
    for i, steps in enumerate(targets):
        seq: list[int] = []
        for s in steps:
            if not seq or seq[-1] != s.target:
                seq.append(s.target)
        if not seq:
            _settle(report, i, source, False, _no_plan(report, i, requested))
            out.append(list(fallback[i]))
        else:
            _settle(report, i, source, True)
            out.append(seq)
    finals: dict[int, list[int]] = {}
    for i, seq in enumerate(out):
        finals.setdefault(seq[-1], []).append(i)
    for lm, agents in sorted(finals.items()):
        if len(agents) > 1:
            names = ", ".join(f"Agent_{a}" for a in agents)
            report.add(Issue("shared landmark", f"{names} all end at Landmark_{lm}"))
    return out
