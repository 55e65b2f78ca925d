"""The DG report: where every agent's expert plan came from and what had to be fixed.

Saved as ``dg_report.json`` next to the demo buffer, so the model's quality is visible:
how many agents the model planned, how many of those plans needed repair, how many agents fell
back to the planner and why, and every problem found, with the reply line it came from.
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np

#: At most this many problems are kept verbatim in the JSON (all are counted).
MAX_LISTED_ISSUES = 500

# Per-agent plan origins.
FROM_MODEL = "model"  # the model's plan, unchanged
REPAIRED = "model+repair"  # the model's plan, with dropped instructions / filled gaps
PLANNER = "planner"  # source=planner: the classical expert planned this agent by design
FALLBACK = "planner-fallback"  # source=llm: the model's plan was missing or unusable


@dataclasses.dataclass(frozen=True)
class Issue:
    """One problem found in an instruction text."""

    kind: str  # short category, e.g. "unknown node", "unreachable", "missing agent"
    message: str
    line: int = 0  # 1-based line of the reply; 0 when it concerns the reply as a whole
    agent: int = -1
    request: int = -1  # index of the prompt/reply within the round
    round: int = 0  # refinement round (1-based; 0 when not from an LLM round)
    episode: int = 0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class DGReport:
    """Per-agent counters (arrays ``[N]``) plus the list of problems, for one round."""

    num_agents: int
    source: str  # "llm" | "planner"
    plan_origin: list[str] = dataclasses.field(default_factory=list)  # [N]
    dropped: np.ndarray = None  # [N] invalid instructions removed
    gap_fills: np.ndarray = None  # [N] non-adjacent consecutive waypoints joined
    completions: np.ndarray = None  # [N] plan extended to reach the destination
    fallback_reason: list[str] = dataclasses.field(default_factory=list)  # [N] "" if none
    issues: list[Issue] = dataclasses.field(default_factory=list)
    round: int = 0  # refinement round of this plan (0: planner)
    episode: int = 0

    def __post_init__(self):
        n = self.num_agents
        for name in ("dropped", "gap_fills", "completions"):
            if getattr(self, name) is None:
                setattr(self, name, np.zeros(n, dtype=np.int64))
        if not self.plan_origin:
            self.plan_origin = [""] * n
        if not self.fallback_reason:
            self.fallback_reason = [""] * n

    def add(self, issue: Issue) -> None:
        self.issues.append(dataclasses.replace(issue, round=self.round, episode=self.episode))

    def repaired_mask(self) -> np.ndarray:
        return np.array([o == REPAIRED for o in self.plan_origin])

    def summary(self) -> dict:
        """Counts for the CLI summary and the buffer metadata."""
        return summarize([self])

    def as_dict(self) -> dict:
        return {
            "round": self.round,
            "episode": self.episode,
            "summary": self.summary(),
            "per_agent": {
                "plan_origin": list(self.plan_origin),
                "dropped": self.dropped.tolist(),
                "gap_fills": self.gap_fills.tolist(),
                "completions": self.completions.tolist(),
                "fallback_reason": list(self.fallback_reason),
            },
            "issues": [i.as_dict() for i in self.issues[:MAX_LISTED_ISSUES]],
            "issues_total": len(self.issues),
        }


def summarize(reports: list[DGReport]) -> dict:
    """Counts over one or more reports (several episodes: one plan per agent and episode)."""
    origins = collections.Counter(o for r in reports for o in r.plan_origin)
    reasons = collections.Counter(x for r in reports for x in r.fallback_reason if x)
    kinds = collections.Counter(i.kind for r in reports for i in r.issues)
    total = lambda name: int(sum(getattr(r, name).sum() for r in reports))
    return {
        "source": reports[0].source,
        "agents": reports[0].num_agents,
        "plans": sum(r.num_agents for r in reports),
        "covered_by_model": origins[FROM_MODEL] + origins[REPAIRED],
        "model_unchanged": origins[FROM_MODEL],
        "repaired": origins[REPAIRED],
        "fell_back_to_planner": origins[FALLBACK],
        "planner_by_design": origins[PLANNER],
        "fallback_reasons": dict(sorted(reasons.items())),
        "instructions_dropped": total("dropped"),
        "gaps_filled": total("gap_fills"),
        "plans_completed": total("completions"),
        "issues_by_kind": dict(sorted(kinds.items())),
    }
