"""The demo buffer: expert demonstrations per agent, on disk and in memory.

File format (schema version 1) — a directory::

    PATH/
      demos.npz        arrays (numpy .npz, uncompressed):
                         obs          float32 [N, M, D]  observation at each decision
                         action       int32   [N, M]     the expert's action
                         avail        bool    [N, M, A]  the action mask at that step
                         valid        bool    [N, M]     a real decision of that agent
                                                         (True entries come first in each row)
                         agent_return float32 [N]        the expert's return per agent
                                                         (mean over episodes)
      meta.json        metadata: schema_version, scenario (name, family, hash), spec
                       (num_agents, obs_dim, num_actions, horizon), source ("planner" | "llm")
                       and source_label, model, api_base (no credentials), template_hashes
                       ({"traffic/user.md": sha256, ...}), rounds, seed, episodes,
                       round_metrics and round_dg_reports (per round), metrics (the
                       expert's final metrics), per_agent_returns, dg_report (summary),
                       llm (request / cache counters), created, leed_jax_version
      dg_report.json   the full DG report of the final plan (leed_jax.dg.report)
      plan.txt         the final instruction text that was executed

Only decision steps go into the arrays (``Transition.decision``: the traffic env lets a
vehicle choose only at intersections), so ``M`` is the largest number of decisions of any
agent and shorter rows are padded (``valid`` False). No API key or secret is ever stored.

``load_demos(path, env)`` checks the buffer against the scenario and names every field that
differs; :func:`sample_demos` draws per-agent minibatches, pure and jit-able.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from leed_jax.dg.errors import DemoBufferError

SCHEMA_VERSION = 1
ARRAYS_FILE = "demos.npz"
META_FILE = "meta.json"
REPORT_FILE = "dg_report.json"
PLAN_FILE = "plan.txt"


class DemoBuffer(NamedTuple):
    """Per-agent expert demonstrations (see the module docstring for the shapes)."""

    obs: jax.Array | np.ndarray  # [N, M, D] float32
    action: jax.Array | np.ndarray  # [N, M] int32
    avail: jax.Array | np.ndarray  # [N, M, A] bool
    valid: jax.Array | np.ndarray  # [N, M] bool
    agent_return: jax.Array | np.ndarray  # [N] float32

    @property
    def num_agents(self) -> int:
        return int(self.obs.shape[0])

    def counts(self) -> np.ndarray:
        """Decisions per agent ``[N]``."""
        return np.asarray(self.valid).sum(axis=1)


def from_transitions(episodes: list, returns: list) -> DemoBuffer:
    """Decision steps of one or more executed episodes → :class:`DemoBuffer`.

    Args:
        episodes: ``leed_jax.types.Transition`` per episode, axes ``[T, N, ...]``.
        returns: per-episode agent returns ``[N]``; the buffer keeps their mean.
    """
    obs = np.concatenate([np.asarray(t.obs) for t in episodes])  # [T', N, D]
    act = np.concatenate([np.asarray(t.action) for t in episodes])  # [T', N]
    avail = np.concatenate([np.asarray(t.avail) for t in episodes])  # [T', N, A]
    dec = np.concatenate([np.asarray(t.decision) for t in episodes]).astype(bool)  # [T', N]
    count = dec.sum(axis=0)  # [N]
    m = max(1, int(count.max()))
    # Stable sort puts each agent's decision steps first, in time order.
    idx = np.argsort(~dec, axis=0, kind="stable")[:m]  # [M, N]
    take = lambda a: np.swapaxes(
        np.take_along_axis(a, idx.reshape(idx.shape + (1,) * (a.ndim - 2)), axis=0), 0, 1)
    valid = np.arange(m)[None, :] < count[:, None]  # [N, M]
    return DemoBuffer(
        obs=np.where(valid[..., None], take(obs), 0).astype(np.float32),
        action=np.where(valid, take(act), 0).astype(np.int32),
        avail=(take(avail) & valid[..., None]) | (~valid[..., None] & (np.arange(
            avail.shape[-1]) == 0)),
        valid=valid,
        agent_return=np.mean([np.asarray(r) for r in returns], axis=0).astype(np.float32),
    )


def _dir(path: str | Path) -> Path:
    p = Path(path)
    return p.parent if p.suffix in (".npz", ".json", ".txt") and p.name in (
        ARRAYS_FILE, META_FILE, REPORT_FILE, PLAN_FILE) else p


def save_demos(path: str | Path, buffer: DemoBuffer, meta: dict[str, Any],
               report: dict | None = None, plan_text: str | None = None) -> Path:
    """Write the buffer directory (created if needed); returns it. ``meta`` gets the
    schema version and the array shapes added."""
    out = _dir(path)
    out.mkdir(parents=True, exist_ok=True)
    arrays = {k: np.asarray(v) for k, v in buffer._asdict().items()}
    meta = dict(meta)
    meta["schema_version"] = SCHEMA_VERSION
    meta["arrays"] = array_summary(buffer)
    tmp = out / (ARRAYS_FILE + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(out / ARRAYS_FILE)
    (out / META_FILE).write_text(json.dumps(meta, indent=2, default=_json_default) + "\n")
    if report is not None:
        (out / REPORT_FILE).write_text(json.dumps(report, indent=1, default=_json_default) + "\n")
    if plan_text is not None:
        (out / PLAN_FILE).write_text(plan_text)
    return out


def array_summary(buffer: DemoBuffer) -> dict:
    n, m, d = np.shape(buffer.obs)
    return {"num_agents": int(n), "max_decisions": int(m), "obs_dim": int(d),
            "num_actions": int(np.shape(buffer.avail)[-1]),
            "decisions": int(np.asarray(buffer.valid).sum())}


def _json_default(o):
    if isinstance(o, (np.generic, jax.Array)):
        return np.asarray(o).tolist()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_demo_meta(path: str | Path) -> dict:
    """The buffer's ``meta.json`` as a dict."""
    file = _dir(path) / META_FILE
    if not file.is_file():
        raise DemoBufferError(f"demo buffer {_dir(path)}: no {META_FILE} (not a demo buffer, "
                              f"or written by something else); generate one with "
                              f"python -m leed_jax.demos")
    try:
        meta = json.loads(file.read_text())
    except ValueError as e:
        raise DemoBufferError(f"demo buffer {file}: not valid JSON ({e})") from None
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        raise DemoBufferError(f"demo buffer {file}: schema_version {version!r}, this leed_jax "
                              f"reads {SCHEMA_VERSION}; regenerate the demos")
    return meta


def load_demos(path: str | Path, env=None) -> DemoBuffer:
    """Read a demo buffer (numpy arrays). With ``env``, check that it fits: the number of
    agents, the observation size and the number of actions must match; every difference is
    named in one ``DemoBufferError`` (``check_fits``)."""
    root = _dir(path)
    meta = read_demo_meta(root)
    file = root / ARRAYS_FILE
    if not file.is_file():
        raise DemoBufferError(f"demo buffer {root}: {ARRAYS_FILE} is missing")
    try:
        with np.load(file) as z:
            arrays = {k: z[k] for k in DemoBuffer._fields}
    except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise DemoBufferError(f"demo buffer {file}: unreadable or incomplete ({e})") from None
    buf = DemoBuffer(**arrays)
    n, m, _d = buf.obs.shape
    shapes = {"action": (n, m), "avail": (n, m, buf.avail.shape[-1]), "valid": (n, m),
              "agent_return": (n,)}
    for k, shape in shapes.items():
        if getattr(buf, k).shape != shape:
            raise DemoBufferError(f"demo buffer {file}: {k} has shape "
                                  f"{getattr(buf, k).shape}, expected {shape}")
    if env is not None:
        check_fits(buf, env, meta, where=str(root))
    return buf


def check_fits(buf: DemoBuffer, env, meta: dict | None = None,
               where: str = "the demo buffer") -> None:
    """Raise ``DemoBufferError`` unless ``buf`` fits ``env``: the number of agents, the
    observation size and the number of actions (and, with ``meta``, the env family) must
    match; every difference is named in one line. The one fit check of a buffer, whether it
    was read from a file (``load_demos``) or handed to ``make_train``/``prepare``. A different
    scenario hash with matching sizes only warns (e.g. another demand seed)."""
    spec = env.spec
    have = {"num_agents": buf.obs.shape[0], "obs_dim": buf.obs.shape[2],
            "num_actions": buf.avail.shape[2]}
    want = {"num_agents": spec.num_agents, "obs_dim": spec.obs_dim,
            "num_actions": spec.num_actions}
    diffs = [f"{k} {have[k]} in the buffer vs {want[k]} in the scenario"
             for k in have if have[k] != want[k]]
    scen = (meta or {}).get("scenario", {})
    family = getattr(env, "family", None)
    if scen.get("family") and family and scen["family"] != family:
        diffs.insert(0, f"family {scen['family']!r} in the buffer vs {family!r}")
    if diffs:
        name = getattr(env, "name", "?")
        made_for = f" (scenario {scen.get('name')!r})" if meta is not None else ""
        raise DemoBufferError(
            f"{where}{made_for} does not fit scenario {name!r}: "
            + "; ".join(diffs) + "; regenerate it with python -m leed_jax.demos --scenario "
            + f"{name}")
    mine = getattr(getattr(env, "scenario", None), "hash", None)
    if mine and scen.get("hash") and scen["hash"] != mine:
        warnings.warn(f"{where} was made for scenario {scen.get('name')!r} with hash "
                      f"{scen['hash']}, not {mine}; its sizes fit, so it is used", stacklevel=3)


def sample_demos(key: jax.Array, buffer: DemoBuffer, batch_size: int):
    """Draw ``batch_size`` demonstrations per agent, uniformly among that agent's decisions.

    Pure and jit-able (``batch_size`` static). Returns ``obs [N, B, D]``, ``action [N, B]``,
    ``avail [N, B, A]``, ``weight [N, B]`` (float32; 0 for an agent without demonstrations,
    whose entries are then padding).
    """
    valid = jnp.asarray(buffer.valid)  # [N, M]
    n, _m = valid.shape
    count = valid.sum(axis=1)  # [N]
    # Valid entries first in each row (robust to buffers built by hand in another order).
    order = jnp.argsort(~valid, axis=1, stable=True)  # [N, M]
    u = jax.random.uniform(key, (n, batch_size))
    pick = jnp.minimum((u * count[:, None]).astype(jnp.int32), jnp.maximum(count - 1, 0)[:, None])
    idx = jnp.take_along_axis(order, pick, axis=1)  # [N, B]
    obs = jnp.take_along_axis(jnp.asarray(buffer.obs), idx[..., None], axis=1)
    action = jnp.take_along_axis(jnp.asarray(buffer.action), idx, axis=1)
    avail = jnp.take_along_axis(jnp.asarray(buffer.avail), idx[..., None], axis=1)
    weight = jnp.broadcast_to((count > 0)[:, None], (n, batch_size)).astype(jnp.float32)
    return obs, action, avail, weight
