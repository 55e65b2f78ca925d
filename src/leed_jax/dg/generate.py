"""The DG stage end to end: scenario → prompts → LLM or planner → instructions → validation and
repair → executor → demo buffer (+ DG report).

One instruction path for both sources: the planner writes the same text an LLM would, and both
go through ``parse_instructions`` → ``DGFamily.validate`` → ``executor_for(env)`` →
``from_transitions`` → ``save_demos``.

LLM modes (all recorded in the metadata and the DG report, ``llm_mode``):

* granularity — ``route``: the model writes each agent's whole plan (traffic: the route's
  intersections; MPE: the landmark); ``next-hop`` (traffic): the model answers multiple-choice
  decisions, one per vehicle and intersection (``leed_jax.dg.nexthop``), which a 135M model
  can do; ``auto``: next-hop for a local server or a model whose name gives a size under
  8B parameters, route otherwise (MPE is always route: its plan is already one choice).
* output — structured (a JSON schema through litellm's ``response_format``) where the
  provider offers it, text otherwise (``LLMConfig.structured``); a structured reply is turned
  into instruction text and goes through the same reader, validator and repair.
* coordinated chunks (route mode, traffic): chunks are asked one after the other and each
  prompt lists the link loads planned by the chunks before it, so round 1 is already
  congestion-aware (across episodes, chunks of the same index are still sent together).

Failures: a request that still fails after its retries costs only its own chunk (its agents
take the planner's plan, fallback reason ``request failed``, counted); a provider that fails
every request — or is unreachable, refuses the key, or does not know the model — stops the run
with :class:`LLMError` (the CLI's exit 1). Every reply that did arrive is cached, so a rerun
asks only for the rest.

Refinement (``rounds = K > 1``, LLM only): after each round the joint plan is executed as a
whole, the outcome (per-vehicle travel times, the most congested links, the invalid
instructions) is rendered through the feedback template, and the model is asked again with its
previous answer in the conversation (next-hop: the last round's link peaks are shown with each
option). The best *whole round* — highest total return on the same episode (traffic: least
total travel time) — is kept; agents of different rounds are never stitched together, since
such a mix was never simulated. Every round's metrics and DG report are stored.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from leed_jax.config import ConfigError, DemoOptions, LLMOptions, validate_fields
from leed_jax.dg.buffer import DemoBuffer, array_summary, from_transitions, save_demos
from leed_jax.dg.cache import default_cache_dir
from leed_jax.dg.errors import DGError, LLMError
from leed_jax.dg.executor import ExpertRollout, executor_for
from leed_jax.dg.family import DGFamily, family_for
from leed_jax.dg.instructions import ParsedReply, ParseIssue, parse_instructions, structured_to_text
from leed_jax.dg.llm import MAX_STORED_CHARS, LLMClient, LLMConfig, is_local, safe_api_base
from leed_jax.dg.prompts import load_prompts
from leed_jax.dg.report import DGReport, Issue, summarize
from leed_jax.dg.validate import Request

log = logging.getLogger("leed_jax.dg")

PLANNER_LABELS = {
    "traffic": "planner (classical expert: {planner}; no LLM)",
    "mpe": "planner (classical expert: optimal agent-landmark assignment; no LLM)",
}
_FINISH_NOTES = {
    "length": "reply cut off by the token limit (finish_reason=length)",
    "oversized": f"reply of more than {MAX_STORED_CHARS:,} characters cut",
}
# The previous answer is sent back in refinement rounds up to this many characters.
MAX_ECHOED_REPLY = 20_000


@dataclasses.dataclass(frozen=True, kw_only=True)
class DemoConfig(DemoOptions):
    """Everything ``generate_demos`` needs; one source for the CLI and library use.

    The demonstration and LLM options (``source``, ``planner``, ``rounds``, ``model``,
    ``api_base``, ``timeout``, ``max_retries``, ``concurrency``, ``max_tokens``, ...) are the
    inherited fields of ``leed_jax.config.DemoOptions``, declared once there with their defaults,
    help and ranges (the main job's ``TrainConfig.dg`` is the same type, and every CLI's flags
    are generated from it). This class adds what one generation needs beside them: the
    scenario, the buffer directory, the seed, scenario overrides, progress, and
    ``llm_extra`` passed to litellm as is (e.g. ``{"mock_response": "..."}``).
    """

    scenario: str
    out: Path
    seed: int = 0
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    backoff_base: float = 1.0
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
        """Every option's type and range (``DGError``, one line naming the field)."""
        try:
            validate_fields(self)
        except ConfigError as err:
            raise DGError(str(err)) from None
#: ``granularity="auto"`` picks next-hop below this many parameters (benchmarks/dg_llm.py).
SMALL_MODEL_PARAMS = 8e9
_SIZE = re.compile(r"(?<![a-z0-9.])(\d+(?:\.\d+)?)\s*([mb])(?![a-z])", re.IGNORECASE)


def model_params(model: str) -> float | None:
    """Parameters named in a model id (``smollm2-135m`` → 1.35e8, ``llama3.1:8b`` → 8e9)."""
    sizes = [float(m.group(1)) * (1e6 if m.group(2).lower() == "m" else 1e9)
             for m in _SIZE.finditer(model.replace("_", "-").replace(":", "-").replace("/", "-"))]
    return max(sizes) if sizes else None


def resolve_granularity(cfg_value: str, family: str, model: str, api_base: str | None) -> str:
    """The granularity a run uses (MPE: always route — its plan is a single choice)."""
    if family != "traffic":
        return "route"
    if cfg_value != "auto":
        return cfg_value
    size = model_params(model)
    if size is not None:
        return "next-hop" if size < SMALL_MODEL_PARAMS else "route"
    return "next-hop" if is_local(api_base) else "route"


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
    best_total: float = -math.inf  # total return of the best whole round
    best_report: DGReport | None = None
    best_round: int = 0
    best_rollout: ExpertRollout | None = None
    rollout: ExpertRollout | None = None
    last_replies: list[str] | None = None
    feedback: list[str] | None = None
    last_peak: np.ndarray | None = None
    last_reply_objs: list | None = None
    loads: np.ndarray | None = None


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


def _new_episode(env, prompts, k_reset, k_run, planner: str) -> _Episode:
    """The episode ``env.reset(k_reset)`` with its DG family (``planner``: the routes the family
    plans; ``k_run``: the executor's key)."""
    obs, state = env.reset(k_reset)
    return _Episode(obs, state, k_run, family_for(env, prompts, obs, state, planner, k_run))


def _scenario_prompts(env, prompts_dir=None):
    """The prompt templates of ``env``'s scenario (its ``prompt`` field) or of its family."""
    return load_prompts(getattr(getattr(env, "scenario", None), "prompt", None) or env.family,
                        prompts_dir)


def _plan_episode(run, ep: _Episode, n: int, e: int) -> None:
    """The planner's plan of one episode, through the same reader and validator as an LLM's
    reply, executed in the env (``ep.rollout``, ``ep.best_plans``, ``ep.best_report``)."""
    parsed = parse_instructions(ep.fam.planner_text(), max_chars=sys.maxsize)
    report = DGReport(n, "planner", episode=e)
    plans = ep.fam.validate([Request(0, range(n), parsed)], "planner", report)
    ep.rollout = _execute(run, ep, plans)
    ep.best_plans, ep.best_report = plans, report


def planner_on_episodes(env, reset_keys, planner: str = DemoOptions.planner) -> dict:
    """The planner's plans executed on the episodes ``env.reset(k)`` for ``k`` in ``reset_keys``
    (e.g. the trainer's held-out evaluation episodes, ``yardsticks.evaluation_keys``): the
    like-with-like reference for a policy evaluated there, since demonstrations score on their
    own episodes. Returns the mean return per agent (``mean_return``, as in a demo buffer's
    metrics), the family's other metrics averaged over the episodes, and ``episodes``."""
    prompts = _scenario_prompts(env)
    run = executor_for(env)
    n = env.spec.num_agents
    rows = []
    for e, k in enumerate(reset_keys):
        # k_run: the executor's key (unused by the shipped envs' plans)
        ep = _new_episode(env, prompts, k, jax.random.fold_in(k, 1), planner)
        _plan_episode(run, ep, n, e)
        rows.append(ep.fam.metrics(ep.rollout))
    return {"episodes": len(rows), **_mean_metrics(rows)}


def _keep_best(ep: _Episode, plans, rollout: ExpertRollout, report: DGReport, r: int) -> None:
    """Keep the round whose joint plan, simulated as a whole, has the highest total return."""
    total = float(np.sum(ep.fam.scores(rollout)))  # traffic: −total travel time (+ bonuses)
    if total > ep.best_total + 1e-9 or ep.best_plans is None:
        ep.best_plans, ep.best_total, ep.best_report = list(plans), total, report
        ep.best_round, ep.best_rollout = r, rollout


def _mean_metrics(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


# Episodes recorded when DemoConfig.episodes is None. A traffic scenario with fixed demand
# (``resample = false``) needs one episode; MPE starts, and traffic with resampled demand draws,
# every episode at random, and demonstrations of one episode teach a policy nothing about the
# others.
RANDOM_START_EPISODES = {"planner": 64, "llm": 4}
# The planner on MPE: the warm-start clone of 64 episodes memorises them (99.8 % of their
# actions, 62 % on other starts) and scores -20 on held-out starts; 4,096 episodes cost the same
# DG seconds (compilation dominates) and, fitted 40,000 steps without the plateau stop (the
# mpe-spread preset of learning_compare.py), give 92 % and -12.8 (benchmarks/
# warm_start_episodes.py, README issue #10).
FAMILY_PLANNER_EPISODES = {"mpe": 4096}


def default_episodes(env, source: str) -> int:
    if env.family == "traffic" and not getattr(env, "resample", False):
        return 1
    if source == "planner":
        return FAMILY_PLANNER_EPISODES.get(env.family, RANDOM_START_EPISODES[source])
    return RANDOM_START_EPISODES[source]


def run_dg(cfg: DemoConfig, env=None) -> DGResult:
    """Run the DG stage for ``cfg`` (``env``: an already built env of ``cfg.scenario`` to reuse,
    e.g. to share its compiled executor). Returns the buffer, its metadata and the reports."""
    cfg.check()
    source, model = cfg.resolve_source()
    from leed_jax.dg.local_server import is_local_model, local_server

    if source == "llm" and is_local_model(model):  # "local": a llama.cpp server for this run
        if cfg.api_base:
            raise DGError("--model local starts its own server on 127.0.0.1: leave out "
                          "--api-base")
        with local_server(model) as (name, url):
            return run_dg(dataclasses.replace(cfg, source="llm", model=name, api_base=url),
                          env=env)
    t0 = time.perf_counter()
    if env is None:
        from leed_jax.envs.registry import make_env

        env = make_env(cfg.scenario, **dict(cfg.overrides))
    if cfg.episodes is None:
        cfg = dataclasses.replace(cfg, episodes=default_episodes(env, source))
    prompts = _scenario_prompts(env, cfg.prompts_dir)
    run = executor_for(env)
    n = env.spec.num_agents

    key = jax.random.PRNGKey(cfg.seed)
    # The LLM's fallback routes stay the cheap incremental ones.
    planner = cfg.planner if source == "planner" else "incremental"
    episodes: list[_Episode] = []
    for _ in range(cfg.episodes):
        key, k_reset, k_run = jax.random.split(key, 3)
        episodes.append(_new_episode(env, prompts, k_reset, k_run, planner))

    round_metrics: list[dict] = []  # the expert's metrics after each round
    round_reports: list[dict] = []  # the DG report summary of each round
    llm_stats: dict = {}
    llm_mode: dict | None = None
    t_plan = time.perf_counter()
    if source == "planner":
        rounds_run = 1
        for e, ep in enumerate(episodes):
            _plan_episode(run, ep, n, e)
        round_metrics.append(_mean_metrics([ep.fam.metrics(ep.rollout) for ep in episodes]))
        round_reports.append(summarize([ep.best_report for ep in episodes]))
        _log_round(1, 1, round_metrics[-1], [ep.best_report for ep in episodes])
    else:
        rounds_run = cfg.rounds
        llm = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(LLMOptions)}
        llm.update(model=model, seed=cfg.seed, backoff_base=cfg.backoff_base,
                   cache_dir=Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir(),
                   extra=dict(cfg.llm_extra))
        client = LLMClient(LLMConfig(**llm))
        granularity = resolve_granularity(cfg.granularity, env.family, model, cfg.api_base)
        coordinated = cfg.coordinate and hasattr(episodes[0].fam, "plan_loads")
        chunks = _chunks(n, cfg.agents_per_request)
        nexthop_stats: list[dict] = []
        if granularity == "next-hop":
            from leed_jax.dg.nexthop import plan_round

            total = None  # the number of decision batches is known only as they are made
        else:
            total = cfg.rounds * len(episodes) * len(chunks)
        with _progress(cfg.progress, total) as bar:
            task = bar.add_task("llm", total=total)
            advance = lambda *_: bar.advance(task)
            for r in range(1, cfg.rounds + 1):
                rows, reports = [], []
                if granularity == "next-hop":
                    for e, ep in enumerate(episodes):
                        report = DGReport(n, "llm", round=r, episode=e)
                        plans, st = plan_round(ep.fam, client, report, round_=r,
                                               per_request=cfg.decisions_per_request,
                                               last_peak=ep.last_peak, on_request=advance)
                        nexthop_stats.append({"round": r, "episode": e, **st.as_dict()})
                        _finish_round(run, ep, plans, report, r, rows, reports)
                        ep.last_peak = np.asarray(ep.rollout.extras.get("peak_link_counts"))
                else:
                    _route_round(cfg, client, episodes, chunks, r, coordinated, advance)
                    for e, ep in enumerate(episodes):
                        report = DGReport(n, "llm", round=r, episode=e)
                        plans = _validate_replies(ep, chunks, ep.last_reply_objs, report)
                        _finish_round(run, ep, plans, report, r, rows, reports)
                        if r < cfg.rounds:
                            ep.feedback = [ep.fam.feedback(agents, ep.rollout, report, c, r)
                                           for c, agents in enumerate(chunks)]
                round_metrics.append(_mean_metrics(rows))
                round_reports.append(summarize(reports))
                _log_round(r, cfg.rounds, round_metrics[-1], reports)
                if client.all_failed():
                    raise LLMError(_all_failed_message(client))
        for ep in episodes:  # the buffer records the best whole round, as it was simulated
            ep.rollout = ep.best_rollout
        llm_stats = client.stats.as_dict()
        llm_mode = {"granularity": granularity, "output": client.describe_mode(),
                    "probe": list(client.probe), "structured_setting": cfg.structured,
                    "replies_ignoring_schema": client.ignored_schema,
                    "coordinated_chunks": bool(coordinated and granularity == "route"
                                               and len(chunks) > 1),
                    "concurrency": client.config.workers(),
                    "timeout": cfg.timeout if cfg.timeout is not None else "auto",
                    "max_tokens": cfg.max_tokens if cfg.max_tokens is not None else "auto",
                    "best_round": [ep.best_round for ep in episodes]}
        if nexthop_stats:
            llm_mode["next_hop"] = nexthop_stats
    t_exec = time.perf_counter()

    final = _mean_metrics([ep.fam.metrics(ep.rollout) for ep in episodes])
    buffer = from_transitions([ep.rollout.transitions for ep in episodes],
                              [ep.rollout.returns for ep in episodes])
    reports = [ep.best_report for ep in episodes]
    summary = summarize(reports)
    planner_desc = {"incremental": "congestion-aware incremental shortest paths",
                    "equilibrium": "simulated dynamic user equilibrium",
                    "optimum": "simulated dynamic system optimum (marginal costs)"}
    label = (PLANNER_LABELS.get(env.family, "planner").format(planner=planner_desc[cfg.planner])
             if source == "planner" else f"llm ({model})")
    spec = env.spec
    meta = {
        "scenario": {"name": env.name, "family": env.family,
                     "hash": getattr(getattr(env, "scenario", None), "hash", None),
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
        "llm_mode": llm_mode,
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
    report_doc = {"summary": summary, "source_label": label, "llm_mode": llm_mode,
                  "episodes": [r.as_dict() for r in reports]}
    plan_text = "".join(
        (f"# episode {e}\n" if len(episodes) > 1 else "") + ep.fam.plan_text(ep.best_plans)
        for e, ep in enumerate(episodes))
    meta["arrays"] = array_summary(buffer)
    path = save_demos(cfg.out, buffer, meta, report=report_doc, plan_text=plan_text)
    meta["timing_s"]["total"] = round(time.perf_counter() - t0, 3)
    return DGResult(path, buffer, meta, reports)


def _finish_round(run, ep: _Episode, plans, report: DGReport, r: int, rows: list,
                  reports: list) -> None:
    """Simulate the round's joint plan as a whole, record it, keep it if it is the best."""
    ep.rollout = _execute(run, ep, plans)
    _keep_best(ep, plans, ep.rollout, report, r)
    rows.append(ep.fam.metrics(ep.rollout))
    reports.append(report)


def _route_round(cfg: DemoConfig, client: LLMClient, episodes: list[_Episode], chunks, r: int,
                 coordinated: bool, advance) -> None:
    """Ask for every chunk's plans (route granularity); sets ``ep.last_reply_objs``.

    Coordinated: chunk ``c`` is asked after chunks ``< c`` are validated, with their planned
    link loads in its prompt (chunks of the same index in different episodes go together).
    """
    for ep in episodes:
        ep.last_reply_objs = [None] * len(chunks)
        ep.loads = None
    order = [[c] for c in range(len(chunks))] if coordinated else [list(range(len(chunks)))]
    for group in order:
        batch, asks, where = [], [], []
        for e, ep in enumerate(episodes):
            for c in group:
                agents = chunks[c]
                msgs = (ep.fam.messages(agents, ep.loads) if coordinated
                        else ep.fam.messages(agents))
                if r > 1:
                    prev = ep.last_replies[c][:MAX_ECHOED_REPLY] or "(no answer)"
                    msgs += [{"role": "assistant", "content": prev},
                             {"role": "user", "content": ep.feedback[c]}]
                batch.append(msgs)
                asks.append(ep.fam.ask(agents))
                where.append((e, c))
        replies = client.complete(batch, on_reply=advance, asks=asks, tolerate=True)
        for (e, c), rep in zip(where, replies):
            ep = episodes[e]
            ep.last_reply_objs[c] = rep
            if coordinated and c + 1 < len(chunks):
                tmp = DGReport(ep.fam.num_agents, "llm")
                plans = _validate_replies(ep, chunks, ep.last_reply_objs, tmp, only=[c])
                add = ep.fam.plan_loads(plans, chunks[c])
                ep.loads = add if ep.loads is None else ep.loads + add
    for ep in episodes:
        ep.last_replies = [rep.text if rep is not None else "" for rep in ep.last_reply_objs]


def _validate_replies(ep: _Episode, chunks, replies, report: DGReport,
                      only: list[int] | None = None):
    """Validate the chunks' replies into per-agent plans; a failed request's agents fall
    back to the planner (reason ``request failed``)."""
    requests, failed = [], []
    for c, rep in enumerate(replies):
        if rep is None or (only is not None and c not in only):
            continue
        if rep.error:
            failed.append((c, rep))
            continue
        text = rep.text
        if rep.mode != "text":
            text = structured_to_text(rep.text, ep.fam.target_kind) or rep.text
        parsed = parse_instructions(text)
        note = _FINISH_NOTES.get(rep.finish_reason or "")
        if note:
            parsed = ParsedReply(parsed.instructions, parsed.issues + (ParseIssue(0, note),))
        requests.append(Request(c, chunks[c], parsed))
    plans = ep.fam.validate(requests, "llm", report)
    for c, rep in failed:
        report.add(Issue("request failed", rep.error, request=c))
        for a in chunks[c]:
            report.fallback_reason[a] = "request failed"
    return plans


def _all_failed_message(client: LLMClient) -> str:
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(client.stats.failures_by_kind.items()))
    return (f"every LLM request failed ({client.stats.failed_requests}: {kinds}), nothing "
            f"came from the model. First failure: {client.first_error}")


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
    out: str | os.PathLike,
    overrides: Mapping[str, Any] | None = None,
    **options: Any,
) -> Path:
    """DG stage: generate expert demonstrations for ``scenario`` and write the demo buffer.

    Args:
        scenario: a bundled scenario name, a TOML path, or an already built env.
        out: the buffer directory (see ``leed_jax.dg.buffer``).
        overrides: scenario overrides, e.g. ``{"num_agents": 1000}``.
        **options: any other :class:`DemoConfig` field, defaults as declared in
            ``leed_jax.config.DemoOptions``: ``source`` "auto" (the LLM if a model is
            configured, the planner otherwise), "llm" or "planner"; ``model`` a litellm model
            name (default ``$LEED_LLM_MODEL``); ``api_base`` for local OpenAI-compatible
            servers (Ollama, vLLM, llama.cpp); ``rounds`` refinement rounds (LLM only);
            ``seed``, ``progress``, ``episodes``, ``timeout``, ``max_retries``, ... API keys
            come from the environment only (the provider's variable or ``LEED_LLM_API_KEY``).

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
    cfg = DemoConfig(scenario=str(scenario), out=Path(out), overrides=dict(overrides or {}),
                     **options)
    return run_dg(cfg, env=env).path
