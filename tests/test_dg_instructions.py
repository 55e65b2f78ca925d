"""The instruction reader (tolerant about form) and the validator (strict about content)."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from leed_jax.dg.instructions import format_instruction, parse_instructions
from leed_jax.dg.report import FALLBACK, FROM_MODEL, PLANNER, REPAIRED, DGReport
from leed_jax.dg.validate import Request, collect_targets, mpe_targets, traffic_paths
from leed_jax.envs.network import RoadNetwork, grid_network


def grid_graph(rows: int, cols: int, capacity: float = 10.0) -> RoadNetwork:
    """A two-way grid (200 m links at 13.9 m/s) holding ``capacity`` vehicles per link."""
    net = grid_network(rows, cols, link_length=200.0, speed=13.9)
    return dataclasses.replace(net, link_capacity=np.full(net.num_links, float(capacity)))


def test_reader_tolerates_prose_fences_spacing_case_quotes():
    text = """Sure! Here is the plan:
```text
[MoveTo, Intersection_5, Agent_3]
- [moveto ,  intersection 6 , AGENT_3]
1. ["MoveTo", "Landmark_2", "Agent_1"]  [MOVETO, Node-4, Vehicle#2]
```
I hope this helps [really]."""
    r = parse_instructions(text)
    got = [(i.command, i.target_kind, i.target, i.agent, i.line) for i in r.instructions]
    assert got == [
        ("MoveTo", "Intersection", 5, 3, 3),
        ("MoveTo", "Intersection", 6, 3, 4),
        ("MoveTo", "Landmark", 2, 1, 5),
        ("MoveTo", "Intersection", 4, 2, 5),
    ]
    assert r.issues == ()  # prose with brackets is not an attempted instruction


def test_reader_reports_bad_lines_with_their_number():
    r = parse_instructions("[MoveTo, Intersection_x, Agent_3]\nok\n[MoveTo, Inters")
    assert [(p.line, p.reason) for p in r.issues] == [
        (1, "not an instruction"), (3, "truncated instruction"), (0, "no instruction found")]
    assert parse_instructions("").issues[0].reason == "empty reply"
    assert parse_instructions(None).issues[0].reason == "empty reply"
    assert parse_instructions("I cannot help with that.").issues[0].reason == \
        "no instruction found"


def test_reader_cuts_gigantic_replies():
    line = format_instruction("Intersection", 1, 0) + "\n"
    r = parse_instructions(line * 1000, max_chars=len(line) * 10)
    assert len(r.instructions) == 10
    assert r.issues[0].reason.startswith("reply of")


def _validate(g, origin, dest, text, agents=None, source="llm"):
    n = len(origin)
    report = DGReport(n, source)
    req = Request(0, range(n) if agents is None else agents, parse_instructions(text))
    steps = collect_targets([req], target_kind="Intersection", num_agents=n,
                            num_targets=g.num_nodes, report=report)
    fallback = [g.shortest_path(int(o), int(d)) for o, d in zip(origin, dest)]
    requested = np.zeros(n, bool)
    requested[list(req.agents)] = True
    paths = traffic_paths(g, np.asarray(origin), np.asarray(dest), steps, fallback, report,
                          source=source, requested=requested)
    return paths, report


def _adjacent(g, path):
    return all(g.link_index(u, v) >= 0 for u, v in itertools.pairwise(path))


def test_validator_repairs_gaps_and_completes_plans():
    g = grid_graph(3, 3)  # nodes 0..8, row-major
    lines = [
        "[MoveTo, Intersection_1, Agent_0]",  # adjacent to origin 0
        "[MoveTo, Intersection_8, Agent_0]",  # not adjacent: gap filled
        "[MoveTo, Intersection_4, Agent_1]",  # stops short of 8: completed
    ]
    text = "\n".join(lines)
    paths, rep = _validate(g, [0, 0], [8, 8], text)
    assert paths[0][0] == 0 and paths[0][-1] == 8 and _adjacent(g, paths[0])
    assert paths[0][:2] == [0, 1]
    assert paths[1][-1] == 8 and 4 in paths[1] and _adjacent(g, paths[1])
    assert rep.gap_fills.tolist() == [1, 1]  # 0 -> 4 is not adjacent either
    assert rep.completions.tolist() == [0, 1]
    assert rep.plan_origin == [REPAIRED, REPAIRED]
    s = rep.summary()
    assert (s["covered_by_model"], s["repaired"], s["fell_back_to_planner"]) == (2, 2, 0)


def test_validator_names_every_problem_with_its_line():
    # A one-way spur: 0 -> 9 -> (nothing), so 9 is a dead end for destination 8.
    base = grid_graph(3, 3)
    g = RoadNetwork(name="spur", node_xy=np.r_[base.node_xy, [[-100.0, 0.0]]],
                    node_names=[*base.node_names, "9"], link_src=np.r_[base.link_src, 0],
                    link_dst=np.r_[base.link_dst, 9], link_length=np.r_[base.link_length, 100.0],
                    link_speed=np.r_[base.link_speed, 10.0], link_lanes=np.r_[base.link_lanes, 1.0],
                    link_capacity=np.r_[base.link_capacity, 5.0])
    lines = [
        "[Teleport, Intersection_1, Agent_0]",  # 1 unknown command
        "[MoveTo, Intersection_1, Agent_7]",  # 2 unknown agent
        "[MoveTo, Intersection_99, Agent_0]",  # 3 unknown node
        "[MoveTo, Landmark_1, Agent_0]",  # 4 wrong kind
        "[MoveTo, Intersection_9, Agent_0]",  # 5 destination unreachable from there
        "[MoveTo, Intersection_1, Agent_0]",  # 6 fine
        "[MoveTo, Intersection_2, Agent_0]",  # 7 fine
        "[MoveTo, Intersection_5, Agent_0]",  # 8 fine
        "[MoveTo, Intersection_8, Agent_0]",  # 9 fine: destination
        "[MoveTo, Intersection_7, Agent_0]",  # 10 after the destination
        "[MoveTo, Intersection_3, Agent_2]",  # 11 agent not in this request
    ]
    text = "\n".join(lines)
    paths, rep = _validate(g, [0, 0, 0], [8, 8, 8], text, agents=[0, 1])
    by_line = {i.line: i.kind for i in rep.issues if i.line}
    assert by_line == {1: "unknown command", 2: "unknown agent", 3: "unknown node",
                       4: "unknown node", 5: "unreachable", 10: "after destination",
                       11: "agent not requested"}
    assert paths[0] == [0, 1, 2, 5, 8]
    assert rep.dropped.tolist() == [5, 0, 0]
    assert rep.plan_origin[0] == REPAIRED
    # Agent 1 was asked for but got nothing: planner; agent 2 was not asked: planner, silently.
    assert rep.plan_origin[1:] == [FALLBACK, FALLBACK]
    assert rep.fallback_reason[1:] == ["missing", "missing"]
    assert [i.agent for i in rep.issues if i.kind == "missing agent"] == [1]
    unreachable = next(i for i in rep.issues if i.kind == "unreachable")
    assert "Intersection_8 cannot be reached from Intersection_9" in unreachable.message


def test_unusable_plan_falls_back_and_is_counted():
    g = grid_graph(3, 3)
    paths, rep = _validate(g, [0, 4], [8, 0], "[MoveTo, Intersection_42, Agent_0]\n"
                                               "[MoveTo, Intersection_1, Agent_1]")
    assert rep.plan_origin == [FALLBACK, REPAIRED]  # 4 -> 1 adjacent, then completed to 0
    assert rep.fallback_reason == ["unusable", ""]
    assert paths[0] == g.shortest_path(0, 8)
    assert rep.summary()["fallback_reasons"] == {"unusable": 1}


def test_planner_source_is_labelled_planner():
    g = grid_graph(2, 2)
    paths, rep = _validate(g, [0], [3], "[MoveTo, Intersection_1, Agent_0]\n"
                                        "[MoveTo, Intersection_3, Agent_0]", source="planner")
    assert paths == [[0, 1, 3]] and rep.plan_origin == [PLANNER]
    assert rep.summary()["covered_by_model"] == 0


def test_mpe_validation():
    text = ("[MoveTo, Landmark_2, Agent_0]\n[MoveTo, Landmark_2, Agent_0]\n"
            "[MoveTo, Landmark_7, Agent_1]\n[MoveTo, Intersection_1, Agent_2]\n"
            "[MoveTo, Landmark_2, Agent_2]")
    report = DGReport(3, "llm")
    steps = collect_targets([Request(0, range(3), parse_instructions(text))],
                            target_kind="Landmark", num_agents=3, num_targets=3, report=report)
    seqs = mpe_targets(steps, [[0], [1], [2]], report, source="llm")
    assert seqs == [[2], [1], [2]]
    assert report.plan_origin == [FROM_MODEL, FALLBACK, REPAIRED]
    kinds = [i.kind for i in report.issues]
    assert kinds.count("unknown landmark") == 2 and "shared landmark" in kinds


@pytest.mark.parametrize("n", [1, 7])
def test_format_roundtrip(n):
    text = "\n".join(format_instruction("Landmark", k, k + 1) for k in range(n))
    assert [(i.target, i.agent) for i in parse_instructions(text).instructions] == \
        [(k, k + 1) for k in range(n)]
