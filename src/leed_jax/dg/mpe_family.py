"""DG stage for MPE simple spread: prompts, the assignment planner, validation, feedback."""

from __future__ import annotations

from functools import cached_property

import numpy as np

from leed_jax.dg.executor import ExpertRollout, pad_targets
from leed_jax.dg.instructions import format_instruction
from leed_jax.dg.llm import Ask
from leed_jax.dg.planner import assignment_to_text, spread_assignment
from leed_jax.dg.prompts import PromptSet
from leed_jax.dg.report import DGReport
from leed_jax.dg.validate import Request, collect_targets, mpe_targets

MAX_PROBLEMS = 30


class MpeDG:
    target_kind = "Landmark"

    def __init__(self, env, prompts: PromptSet, state):
        self.env = env
        self.prompts = prompts
        je = env.jaxmarl_env
        self.num_agents = int(je.num_agents)
        self.num_landmarks = int(je.num_landmarks)
        pos = np.asarray(state.env_state.p_pos)
        self.agent_pos = pos[: self.num_agents]  # [N, 2]
        self.landmark_pos = pos[self.num_agents:]  # [L, 2]

    @cached_property
    def planner_assignment(self) -> np.ndarray:
        return spread_assignment(self.agent_pos, self.landmark_pos)

    def planner_text(self) -> str:
        return assignment_to_text(self.planner_assignment)

    def _fields(self) -> dict:
        return {"num_agents": self.num_agents, "num_landmarks": self.num_landmarks}

    def ask(self, agents: list[int]) -> Ask:
        """Budget, stop sequence and schema (one landmark per agent, a multiple choice)."""
        pick = {"type": "integer", "enum": list(range(self.num_landmarks))}
        schema = {"type": "object", "properties": {f"Agent_{i}": pick for i in agents},
                  "required": [f"Agent_{i}" for i in agents], "additionalProperties": False}
        return Ask(max_tokens=int(1.5 * 16 * len(agents)) + 32, stop=("END",), schema=schema)

    def messages(self, agents: list[int], loads=None) -> list[dict]:
        fmt = lambda p: f"({p[0]:.2f}, {p[1]:.2f})"
        fields = self._fields() | {
            "agents": "\n".join(f"Agent_{i}: {fmt(self.agent_pos[i])}" for i in agents),
            "landmarks": "\n".join(f"Landmark_{k}: {fmt(p)}"
                                   for k, p in enumerate(self.landmark_pos)),
            "num_requested": len(agents),
        }
        return [{"role": "system", "content": self.prompts.render("system", **fields)},
                {"role": "user", "content": self.prompts.render("user", **fields)}]

    def feedback(self, agents, rollout: ExpertRollout, report: DGReport, request: int,
                 round_: int) -> str:
        pos = np.asarray(rollout.extras["agent_pos"])
        lms = np.asarray(rollout.extras["landmark_pos"])
        dist = np.asarray(rollout.extras["distance"])
        lines = "\n".join(f"Agent_{i}: ({pos[i, 0]:.2f}, {pos[i, 1]:.2f}), {dist[i]:.2f} from "
                          f"its landmark" for i in agents)
        d_all = np.linalg.norm(pos[:, None] - lms[None], axis=-1)  # [N, L]
        uncovered = [f"Landmark_{k}" for k in range(lms.shape[0]) if d_all[:, k].min() > 0.1]
        wanted = set(agents)
        problems = [f"{('line ' + str(i.line) + ': ') if i.line else ''}{i.message}"
                    for i in report.issues
                    if i.request == request or (i.request < 0 and (i.agent in wanted
                                                                    or i.agent < 0))]
        problems = problems[:MAX_PROBLEMS]
        return self.prompts.render(
            "feedback", **self._fields(), round=round_,
            total_return=f"{float(np.sum(np.asarray(rollout.returns))):.2f}", agents=lines,
            uncovered=", ".join(uncovered) or "none", problems="\n".join(problems) or "(none)")

    def validate(self, requests: list[Request], source: str, report: DGReport):
        steps = collect_targets(requests, target_kind=self.target_kind,
                                num_agents=self.num_agents, num_targets=self.num_landmarks,
                                report=report)
        requested = np.zeros(self.num_agents, bool)
        for r in requests:
            requested[np.asarray(r.agents, dtype=np.int64)] = True
        fallback = [[int(k)] for k in self.planner_assignment]
        return mpe_targets(steps, fallback, report, source=source, requested=requested)

    def targets(self, plans):
        return pad_targets(plans)

    def plan_text(self, plans) -> str:
        return "\n".join(format_instruction("Landmark", k, i)
                         for i, seq in enumerate(plans) for k in seq) + "\n"

    def scores(self, rollout: ExpertRollout) -> np.ndarray:
        # The reward is mostly the team's (landmark coverage): judge a plan by the team return.
        team = float(np.sum(np.asarray(rollout.returns)))
        return np.full(self.num_agents, team)

    def metrics(self, rollout: ExpertRollout) -> dict[str, float]:
        returns = np.asarray(rollout.returns)
        return {"mean_return": float(returns.mean()), "team_return": float(returns.sum()),
                "mean_final_distance": float(np.asarray(rollout.extras["distance"]).mean())}
