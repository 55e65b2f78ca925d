"""DG stage for the traffic routing env: prompts, planner, validation and feedback."""

from __future__ import annotations

import itertools
from functools import cached_property

import numpy as np

from leed_jax.dg.executor import ExpertRollout, pad_targets
from leed_jax.dg.llm import Ask
from leed_jax.dg.planner import routes_to_text, traffic_routes
from leed_jax.dg.prompts import PromptSet
from leed_jax.dg.report import DGReport
from leed_jax.dg.validate import Request, collect_targets, traffic_paths

TOP_CONGESTED = 10
MAX_PROBLEMS = 30
MAX_LISTED_LOADS = 40  # planned-load lines in a coordinated chunk's prompt
# Completion budget of a route request: tokens per instruction line ("[MoveTo,
# Intersection_12, Agent_3]" is ~14 tokens; a JSON list entry ~3), per agent of overhead, and
# the margin over the free-flow route length (a congestion-aware route may be longer).
TOKENS_PER_INSTRUCTION = {"text": 16, "json": 4}
TOKENS_PER_AGENT = {"text": 2, "json": 8}
BUDGET_MARGIN = 1.5
STOP = ("END",)


class TrafficDG:
    target_kind = "Intersection"

    def __init__(self, env, prompts: PromptSet, state=None, planner: str = "incremental",
                 key=None):
        self.env = env
        self.planner = planner  # "incremental" | "equilibrium" | "optimum"
        self._state, self._key = state, key
        self.prompts = prompts
        self.graph = env.network  # leed_jax.envs.network.RoadNetwork: node-level routing
        # The episode's own vehicles (the env may draw a new demand per episode).
        src = state if state is not None and hasattr(state, "dest") else None
        self.origin = np.asarray(src.origin if src is not None else env.demand.origin)
        self.destination = np.asarray(src.dest if src is not None else env.demand.destination)
        self.departure = np.asarray(src.depart if src is not None else env.demand.departure)
        self.num_agents = int(self.origin.shape[0])

    # ---------------------------------------------------------------- planner
    @cached_property
    def planner_paths(self) -> list[list[int]]:
        p = self.env.params
        inc = traffic_routes(self.graph, self.origin, self.destination, self.departure,
                             dt=p.dt, alpha=p.alpha, beta=p.beta)
        if self.planner == "incremental":
            return inc
        from leed_jax.dg.equilibrium import EquilibriumConfig, plan_routes

        # Warm start from the incremental routes; the best simulated plan is kept, so the
        # result is never worse than them on this episode.
        state = self._state if self._state is not None and hasattr(self._state, "dest") else None
        return plan_routes(self.env, key=self._key, state=state,
                           config=EquilibriumConfig(objective=self.planner), initial=inc).paths

    def planner_text(self) -> str:
        return routes_to_text(self.planner_paths)

    # ---------------------------------------------------------------- prompts
    @cached_property
    def _adjacency(self) -> str:
        g = self.graph
        lines = []
        for u in range(g.num_nodes):
            outs = []
            for v in g.successors[u]:
                e = g.link_index(u, v)
                outs.append(f"Intersection_{v} ({g.link_length[e]:.0f} m, "
                            f"{g.link_tfree[e]:.0f} s, {g.link_capacity[e]:.0f})")
            lines.append(f"Intersection_{u} -> " + ("; ".join(outs) if outs else "(none)"))
        return "\n".join(lines)

    def _fields(self) -> dict:
        p = self.env.params
        return {"alpha": f"{p.alpha:g}", "beta": f"{p.beta:g}", "dt": f"{p.dt:g}",
                "horizon": p.horizon, "num_nodes": self.graph.num_nodes,
                "num_links": self.graph.num_links, "num_vehicles": self.num_agents}

    def messages(self, agents: list[int], loads: np.ndarray | None = None) -> list[dict]:
        """The route request for ``agents``; ``loads [E]``: vehicles planned on each link by
        the chunks before this one (coordinated chunks), shown in the prompt."""
        vehicles = "\n".join(
            f"Agent_{i}: from Intersection_{self.origin[i]} to Intersection_"
            f"{self.destination[i]}, departs at step {self.departure[i]}" for i in agents)
        fields = self._fields() | {"adjacency": self._adjacency, "vehicles": vehicles,
                                   "num_requested": len(agents),
                                   "planned_loads": self._loads_text(loads)}
        return [{"role": "system", "content": self.prompts.render("system", **fields)},
                {"role": "user", "content": self.prompts.render("user", **fields)}]

    def _loads_text(self, loads: np.ndarray | None) -> str:
        if loads is None or not np.any(loads > 0):
            return "(none)"
        g = self.graph
        ratio = loads / np.maximum(g.link_capacity, 1e-9)
        top = [e for e in np.argsort(-ratio, kind="stable")[:MAX_LISTED_LOADS] if loads[e] > 0]
        lines = [f"Intersection_{g.link_src[e]} -> Intersection_{g.link_dst[e]}: "
                 f"{loads[e]:.0f} / {g.link_capacity[e]:.0f}" for e in top]
        rest = int(np.sum(loads > 0)) - len(top)
        return "\n".join(lines + ([f"... and {rest} less loaded links"] if rest > 0 else []))

    def plan_loads(self, plans, agents) -> np.ndarray:
        """Vehicles of ``agents`` planned on each link ``[E]`` (from their node paths)."""
        g = self.graph
        loads = np.zeros(g.num_links)
        for i in agents:
            p = plans[i]
            for u, v in itertools.pairwise(p):
                e = g.link_index(u, v)
                if e >= 0:
                    loads[e] += 1
        return loads

    def ask(self, agents: list[int]) -> Ask:
        """Budget, stop sequence and JSON schema of a route request for ``agents``."""
        g = self.graph
        tt = g.node_tt[self.origin[agents], self.destination[agents]]
        hops = [max(1, len(g.shortest_path(int(self.origin[i]), int(self.destination[i]))) - 1)
                if np.isfinite(t) else 1 for i, t in zip(agents, tt)]
        # The schema mode needs fewer tokens; the budget covers the text mode, the larger.
        budget = int(BUDGET_MARGIN * sum(h * TOKENS_PER_INSTRUCTION["text"]
                                         + TOKENS_PER_AGENT["text"] for h in hops)) + 32
        item = {"type": "integer"}
        route = {"type": "array", "items": item}
        if g.num_nodes <= 64:  # a bounded list keeps the grammar of a small network small
            route["maxItems"] = g.num_nodes
        schema = {"type": "object", "properties": {f"Agent_{i}": route for i in agents},
                  "required": [f"Agent_{i}" for i in agents], "additionalProperties": False}
        return Ask(max_tokens=budget, stop=STOP, schema=schema)

    def feedback(self, agents, rollout: ExpertRollout, report: DGReport, request: int,
                 round_: int) -> str:
        tt = np.asarray(rollout.extras["travel_time"])
        arrived = np.asarray(rollout.extras["arrived"])
        free = self.graph.node_tt[self.origin, self.destination]
        vehicles = "\n".join(
            f"Agent_{i}: {tt[i]:.0f} s (free-flow {free[i]:.0f} s)"
            + ("" if arrived[i] else ", did NOT arrive") for i in agents)
        peak = np.asarray(rollout.extras["peak_link_counts"])
        ratio = peak / np.maximum(self.graph.link_capacity, 1e-9)
        top = [e for e in np.argsort(-ratio, kind="stable")[:TOP_CONGESTED] if peak[e] > 0]
        congested = "\n".join(
            f"Intersection_{self.graph.link_src[e]} -> Intersection_{self.graph.link_dst[e]}: "
            f"{peak[e]:.0f} / {self.graph.link_capacity[e]:.0f}" for e in top) or "(none)"
        wanted = set(agents)
        problems = [f"{('line ' + str(i.line) + ': ') if i.line else ''}{i.message}"
                    for i in report.issues
                    if i.request == request or (i.request < 0 and i.agent in wanted)]
        if len(problems) > MAX_PROBLEMS:
            problems = problems[:MAX_PROBLEMS] + [f"... and {len(problems) - MAX_PROBLEMS} more"]
        m = rollout.metrics
        return self.prompts.render(
            "feedback", **self._fields(), round=round_,
            mean_travel_time=f"{float(m['mean_travel_time']):.0f}",
            arrival_rate=f"{float(m['arrival_rate']):.0%}", vehicles=vehicles,
            congested_links=congested, problems="\n".join(problems) or "(none)")

    # ---------------------------------------------------------------- validation
    def validate(self, requests: list[Request], source: str, report: DGReport):
        steps = collect_targets(requests, target_kind=self.target_kind,
                                num_agents=self.num_agents, num_targets=self.graph.num_nodes,
                                report=report)
        requested = np.zeros(self.num_agents, bool)
        for r in requests:
            requested[np.asarray(r.agents, dtype=np.int64)] = True
        return traffic_paths(self.graph, self.origin, self.destination, steps,
                             self.planner_paths, report, source=source, requested=requested)

    def targets(self, plans):
        return pad_targets([p[1:] if len(p) > 1 else p for p in plans])

    def plan_text(self, plans) -> str:
        return routes_to_text(plans)

    # ---------------------------------------------------------------- outcome
    def scores(self, rollout: ExpertRollout) -> np.ndarray:
        return np.asarray(rollout.returns)

    def metrics(self, rollout: ExpertRollout) -> dict[str, float]:
        out = {k: float(v) for k, v in rollout.metrics.items()}
        out["mean_return"] = float(np.mean(np.asarray(rollout.returns)))
        return out


