"""Scenario files (``envs/*.toml``) → environments.

A scenario is a TOML file with ``name``, ``family`` ("traffic", "mpe", "smax", ...),
``description``, ``prompt`` (the prompt-template set in ``prompts/``) and family tables:
traffic has ``[network]``, ``[demand]`` (``resample``: draw each episode's vehicles anew,
default true for random demand) and ``[env]``; JaxMARL envs have ``[jaxmarl]``.
Overrides are flat keywords matched against the keys of those tables
(``make_env("traffic-grid", num_agents=1000, horizon=80)``); ``num_agents`` works for every
scenario.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib.util
import json
import os
import tomllib
from pathlib import Path
from typing import Any

from leed_jax.envs.base import ScenarioError

_TABLES = {"traffic": ("network", "demand", "env"), "jaxmarl": ("jaxmarl",)}
# Overrides checked for range on top of their type.
_POSITIVE = {"num_agents", "horizon", "rows", "cols", "departure_window", "dt", "link_length", "speed", "lanes"}


def scenario_dir() -> Path:
    """Where bundled scenarios live: ``$LEED_SCENARIO_DIR``, else ``envs/`` at the repo root."""
    env = os.environ.get("LEED_SCENARIO_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "envs"


def list_scenarios() -> list[str]:
    """Names of the bundled scenarios (the ``*.toml`` files in :func:`scenario_dir`)."""
    return sorted(p.stem for p in scenario_dir().glob("*.toml"))


@dataclasses.dataclass(frozen=True, eq=False)
class Scenario:
    """A resolved scenario: the TOML content with overrides applied."""

    name: str
    family: str
    description: str
    prompt: str
    path: Path
    tables: dict[str, dict[str, Any]]

    @property
    def hash(self) -> str:
        """sha256 (16 hex) of the resolved content: changes when any parameter changes."""
        body = {"family": self.family, "tables": self.tables}
        return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]

    @property
    def num_agents(self) -> int:
        table = self.tables.get("demand") or self.tables.get("jaxmarl") or {}
        return int(table.get("num_agents", 0))


def load_scenario(name_or_path: str | os.PathLike, **overrides) -> Scenario:
    """Read a scenario by bundled name or TOML path and apply flat ``overrides``."""
    path = _resolve(name_or_path)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: invalid TOML ({exc})") from None
    for key in ("name", "family"):
        if key not in raw:
            raise ScenarioError(f"{path}: missing top-level key {key!r}")
    family = raw["family"]
    table_names = _TABLES["traffic"] if family == "traffic" else _TABLES["jaxmarl"]
    tables = {t: copy.deepcopy(raw.get(t, {})) for t in table_names}
    for t in table_names:
        if not isinstance(tables[t], dict):
            raise ScenarioError(f"{path}: [{t}] must be a table")
    for key, value in overrides.items():
        if value is None:
            continue
        _apply_override(tables, key, value, path)
    return Scenario(
        name=raw["name"],
        family=family,
        description=raw.get("description", ""),
        prompt=raw.get("prompt", family),
        path=path,
        tables=tables,
    )


def make_env(name_or_path: str | os.PathLike, **overrides):
    """Build the env of a scenario (bundled name or TOML path), with flat overrides.

    >>> env = make_env("traffic-grid", num_agents=1000)
    >>> env.spec.num_agents
    1000
    """
    scenario = load_scenario(name_or_path, **overrides)
    env = build_env(scenario)
    env.scenario = scenario
    return env


def build_env(scenario: Scenario):
    if scenario.family == "traffic":
        return _build_traffic(scenario)
    from leed_jax.envs.jaxmarl_adapter import JaxMARLEnv

    kw = dict(scenario.tables["jaxmarl"])
    env_name = kw.pop("env_name", None)
    if not env_name:
        raise ScenarioError(f"{scenario.path}: [jaxmarl] needs env_name")
    return JaxMARLEnv(env_name, name=scenario.name, **kw)


def _build_traffic(sc: Scenario):
    from leed_jax.envs import demand as dem
    from leed_jax.envs import network as netmod
    from leed_jax.envs.traffic import TrafficEnv, TrafficParams

    net_t, dem_t, env_t = sc.tables["network"], sc.tables["demand"], sc.tables["env"]
    kind = net_t.get("kind", "grid")
    opts = {k: v for k, v in net_t.items() if k not in ("kind", "file")}
    try:
        if kind == "grid":
            net = netmod.grid_network(**opts)
        elif kind == "tntp":
            net = netmod.read_tntp(_data_path(net_t.get("file"), sc.path), **opts)
        elif kind == "sumo":
            net = netmod.read_sumo(_data_path(net_t.get("file"), sc.path), **opts)
        else:
            raise ScenarioError(f"{sc.path}: [network] kind {kind!r} is not one of grid, tntp, sumo")
    except TypeError as exc:
        raise ScenarioError(f"{sc.path}: [network] {exc}") from None
    dkind = dem_t.get("kind", "random")
    model = None
    resample = bool(dem_t.get("resample", dkind == "random"))
    if dkind == "random":
        model = dem.RandomDemandModel.build(
            net,
            int(dem_t.get("num_agents", 50)),
            int(dem_t.get("departure_window", 20)),
            seed=int(dem_t.get("seed", 0)),
            hotspots=int(dem_t.get("hotspots", 0)),
        )
        d = model.draw(int(dem_t.get("seed", 0)))
    elif dkind == "file":
        if resample:
            raise ScenarioError(f"{sc.path}: [demand] resample = true needs kind = \"random\"")
        d = dem.read_demand(net, _data_path(dem_t.get("file"), sc.path))
        if "num_agents" in dem_t and int(dem_t["num_agents"]) != d.num_agents:
            n = int(dem_t["num_agents"])
            if n > d.num_agents:
                raise ScenarioError(f"num_agents={n} but the demand file has only {d.num_agents} vehicles")
            d = dem.Demand(d.origin[:n], d.destination[:n], d.departure[:n])
    elif dkind == "tntp":  # a TNTP trips matrix → vehicles (leed_jax.envs.tntp)
        from leed_jax.envs.tntp import scenario_demand

        if kind != "tntp":
            raise ScenarioError(f"{sc.path}: [demand] kind 'tntp' needs [network] kind 'tntp'")
        d = scenario_demand(_data_path(net_t.get("file"), sc.path), dem_t, sc.path, opts)
    else:
        raise ScenarioError(f"{sc.path}: [demand] kind {dkind!r} is not one of random, file, tntp")
    try:
        params = TrafficParams(**env_t)
    except TypeError as exc:
        raise ScenarioError(f"{sc.path}: [env] {exc}") from None
    return TrafficEnv(net, d, params, name=sc.name, demand_model=model, resample=resample)


def _resolve(name_or_path) -> Path:
    text = str(name_or_path)
    path = Path(text)
    if path.suffix == ".toml" or os.sep in text:
        if not path.is_file():
            raise ScenarioError(f"scenario file not found: {path}")
        return path
    candidate = scenario_dir() / f"{text}.toml"
    if candidate.is_file():
        return candidate
    available = ", ".join(list_scenarios()) or f"none in {scenario_dir()}"
    raise ScenarioError(f"unknown scenario {text!r}; available: {available}")


def _data_path(file: str | None, scenario_path: Path) -> Path:
    """Resolve a data file: ``sumo:`` prefix = inside the eclipse-sumo wheel, otherwise
    relative to the scenario file."""
    if not file:
        raise ScenarioError(f"{scenario_path}: a 'file' entry is needed for this kind")
    if file.startswith("sumo:"):
        spec = importlib.util.find_spec("sumo")
        if spec is None or not spec.submodule_search_locations:
            raise ScenarioError(
                f"{scenario_path}: needs the SUMO networks of the 'sumo' extra: pip install 'leed_jax[sumo]'"
            )
        return Path(list(spec.submodule_search_locations)[0]) / file.removeprefix("sumo:").lstrip("/")
    p = Path(file)
    return p if p.is_absolute() else scenario_path.parent / p


def _apply_override(tables: dict, key: str, value, path: Path) -> None:
    hits = [t for t in tables if key in tables[t]]
    if not hits:
        if key == "num_agents":  # every scenario takes it, even when its file omits it
            hits = ["demand" if "demand" in tables else next(iter(tables))]
        else:
            known = sorted({k for t in tables.values() for k in t} | {"num_agents"})
            raise ScenarioError(f"unknown override {key!r} for {path.stem}; known: {', '.join(known)}")
    table = hits[0]
    old = tables[table].get(key)
    if old is not None and not isinstance(old, str):
        value = _coerce(key, value, type(old))
    if key in _POSITIVE and isinstance(value, (int, float)) and value <= 0:
        raise ScenarioError(f"override {key}={value!r} must be > 0")
    tables[table][key] = value


def _coerce(key, value, typ):
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        raise ScenarioError(f"override {key}={value!r} must be true or false")
    if typ is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ScenarioError(f"override {key}={value!r} must be an integer")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ScenarioError(f"override {key}={value!r} must be an integer") from None
    if typ is float:
        if isinstance(value, bool):
            raise ScenarioError(f"override {key}={value!r} must be a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ScenarioError(f"override {key}={value!r} must be a number") from None
    return value
