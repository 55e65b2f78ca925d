"""Yardsticks: a traffic policy's travel time beside the dynamic user equilibrium's and the
system optimum's on the very same episodes (issue #9 item 3).

For each episode (one ``env.reset(key)``) the simulation-based planner of
:mod:`leed_jax.dg.equilibrium` runs twice, warm-started from the incremental planner's routes:
``equilibrium`` (each vehicle's own time: dynamic user equilibrium, "UE") and ``optimum``
(marginal costs: dynamic system optimum, "SO"). The simulated mean travel time per departed
vehicle of each resulting plan — the env's own ``mean_travel_time`` at the episode's end — is
the yardstick; the system optimum's is the least total travel time found by either run (the
equilibrium's plan is a feasible plan too, and the heuristic optimum search can stall above
it), so it is never above the equilibrium's. A policy's gap to a yardstick is
``100 · (policy − yardstick) / yardstick`` %: positive = slower than it, negative = faster.
Both are the best plans the planner *found* (heuristic searches over a few candidate routes
per vehicle), not proven bounds: a learned policy can beat them.

Cost: two planner runs per episode (a few seconds each on the shipped grids). Results are
cached per episode — in memory and on disk under ``$LEED_YARDSTICK_CACHE`` (default
``~/.cache/leed_jax/yardsticks``; ``off`` disables the disk cache) — keyed by a SHA-256 of
the network, the env parameters, the episode's vehicles and the planner config, so the main
job's ``--compare`` run, the sweep's cells and reruns plan each episode once.

Entry points: :func:`yardsticks` (env + reset keys → per-episode yardsticks),
:func:`compare` (a policy's per-episode times against them → summary fields),
:func:`for_evaluation` (the trainer's final evaluation → summary fields),
:func:`summary_fields` / :func:`describe` (for tables and benchmarks reading a summary).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

log = logging.getLogger("leed_jax.dg")

# Episodes of the final evaluation priced against the yardsticks when the config says "auto"
# (-1): ``$LEED_YARDSTICKS`` if set (the test suite sets 0), else this.
DEFAULT_EPISODES = 4
# Rounds of each planner run: the DG default, 30. With the queue table and the gain switch
# (stop 17) the equilibrium keeps improving to the last round: on reset key 0, 12 rounds gave
# traffic-grid a plan at gap 0.033 (total 3,894 s) against 0.012 (3,886 s) after 30, and
# traffic-grid-large only its warm start (gap 0.106, the incremental plan) against 153,978 s
# at 0.019 after 30 (`benchmarks/equilibrium_planner.py SCENARIO --keys 0 --set rounds=12`).
# (The old planner, MSA on the mean table, had its best plans by round 11-12.)
DEFAULT_ROUNDS = 30
CACHE_VERSION = 2  # bump when the planner or the definition of a yardstick changes (2: queue table)

# Summary fields written by :func:`compare`, in table order.
FIELDS = (
    "yardstick_episodes",
    "policy_mean_travel_time_on_yardstick_episodes",
    "ue_mean_travel_time",
    "so_mean_travel_time",
    "incremental_mean_travel_time",
    "gap_to_ue_pct",
    "gap_to_so_pct",
    "yardstick_s",
)
GAP_COLUMNS = ("gap_to_ue_pct", "gap_to_so_pct")


def resolve_episodes(requested: int) -> int:
    """``requested`` ≥ 0 as is; -1 ("auto") → ``$LEED_YARDSTICKS`` or :data:`DEFAULT_EPISODES`."""
    if requested >= 0:
        return requested
    raw = os.environ.get("LEED_YARDSTICKS", "").strip()
    if not raw:
        return DEFAULT_EPISODES
    try:
        return max(0, int(raw))
    except ValueError:
        log.warning("LEED_YARDSTICKS=%r is not an integer; using %d", raw, DEFAULT_EPISODES)
        return DEFAULT_EPISODES


def evaluation_keys(seed: int, eval_envs: int) -> jax.Array:
    """``[eval_envs, 2]``: the reset keys of the trainer's held-out evaluation episodes
    (``seed``: the config's ``eval_seed``, the same for every run): ``evaluate(params,
    PRNGKey(eval_seed))`` resets env ``j`` with ``split(split(key)[0], eval_envs)[j]``
    (``po/trainer.py``, ``po/rollout.reset_envs``)."""
    key = jax.random.PRNGKey(seed)
    return jax.random.split(jax.random.split(key)[0], eval_envs)


# ----------------------------------------------------------------------------- cache
def _cache_dir() -> Path | None:
    raw = os.environ.get("LEED_YARDSTICK_CACHE", "")
    if raw.strip().lower() == "off":
        return None
    return Path(raw) if raw else Path.home() / ".cache" / "leed_jax" / "yardsticks"


_MEMORY: dict[str, dict] = {}


def _network_digest(net) -> str:
    h = hashlib.sha256()
    for name in ("link_src", "link_dst", "link_length", "link_speed", "link_lanes", "link_capacity",
                 "link_flow_capacity", "link_storage", "link_bpr_b", "link_bpr_power", "turn_allowed"):
        a = getattr(net, name, None)
        if a is not None:
            h.update(name.encode())
            h.update(np.ascontiguousarray(np.asarray(a)).tobytes())
    return h.hexdigest()


def _episode_key(env, state, config) -> str:
    params = {k: (v if isinstance(v, (int, float, str, bool)) else repr(v))
              for k, v in dataclasses.asdict(env.params).items()} if dataclasses.is_dataclass(env.params) \
        else repr(env.params)
    blob = json.dumps({"v": CACHE_VERSION, "net": _network_digest(env.network), "params": params,
                       "planner": dataclasses.asdict(config)}, sort_keys=True, default=str).encode()
    h = hashlib.sha256(blob)
    for a in (state.origin, state.dest, state.depart):
        h.update(np.ascontiguousarray(np.asarray(a)).tobytes())
    return h.hexdigest()


def _cache_get(key: str) -> dict | None:
    if key in _MEMORY:
        return _MEMORY[key]
    root = _cache_dir()
    if root is None:
        return None
    path = root / f"{key}.json"
    try:
        value = json.loads(path.read_text())
        if not all(isinstance(value.get(k), (int, float)) for k in ("ue_total", "so_total", "incremental_total", "vehicles")):
            raise ValueError("missing fields")
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:  # a corrupt entry is recomputed, never fatal
        log.warning("yardstick cache entry %s unreadable (%s); recomputing", path, err)
        return None
    _MEMORY[key] = value
    return value


def _cache_put(key: str, value: dict) -> None:
    _MEMORY[key] = value
    root = _cache_dir()
    if root is None:
        return
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=root, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(value, f)
        os.replace(tmp, root / f"{key}.json")
    except OSError as err:  # a read-only home must not fail a finished run
        log.warning("yardstick cache not written (%s)", err)


# ----------------------------------------------------------------------------- yardsticks
_RESETS: dict = {}


def _reset(env, key):
    """``env.reset`` jitted once per env (op-by-op it takes seconds on a grid)."""
    hit = _RESETS.get(id(env))
    if hit is None or hit[0] is not env:
        hit = _RESETS[id(env)] = (env, jax.jit(env.reset))
    return hit[1](key)


def episode_yardstick(env, key, rounds: int | None = None, config=None) -> dict:
    """One episode (``env.reset(key)``), planned for ``rounds`` (default
    :data:`DEFAULT_ROUNDS`): ``{"vehicles", "ue_total", "so_total",
    "incremental_total", "seconds", "cached"}`` (totals in vehicle-seconds over departed
    vehicles, as simulated by the env; ``incremental_total``: the warm start's)."""
    from leed_jax.dg.equilibrium import EquilibriumConfig, plan_routes
    from leed_jax.dg.planner import traffic_routes

    base = config or EquilibriumConfig(rounds=rounds or DEFAULT_ROUNDS)
    obs, state = _reset(env, jax.numpy.asarray(key))
    ck = _episode_key(env, state, base)
    hit = _cache_get(ck)
    if hit is not None:
        return {**hit, "cached": True}
    t0 = time.perf_counter()
    p = env.params
    inc = traffic_routes(env.network, np.asarray(state.origin),
                         np.asarray(state.dest), np.asarray(state.depart),
                         dt=p.dt, alpha=p.alpha, beta=p.beta)
    out = {"vehicles": int(np.asarray(state.origin).shape[0])}
    for obj, name in (("equilibrium", "ue"), ("optimum", "so")):
        res = plan_routes(env, key=jax.numpy.asarray(key), state=state, obs=obs,
                          config=dataclasses.replace(base, objective=obj), initial=inc)
        out[f"{name}_total"] = float(res.total_travel_time)
        out[f"{name}_gap"] = float(res.gaps[-1])
        # Round 1 simulates the warm start itself (the incremental planner's routes).
        out["incremental_total"] = float(res.totals[0])
    out["seconds"] = round(time.perf_counter() - t0, 2)
    _cache_put(ck, out)
    return {**out, "cached": False}


def yardsticks(env, keys, rounds: int | None = None, progress=None) -> dict:
    """Per-episode yardsticks of the episodes ``keys [M, 2]``: ``{"ue_mean_travel_time": [M],
    "so_mean_travel_time": [M], "incremental_mean_travel_time": [M], "seconds": float,
    "cached": int}`` (seconds per departed vehicle; every vehicle departs within the horizon
    on the shipped scenarios, so this is the env's ``mean_travel_time``). ``progress``: an
    optional ``say(str)`` for one line per planned episode."""
    if getattr(env, "family", None) != "traffic":
        raise ValueError(f"yardsticks need a traffic env, got {getattr(env, 'family', type(env).__name__)!r}")
    t0 = time.perf_counter()
    out = {"ue_mean_travel_time": [], "so_mean_travel_time": [], "incremental_mean_travel_time": []}
    cached = 0
    keys = np.asarray(keys)
    for i, key in enumerate(keys):
        y = episode_yardstick(env, key, rounds)
        n = max(y["vehicles"], 1)
        out["ue_mean_travel_time"].append(y["ue_total"] / n)
        # The optimum yardstick is the least total found: the equilibrium's plan is a feasible
        # plan too, and where the optimum search stalls above it, it is the better bound.
        out["so_mean_travel_time"].append(min(y["so_total"], y["ue_total"]) / n)
        out["incremental_mean_travel_time"].append(y["incremental_total"] / n)
        cached += y["cached"]
        if progress and not y["cached"]:
            progress(f"yardsticks: episode {i + 1}/{len(keys)} planned in {y['seconds']:.1f} s "
                     f"(UE {y['ue_total'] / n:.1f} s, SO {y['so_total'] / n:.1f} s per vehicle)")
    out["seconds"] = round(time.perf_counter() - t0, 2)
    out["cached"] = cached
    return out


def compare(policy_mean_tt, yard: dict) -> dict:
    """A policy's per-episode mean travel times ``[M]`` against :func:`yardsticks` of the same
    episodes → the summary fields :data:`FIELDS` (means over the episodes; gaps in %)."""
    pol = float(np.mean(policy_mean_tt))
    ue = float(np.mean(yard["ue_mean_travel_time"]))
    so = float(np.mean(yard["so_mean_travel_time"]))
    return {
        "yardstick_episodes": len(yard["ue_mean_travel_time"]),
        "policy_mean_travel_time_on_yardstick_episodes": pol,
        "ue_mean_travel_time": ue,
        "so_mean_travel_time": so,
        "incremental_mean_travel_time": float(np.mean(yard["incremental_mean_travel_time"])),
        "gap_to_ue_pct": 100.0 * (pol - ue) / max(ue, 1e-9),
        "gap_to_so_pct": 100.0 * (pol - so) / max(so, 1e-9),
        "yardstick_s": float(yard.get("seconds", 0.0)),
    }


def for_evaluation(env, seed: int, eval_envs: int, metrics: dict, episodes: int = -1,
                   say=None) -> dict:
    """Yardstick fields for the trainer's final evaluation (:data:`FIELDS`), or ``{}`` for
    a non-traffic env or ``episodes`` resolving to 0 (:func:`resolve_episodes`).
    ``metrics["mean_travel_time"]``: ``[K, E]`` of the policy (run k of ``--seeds``, episode
    e); the first ``episodes`` episodes of run 0 are compared (their reset keys:
    :func:`evaluation_keys`). A fixed-demand scenario repeats one episode: one is planned."""
    episodes = resolve_episodes(episodes)
    if getattr(env, "family", None) != "traffic" or episodes <= 0 or "mean_travel_time" not in metrics:
        return {}
    policy = np.asarray(metrics["mean_travel_time"]).reshape(-1, eval_envs)[0]  # run 0: [E]
    m = min(episodes, eval_envs) if getattr(env, "resample", False) else 1
    keys = evaluation_keys(seed, eval_envs)[:m]
    if not getattr(env, "resample", False):
        policy = policy.mean(keepdims=True)  # every episode is the one fixed draw
    return compare(policy[:m], yardsticks(env, keys, progress=say))


def summary_fields(summary: dict) -> dict:
    """The yardstick fields present in a run's ``summary`` (``{}`` when it has none), for
    benchmarks and tables: ``{**summary_fields(result.summary)}``."""
    return {k: summary[k] for k in FIELDS if k in summary}


def describe(summary: dict) -> str:
    """``"vs UE +3.1 %, vs SO +4.0 % (4 ep.)"``, or ``""`` without yardsticks."""
    if "gap_to_ue_pct" not in summary:
        return ""
    return (f"vs UE {summary['gap_to_ue_pct']:+.1f} %, vs SO {summary['gap_to_so_pct']:+.1f} % "
            f"({summary['yardstick_episodes']} ep.)")


def add_to_table(rows: list[dict], summaries: dict, metric_names: list[str]) -> list[str]:
    """For the main job's table: each policy row (``rows[i]`` from the i-th summary) gets its
    gaps to the yardsticks; then a row per policy with its mean travel time on the yardstick
    episodes only, and two rows with the dynamic equilibrium's and the optimum's there. Returns the columns to print (``metric_names`` plus the
    gap columns when there are yardsticks)."""
    first = next((s for s in summaries.values() if "ue_mean_travel_time" in s), None)
    if first is None:
        return metric_names
    m = first["yardstick_episodes"]
    same = []  # each policy again, on the yardstick episodes only: like for like
    for row, s in zip(rows, summaries.values()):
        row.update({c: s.get(c) for c in GAP_COLUMNS})
        if "policy_mean_travel_time_on_yardstick_episodes" in s:
            same.append({"policy": f"{row['policy']}, same {m} ep.",
                         "mean_travel_time": s["policy_mean_travel_time_on_yardstick_episodes"]})
    rows.extend(same)
    for label, key in (("user equilibrium (planner)", "ue_mean_travel_time"),
                       ("system optimum (planner)", "so_mean_travel_time")):
        rows.append({"policy": f"{label}, {m} ep.", "mean_travel_time": first[key]})
    return [*metric_names, *GAP_COLUMNS]
