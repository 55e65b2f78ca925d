"""Next-hop granularity: routes built from multiple-choice decisions a small model can make.

Writing a whole route means naming 5–15 adjacent intersections in order, which a 135M-parameter
model does not manage (measured: 0 of 10 traffic plans usable). Here the model only ever picks
one of a few listed options: for a vehicle standing at intersection ``u`` and heading to ``d``,
the out-links of ``u`` whose head is strictly closer to ``d`` in free-flow time (so every
choice makes progress, no route can loop, and every route ends at ``d`` within ``V`` hops),
each shown with its free-flow time to the destination and the number of vehicles already
planned on it against its capacity. Options are listed in node order — not sorted by quality —
so that the choice stays the model's.

All vehicles advance together, one hop per pass; a vehicle with a single option moves without
asking (a *forced* hop). The decisions of a pass are sent in batches of ``per_request``
(``D1: A`` lines, or a JSON object ``{"D1": "A", ...}`` whose values the schema restricts to
the listed letters). Batches go one after the other and every answer updates the planned
loads before the next batch is written: later decisions see the earlier ones (coordination).

An answer that is missing or names no listed option is repaired with the option of least
free-flow time to the destination (then least load), counted per vehicle as an instruction
dropped (kind ``invalid choice`` / ``missing choice``); a batch whose request fails after its
retries sends its vehicles to the planner's route (fallback reason ``request failed``). The
finished routes are written as instruction text and pass through the same validator as every
other plan.

Cf. the per-intersection decomposition of LLM routing in LLMLight (Lai et al., 2023) and the
option-listing prompts of LLM-assisted traffic assignment; the code is this project's own.
"""

from __future__ import annotations

import dataclasses
import re
import string
from collections.abc import Callable

import numpy as np

from leed_jax.dg.instructions import parse_instructions
from leed_jax.dg.llm import Ask, LLMClient, LLMReply
from leed_jax.dg.planner import routes_to_text
from leed_jax.dg.report import DGReport, Issue
from leed_jax.dg.validate import Request

LETTERS = string.ascii_uppercase
TOKENS_PER_ANSWER = 7  # 'D12: B\n' in text; '"B", ' (~3) in the structured answer list
_ANSWER = re.compile(r"""D\s*(\d+)["']?\s*[:=.)\-]\s*["'(]?\s*([A-Za-z])(?![A-Za-z])""")
_ANSWER_LIST = re.compile(r'"answers"\s*:\s*\[([^\]]*)\]?')


@dataclasses.dataclass
class NextHopStats:
    requests: int = 0  # batches sent (or answered from the cache)
    failed_requests: int = 0
    decisions: int = 0  # choices asked of the model
    forced: int = 0  # hops with a single option (not asked)
    repaired: int = 0  # answers missing or not among the options
    vehicles_without_choice: int = 0  # routes made only of forced hops
    # Is the model choosing or guessing? Answers that picked an option of least free-flow time
    # to the destination, against the number a uniform guess would pick on average.
    picked_fastest: int = 0
    chance_fastest: float = 0.0
    # The same for the option with the fewest vehicles planned on it (relative to capacity).
    picked_least_loaded: int = 0
    chance_least_loaded: float = 0.0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def parse_answers(text: str, num: int) -> dict[int, str]:
    """``{decision number (1-based): letter}`` from ``D1: A`` lines, ``{"D1": "A"}``, or the
    structured form ``{"answers": ["A", "C", ...]}`` (in decision order; a list cut off by
    the token limit keeps its complete entries); the first answer to a decision counts."""
    out: dict[int, str] = {}
    m = _ANSWER_LIST.search(text or "")
    if m:
        items = [t.strip() for t in m.group(1).split(",")]
        for k, item in enumerate(items[:num], start=1):
            letter = item.strip('"\' ')
            if len(letter) == 1 and letter.isalpha() and item.endswith('"'):
                out[k] = letter.upper()
        return out
    for m in _ANSWER.finditer(text or ""):
        k = int(m.group(1))
        if 1 <= k <= num and k not in out:
            out[k] = m.group(2).upper()
    return out


def options(graph, u: int, d: int) -> list[tuple[int, int]]:
    """``[(next node, link)]`` out of ``u`` that get strictly closer to ``d`` (free flow)."""
    tt = graph.node_tt
    here = tt[u, d]
    out = []
    for v in graph.successors[u]:
        if tt[v, d] < here - 1e-9:
            out.append((int(v), graph.link_index(u, v)))
    return out


def plan_round(
    fam,
    client: LLMClient,
    report: DGReport,
    *,
    round_: int,
    per_request: int,
    last_peak: np.ndarray | None = None,
    on_request: Callable[[LLMReply], None] | None = None,
) -> tuple[list[list[int]], NextHopStats]:
    """Every vehicle's route for one round (see the module docstring); fills ``report``."""
    g = fam.graph
    n, origin, dest = fam.num_agents, fam.origin, fam.destination
    tt = g.node_tt
    stats = NextHopStats()
    paths = [[int(origin[i])] for i in range(n)]
    repairs = np.zeros(n, np.int64)
    asked = np.zeros(n, np.int64)
    loads = np.zeros(g.num_links)
    ok = np.array([origin[i] != dest[i] and np.isfinite(tt[origin[i], dest[i]])
                   for i in range(n)])
    failed = np.zeros(n, bool)
    active = ok.copy()
    for _ in range(g.num_nodes + 1):  # every hop gets strictly closer: at most V passes
        pending = []
        for i in np.flatnonzero(active):
            u, d = paths[i][-1], int(dest[i])
            opts = options(g, u, d)
            if len(opts) == 1:
                stats.forced += 1
                _advance(paths, loads, i, opts[0])
            elif not opts:  # cannot happen with positive link times; keep the run alive
                paths[i].extend(g.shortest_path(u, d)[1:])
            else:
                pending.append((int(i), opts))
        for i in np.flatnonzero(active):
            if paths[i][-1] == dest[i]:
                active[i] = False
        pending = [(i, o) for i, o in pending if active[i]]
        if not pending:
            if not active.any():
                break
            continue
        for start in range(0, len(pending), per_request):
            batch = pending[start:start + per_request]
            msgs, ask = _request(fam, batch, loads, last_peak, round_)
            (reply,) = client.complete([msgs], asks=[ask], tolerate=True)
            stats.requests += 1
            if on_request:
                on_request(reply)
            if reply.error:
                stats.failed_requests += 1
                for i, _ in batch:
                    failed[i], active[i] = True, False
                report.add(Issue("request failed", reply.error, agent=batch[0][0]))
                continue
            answers = parse_answers(reply.text, len(batch))
            for k, (i, opts) in enumerate(batch, start=1):
                stats.decisions += 1
                asked[i] += 1
                letter = answers.get(k)
                pick = LETTERS.index(letter) if letter and letter in LETTERS else -1
                rest = [g.link_tfree[e] + tt[v, dest[i]] for v, e in opts]
                fastest = {j for j, t in enumerate(rest) if t <= min(rest) + 1e-6}
                stats.chance_fastest += len(fastest) / len(opts)
                stats.picked_fastest += int(pick in fastest)
                ratio = [loads[e] / max(g.link_capacity[e], 1e-9) for _, e in opts]
                emptiest = {j for j, x in enumerate(ratio) if x <= min(ratio) + 1e-9}
                stats.chance_least_loaded += len(emptiest) / len(opts)
                stats.picked_least_loaded += int(pick in emptiest)
                if not 0 <= pick < len(opts):
                    repairs[i] += 1
                    stats.repaired += 1
                    kind = "missing choice" if letter is None else "invalid choice"
                    report.add(Issue(kind, f"D{k} (Agent_{i} at Intersection_{paths[i][-1]}): "
                                     + ("no answer" if letter is None else
                                        f"{letter!r} is not one of the "
                                        f"{len(opts)} options"), agent=int(i)))
                    pick = min(range(len(opts)), key=lambda j: (
                        g.link_tfree[opts[j][1]] + tt[opts[j][0], dest[i]], loads[opts[j][1]]))
                _advance(paths, loads, i, opts[pick])
                if paths[i][-1] == dest[i]:
                    active[i] = False
        if not active.any():
            break
    stats.vehicles_without_choice = int(np.sum(ok & ~failed & (asked == 0)))
    # The routes as instruction text, through the same reader and validator as any plan.
    planned = [i for i in range(n) if ok[i] and not failed[i]]
    keep = set(planned)
    text = routes_to_text([paths[i] if i in keep else [int(origin[i])] for i in range(n)])
    report.dropped[:] += repairs
    requests = [Request(0, planned, parse_instructions(text))] if planned else []
    plans = fam.validate(requests, "llm", report)
    for i in np.flatnonzero(failed):
        report.fallback_reason[i] = "request failed"
    return plans, stats


def _advance(paths, loads, i, opt) -> None:
    v, e = opt
    paths[i].append(v)
    if e >= 0:
        loads[e] += 1


def _request(fam, batch, loads, last_peak, round_) -> tuple[list[dict], Ask]:
    g = fam.graph
    lines = []
    for k, (i, opts) in enumerate(batch, start=1):
        u, d = fam_path_end(fam, i, opts), int(fam.destination[i])
        lines.append(f"D{k}: Agent_{i} at Intersection_{u} to Intersection_{d}")
        for j, (v, e) in enumerate(opts):
            extra = f", {last_peak[e]:.0f} at once last round" if last_peak is not None else ""
            lines.append(f"  {LETTERS[j]}) Intersection_{v}: {g.link_tfree[e] + g.node_tt[v, d]:.0f} s, "
                         f"{loads[e]:.0f}/{g.link_capacity[e]:.0f} planned{extra}")
    fields = {"num_decisions": len(batch), "decisions": "\n".join(lines), "round": round_,
              "dt": f"{fam.env.params.dt:g}"}
    msgs = [{"role": "system", "content": fam.prompts.render("nexthop_system", **fields)},
            {"role": "user", "content": fam.prompts.render("nexthop", **fields)}]
    # One list of letters, one entry per decision, each restricted to its own options: ~3
    # generated tokens a decision instead of ~7 for {"D1": "A", ...} — on a CPU server under
    # a JSON grammar (measured ~1 token/s when the cores are shared) generation dominates.
    schema = {"type": "object",
              "properties": {"answers": {
                  "type": "array",
                  "prefixItems": [{"type": "string", "enum": list(LETTERS[:len(o)])}
                                  for _, o in batch],
                  "minItems": len(batch), "maxItems": len(batch)}},
              "required": ["answers"], "additionalProperties": False}
    budget = int(1.5 * TOKENS_PER_ANSWER * len(batch)) + 16
    return msgs, Ask(max_tokens=budget, stop=("END",), schema=schema)


def fam_path_end(fam, i, opts) -> int:
    """The intersection vehicle ``i`` stands at: the tail of its options' links."""
    return int(fam.graph.link_src[opts[0][1]])
