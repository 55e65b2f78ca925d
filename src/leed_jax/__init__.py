"""leed_jax: LEED (LLM-Empowered Expert Demonstrations) for multi-agent RL on JAX.

Public API (imported lazily so that ``import leed_jax`` stays fast and never pulls in
litellm or jaxmarl unless they are used):

    make_env(name_or_path, **overrides)      build an env from a scenario (envs/*.toml)
    list_scenarios()                         names of the bundled scenarios
    load_scenario(name_or_path, **overrides) the resolved Scenario (typed)
    generate_demos(...)                      DG stage: expert demonstrations → demo buffer
    load_demos(path, env=None)               read (and check) a demo buffer
    train(config)                            PO stage: LEED / IPPO / MAPPO / BC
    prepare(config)                          a run assembled once (run dir, env, demos, mesh)
    TrainConfig                              the typed config shared by CLI, TOML and library
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "make_env": "leed_jax.envs.registry",
    "list_scenarios": "leed_jax.envs.registry",
    "load_scenario": "leed_jax.envs.registry",
    "Scenario": "leed_jax.envs.registry",
    "EnvSpec": "leed_jax.envs.base",
    "ScenarioError": "leed_jax.envs.base",
    "AutoResetWrapper": "leed_jax.envs.wrappers",
    "Transition": "leed_jax.types",
    "generate_demos": "leed_jax.dg.generate",
    "DemoConfig": "leed_jax.dg.generate",
    "DemoBuffer": "leed_jax.dg.buffer",
    "load_demos": "leed_jax.dg.buffer",
    "save_demos": "leed_jax.dg.buffer",
    "sample_demos": "leed_jax.dg.buffer",
    "train": "leed_jax.po.loop",
    "prepare": "leed_jax.po.prepare",
    "TrainConfig": "leed_jax.config",
}

__all__ = [*sorted(_EXPORTS), "__version__"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'leed_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
