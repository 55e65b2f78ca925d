"""The DG stage end to end: scenario → prompts → LLM or planner → instructions → validation and
repair → executor → demo buffer (+ DG report).

One instruction path for both sources: the planner writes the same text an LLM would, and both
go through ``parse_instructions`` → ``DGFamily.validate`` → ``executor_for(env)`` →
``from_transitions`` → ``save_demos``.

Refinement (``rounds = K > 1``, LLM only): after each round the plan is executed, the outcome
(per-vehicle travel times, the most congested links, the invalid instructions) is rendered
through the feedback template, and the model is asked again with its previous answer in the
conversation. Each agent keeps its best plan over the rounds (traffic: its own return; MPE:
the team return, since the reward is shared); the combined best plans are executed once more
for the buffer. The expert's metrics of every round are logged and stored in the metadata.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from leed_jax.dg.buffer import DemoBuffer, array_summary, from_transitions, save_demos
from leed_jax.dg.cache import default_cache_dir
from leed_jax.dg.errors import DGError
from leed_jax.dg.executor import ExpertRollout, executor_for
from leed_jax.dg.family import DGFamily, family_for
from leed_jax.dg.instructions import ParsedReply, ParseIssue, parse_instructions
from leed_jax.dg.llm import MAX_STORED_CHARS, LLMClient, LLMConfig, safe_api_base
from leed_jax.dg.prompts import load_prompts
from leed_jax.dg.report import DGReport, summarize
from leed_jax.dg.validate import Request

log = logging.getLogger("leed_jax.dg")

PLANNER_LABELS = {
    "traffic": "planner (classical expert: congestion-aware incremental shortest paths; no LLM)",
    "mpe": "planner (classical expert: optimal agent-landmark assignment; no LLM)",
}
_FINISH_NOTES = {
    "length": "reply cut off by the token limit (finish_reason=length)",
    "oversized": f"reply of more than {MAX_STORED_CHARS:,} characters cut",
}
# The previous answer is sent back in refinement rounds up to this many characters.
MAX_ECHOED_REPLY = 20_000


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Everything ``generate_demos`` needs; one source for the CLI and library use.

    ``source``: "auto" (the LLM when a model is configured — argument or ``LEED_LLM_MODEL`` —
    the planner otherwise), "llm" or "planner". ``cache_dir`` None means
    ``$LEED_LLM_CACHE`` or ``~/.cache/leed_jax/llm``. ``llm_extra`` is passed to litellm as is
    (e.g. ``{"mock_response": "..."}``).
    """

    scenario: str
    out: Path
    source: str = "auto"
    model: str | None = None
    api_base: str | None = None
    rounds: int = 1
    seed: int = 0
    episodes: int | None = None
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    agents_per_request: int = 20
    timeout: float = 120.0
    max_retries: int = 4
    backoff_base: float = 1.0
    concurrency: int = 4
    temperature: float = 0.0
    max_tokens: int | None = 8192
    cache_dir: Path | None = None
    prompts_dir: Path | None = None
    progress: bool = True
    llm_extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def resolve_source(self) -> tuple[str, str | None]:
        """``(source, model)`` after "auto" and ``LEED_LLM_MODEL`` are applied."""
        model = self.model or os.environ.get("LEED_LLM_MODEL") or None
        if self.source not in ("auto", "llm", "planner"):
            raise DGError(f"source {self.source!r} is not one of auto, llm, planner")
        if self.source == "planner":
            return "planner", None
        if self.source == "llm" and not model:
            raise DGError("source 'llm' needs a model: pass --model (litellm name, e.g. "
                          "openai/gpt-4o-mini or ollama_chat/llama3.1) or set LEED_LLM_MODEL")
        return ("llm", model) if model else ("planner", None)

    def check(self) -> None:
        for name in ("rounds", "episodes", "agents_per_request", "concurrency"):
            if getattr(self, name) is not None and int(getattr(self, name)) < 1:
                raise DGError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.timeout <= 0:
            raise DGError(f"timeout must be positive, got {self.timeout}")
        if self.max_retries < 0:
            raise DGError(f"max_retries must be >= 0, got {self.max_retries}")


@dataclasses.dataclass
class DGResult:
    path: Path
    buffer: DemoBuffer
    meta: dict
    reports: list[DGReport]  # final report per episode


@dataclasses.dataclass
class _Episode:
    obs: Any
    state: Any
    key: jax.Array
    fam: DGFamily
    best_plans: list | None = None
    best_scores: np.ndarray | None = None
    best_report: DGReport | None = None
    rollout: ExpertRollout | None = None
    last_replies: list[str] | None = None
    feedback: list[str] | None = None


def _chunks(n: int, size: int) -> list[list[int]]:
    return [list(range(i, min(i + size, n))) for i in range(0, n, size)]


def _progress(enabled: bool, total: int):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[bold]LLM requests"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), transient=False,
                    disable=not (enabled and sys.stderr.isatty()))


def _execute(run, ep: _Episode, plans) -> ExpertRollout:
    out = run(ep.key, ep.obs, ep.state, jnp.asarray(ep.fam.targets(plans)))
    return jax.device_get(out)


def _keep_best(ep: _Episode, plans, scores: np.ndarray, report: DGReport) -> None:
    if ep.best_plans is None:
        ep.best_plans, ep.best_scores = list(plans), scores.copy()
        ep.best_report = dataclasses.replace(report, plan_origin=list(report.plan_origin),
                                             fallback_reason=list(report.fallback_reason),
                                             dropped=report.dropped.copy(),
                                             gap_fills=report.gap_fills.copy(),
                                             completions=report.completions.copy(),
                                             issues=list(report.issues))
        return
    best = ep.best_report
    for i in np.flatnonzero(scores > ep.best_scores + 1e-9):
        ep.best_plans[i] = plans[i]
        ep.best_scores[i] = scores[i]
        best.plan_origin[i] = report.plan_origin[i]
        best.fallback_reason[i] = report.fallback_reason[i]
        best.dropped[i] = report.dropped[i]
        best.gap_fills[i] = report.gap_fills[i]
        best.completions[i] = report.completions[i]
    best.issues.extend(report.issues)
    best.round = -1  # a mix of rounds


def _mean_metrics(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


# Episodes recorded when DemoConfig.episodes is None. A traffic scenario with fixed demand
# (``resample = false``) needs one episode; MPE starts, and traffic with resampled demand draws,
# every episode at random, and demonstrations of one episode teach a policy nothing about the
# others.
RANDOM_START_EPISODES = {"planner": 64, "llm": 4}


def default_episodes(env, source: str) -> int:
    if env.family == "traffic" and not getattr(env, "resample", False):
        return 1
    return RANDOM_START_EPISODES[source]


def run_dg(cfg: DemoConfig, env=None) -> DGResult:
    """Run the DG stage for ``cfg`` (``env``: an already built env of ``cfg.scenario`` to reuse,
    e.g. to share its compiled executor). Returns the buffer, its metadata and the reports."""
    cfg.check()
    source, model = cfg.resolve_source()
    t0 = time.perf_counter()
    if env is None:
        from leed_jax.envs.registry import make_env

        env = make_env(cfg.scenario, **dict(cfg.overrides))
    if cfg.episodes is None:
        cfg = dataclasses.replace(cfg, episodes=default_episodes(env, source))
    scenario = getattr(env, "scenario", None)
    prompts = load_prompts(getattr(scenario, "prompt", None) or env.family, cfg.prompts_dir)
    run = executor_for(env)
    n = env.spec.num_agents

    key = jax.random.PRNGKey(cfg.seed)
    episodes: list[_Episode] = []
    for _ in range(cfg.episodes):
        key, k_reset, k_run = jax.random.split(key, 3)
        obs, state = env.reset(k_reset)
        episodes.append(_Episode(obs, state, k_run, family_for(env, prompts, obs, state)))

    round_metrics: list[dict] = []  # the expert's metrics after each round
    round_reports: list[dict] = []  # the DG report summary of each round
    llm_stats: dict = {}
    t_plan = time.perf_counter()
    if source == "planner":
        rounds_run = 1
        for e, ep in enumerate(episodes):
            parsed = parse_instructions(ep.fam.planner_text(), max_chars=sys.maxsize)
            report = DGReport(n, "planner", episode=e)
            plans = ep.fam.validate([Request(0, range(n), parsed)], "planner", report)
            ep.rollout = _execute(run, ep, plans)
            ep.best_plans, ep.best_report = plans, report
        round_metrics.append(_mean_metrics([ep.fam.metrics(ep.rollout) for ep in episodes]))
        round_reports.append(summarize([ep.best_report for ep in episodes]))
        _log_round(1, 1, round_metrics[-1], [ep.best_report for ep in episodes])
    else:
        rounds_run = cfg.rounds
        client = LLMClient(LLMConfig(
            model=model, api_base=cfg.api_base, temperature=cfg.temperature,
            max_tokens=cfg.max_tokens, seed=cfg.seed, timeout=cfg.timeout,
            max_retries=cfg.max_retries, backoff_base=cfg.backoff_base,
            concurrency=cfg.concurrency,
            cache_dir=Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir(),
            extra=dict(cfg.llm_extra)))
        chunks = _chunks(n, cfg.agents_per_request)
        total = cfg.rounds * len(episodes) * len(chunks)
        with _progress(cfg.progress, total) as bar:
            task = bar.add_task("llm", total=total)
            for r in range(1, cfg.rounds + 1):
                batch, where = [], []
                for e, ep in enumerate(episodes):
                    for c, agents in enumerate(chunks):
                        msgs = ep.fam.messages(agents)
                        if r > 1:
                            prev = ep.last_replies[c][:MAX_ECHOED_REPLY] or "(no answer)"
                            msgs += [{"role": "assistant", "content": prev},
                                     {"role": "user", "content": ep.feedback[c]}]
                        batch.append(msgs)
                        where.append((e, c))
                replies = client.complete(batch, on_reply=lambda i, rep: bar.advance(task))
                rows, reports = [], []
                for e, ep in enumerate(episodes):
                    requests = []
                    for (e2, c), rep in zip(where, replies):
                        if e2 != e:
                            continue
                        parsed = parse_instructions(rep.text)
                        note = _FINISH_NOTES.get(rep.finish_reason or "")
                        if note:
                            parsed = ParsedReply(parsed.instructions,
                                                 parsed.issues + (ParseIssue(0, note),))
                        requests.append(Request(c, chunks[c], parsed))
                    ep.last_replies = [rep.text for (e2, _), rep in zip(where, replies)
                                       if e2 == e]
                    report = DGReport(n, "llm", round=r, episode=e)
                    plans = ep.fam.validate(requests, "llm", report)
                    ep.rollout = _execute(run, ep, plans)
                    _keep_best(ep, plans, ep.fam.scores(ep.rollout), report)
                    rows.append(ep.fam.metrics(ep.rollout))
                    reports.append(report)
                    if r < cfg.rounds:
                        ep.feedback = [ep.fam.feedback(agents, ep.rollout, report, c, r)
                                       for c, agents in enumerate(chunks)]
                round_metrics.append(_mean_metrics(rows))
                round_reports.append(summarize(reports))
                _log_round(r, cfg.rounds, round_metrics[-1], reports)
        if cfg.rounds > 1:  # execute the combined best plans once more, for the buffer
            for ep in episodes:
                ep.rollout = _execute(run, ep, ep.best_plans)
        llm_stats = client.stats.as_dict()
    t_exec = time.perf_counter()

    final = _mean_metrics([ep.fam.metrics(ep.rollout) for ep in episodes])
    buffer = from_transitions([ep.rollout.transitions for ep in episodes],
                              [ep.rollout.returns for ep in episodes])
    reports = [ep.best_report for ep in episodes]
    summary = summarize(reports)
    label = PLANNER_LABELS.get(env.family, "planner") if source == "planner" else f"llm ({model})"
    spec = env.spec
    meta = {
        "scenario": {"name": env.name, "family": env.family,
                     "hash": getattr(scenario, "hash", None),
                     "overrides": dict(cfg.overrides)},
        "spec": {"num_agents": spec.num_agents, "obs_dim": spec.obs_dim,
                 "num_actions": spec.num_actions, "horizon": spec.horizon},
        "source": source,
        "source_label": label,
        "model": model,
        "api_base": safe_api_base(cfg.api_base) if source == "llm" else None,
        "template_hashes": prompts.hashes,
        "rounds": rounds_run,
        "episodes": cfg.episodes,
        "seed": cfg.seed,
        "agents_per_request": cfg.agents_per_request if source == "llm" else None,
        "round_metrics": round_metrics,
        "round_dg_reports": round_reports,
        "metrics": final,  # the expert's metrics of the executed (final) plan
        "per_agent_returns": np.asarray(buffer.agent_return).tolist(),
        "dg_report": summary,
        "llm": llm_stats,
        "timing_s": {"plan_and_execute": round(t_exec - t_plan, 3),
                     "total": round(time.perf_counter() - t0, 3)},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "leed_jax_version": _version(),
    }
    report_doc = {"summary": summary, "source_label": label,
                  "episodes": [r.as_dict() for r in reports]}
    plan_text = "".join(
        (f"# episode {e}\n" if len(episodes) > 1 else "") + ep.fam.plan_text(ep.best_plans)
        for e, ep in enumerate(episodes))
    meta["arrays"] = array_summary(buffer)
    path = save_demos(cfg.out, buffer, meta, report=report_doc, plan_text=plan_text)
    meta["timing_s"]["total"] = round(time.perf_counter() - t0, 3)
    return DGResult(path, buffer, meta, reports)


def _log_round(r: int, rounds: int, metrics: dict, reports: list[DGReport]) -> None:
    s = summarize(reports)
    shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
    log.info("round %d/%d: %s | model plans %d, repaired %d, planner fallback %d",
             r, rounds, shown, s["covered_by_model"], s["repaired"], s["fell_back_to_planner"])


def _version() -> str:
    try:
        from leed_jax import __version__

        return __version__
    except ImportError:
        return "unknown"


def generate_demos(
    scenario,
    *,
    source: str = "auto",
    model: str | None = None,
    api_base: str | None = None,
    rounds: int = 1,
    out: str | os.PathLike,
    seed: int = 0,
    overrides: Mapping[str, Any] | None = None,
    progress: bool = True,
    **options: Any,
) -> Path:
    """DG stage: generate expert demonstrations for ``scenario`` and write the demo buffer.

    Args:
        scenario: a bundled scenario name, a TOML path, or an already built env.
        source: "auto" (the LLM if a model is configured, the planner otherwise), "llm" or
            "planner".
        model: litellm model name (default ``$LEED_LLM_MODEL``); ``api_base`` for local
            OpenAI-compatible servers (Ollama, vLLM, llama.cpp). API keys come from the
            environment only (the provider's variable or ``LEED_LLM_API_KEY``).
        rounds: refinement rounds (LLM only).
        out: the buffer directory (see ``leed_jax.dg.buffer``).
        overrides: scenario overrides, e.g. ``{"num_agents": 1000}``.
        **options: any other :class:`DemoConfig` field (``episodes``, ``agents_per_request``,
            ``timeout``, ``max_retries``, ``backoff_base``, ``concurrency``, ``cache_dir``,
            ``prompts_dir``, ``temperature``, ``max_tokens``, ``llm_extra``).

    Returns:
        The buffer directory; ``load_demos(path, env)`` reads it.
    """
    env = None
    if not isinstance(scenario, (str, os.PathLike)):
        env, scenario = scenario, getattr(scenario, "name", "env")
    known = {f.name for f in dataclasses.fields(DemoConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"generate_demos() got unknown options {unknown}")
    cfg = DemoConfig(scenario=str(scenario), out=Path(out), source=source, model=model,
                     api_base=api_base, rounds=rounds, seed=seed,
                     overrides=dict(overrides or {}), progress=progress, **options)
    return run_dg(cfg, env=env).path
