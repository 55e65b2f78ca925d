"""What the DG stage needs to know about an env family, behind one small interface.

``generate_demos`` is written once against :class:`DGFamily`; ``traffic_family`` and
``mpe_family`` fill it in (prompt fields, the planner, validation, feedback). One instance
describes one episode: the env plus its initial state (MPE positions differ per reset).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from leed_jax.dg.errors import DGError
from leed_jax.dg.executor import ExpertRollout
from leed_jax.dg.prompts import PromptSet
from leed_jax.dg.report import DGReport
from leed_jax.dg.validate import Request


class DGFamily(Protocol):
    target_kind: str  # "Intersection" | "Landmark"
    num_agents: int

    def messages(self, agents: list[int]) -> list[dict]:
        """System + user messages asking for the plans of ``agents``."""

    def feedback(self, agents: list[int], rollout: ExpertRollout, report: DGReport,
                 request: int, round_: int) -> str:
        """The feedback message for ``agents`` after executing round ``round_``."""

    def planner_text(self) -> str:
        """The classical expert's plan for every agent, as instruction text."""

    def validate(self, requests: list[Request], source: str,
                 report: DGReport) -> list[list[int]]:
        """Per-agent plans (traffic: node paths origin..destination; MPE: landmark lists)."""

    def targets(self, plans: list[list[int]]) -> np.ndarray:
        """Executor input ``[N, L] int32``."""

    def plan_text(self, plans: list[list[int]]) -> str:
        """The canonical instruction text of ``plans``."""

    def scores(self, rollout: ExpertRollout) -> np.ndarray:
        """``[N]`` higher is better; used to keep each agent's best plan across rounds."""

    def metrics(self, rollout: ExpertRollout) -> dict[str, float]:
        """The expert's metrics of one executed plan (shown after each round)."""


def family_for(env, prompts: PromptSet, obs: Any, state: Any, planner: str = "incremental",
               key: Any = None) -> DGFamily:
    if env.family == "traffic":
        from leed_jax.dg.traffic_family import TrafficDG

        return TrafficDG(env, prompts, state, planner=planner, key=key)
    if env.family == "mpe":
        from leed_jax.dg.mpe_family import MpeDG

        return MpeDG(env, prompts, state)
    raise DGError(f"the DG stage supports the traffic and mpe env families, not "
                  f"{env.family!r} (scenario {env.name!r})")
