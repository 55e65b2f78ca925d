"""Where the time of one compiled update goes: its sub-steps compiled and timed alone.

    python benchmarks/profile_update.py                       # both presets below
    python benchmarks/profile_update.py --preset peer         # MPE spread N=3, JaxMARL's config
    python benchmarks/profile_update.py --preset traffic1000  # traffic-grid-large, N=1,000, leed

Each sub-step of ``Trainer.update`` is jitted on its own, on the inputs the update itself
produces, and timed over repeats (``--reps``, median):

    rollout        num_steps policy forward passes + env steps (lax.scan)
    env only       the same rollout with random valid actions (no network)
    gae            advantages and targets
    shuffle        the per-epoch permutation and minibatch gather, x update_epochs
    fwd/bwd        value_and_grad of the loss on one minibatch, x epochs x minibatches
    expert part    the expert-loss share of that: demo sampling + its forward/backward
    optimiser      the per-agent clip + Adam step, x epochs x minibatches
    update         the whole compiled update
    chunk (host)   one chunk of updates through the host loop's steps: the compiled chunk,
                   device_get of the metrics, the metrics record (per update)
    checkpoint     one synchronous save of the whole state (per save)

The sum of the parts against the whole update shows what fusion buys back or what glue costs.
Sub-step timings are upper bounds: compiled alone, each pays its own dispatch and cannot fuse
with its neighbours. Prints one JSON object last.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import leed_jax
from leed_jax.config import TrainConfig
from leed_jax.po.gae import gae
from leed_jax.po.loop import chunk_record
from leed_jax.po.trainer import make_train

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from env_throughput import make_rollout

PRESETS = {
    # JaxMARL's ippo_ff_mpe.yaml: 16 envs x 128 steps, 4 epochs x 4 minibatches.
    "peer": {"scenario": "mpe-spread", "algo": "ippo", "num_agents": 3, "num_envs": 16, "num_steps": 128,
                 "update_epochs": 4, "num_minibatches": 4, "lr": 2.5e-4, "anneal_lr": True},
    # train_throughput.py's N = 1,000 row: 4 envs x 32 steps, 4 epochs x 1 minibatch.
    "traffic1000": {"scenario": "traffic-grid-large", "algo": "leed", "num_agents": 1000, "num_envs": 4,
                        "num_steps": 32, "update_epochs": 4, "num_minibatches": 1, "expert_batch_size": 32},
}


def _timeit(fn, *args, reps: int) -> float:
    """Median seconds of ``fn(*args)`` (compiled before timing)."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def demos_for(env, algo):
    if algo not in ("leed", "bc"):
        return None
    out = pathlib.Path(tempfile.mkdtemp()) / "demos"
    path = leed_jax.generate_demos(env, source="planner", out=out, progress=False)
    return jax.tree_util.tree_map(jnp.asarray, leed_jax.load_demos(path, env))


def profile(preset: dict, reps: int) -> dict:
    cfg = TrainConfig(total_steps=10**9, log_every=4, progress=False, **preset)
    env = leed_jax.make_env(cfg.scenario, num_agents=cfg.num_agents)
    demos = demos_for(env, cfg.algo)
    tr = make_train(cfg, env, demos)
    state = jax.jit(tr.init)(jax.random.PRNGKey(0))
    n_mb = cfg.update_epochs * cfg.num_minibatches
    t: dict[str, float] = {}

    # -- the whole update, and a chunk through the host loop's steps
    update = jax.jit(tr.update)
    t["update"] = _timeit(update, state, demos, reps=reps)
    chunk = jax.jit(tr.chunk)
    state_c, m = chunk(state, demos)
    jax.block_until_ready(m)
    host = []
    for _ in range(reps):
        t0 = time.perf_counter()
        state_c, m = chunk(state_c, demos)
        m = jax.device_get(m)
        m1 = jax.tree_util.tree_map(lambda x: np.asarray(x)[None], m)
        chunk_record(cfg, m1, int(state_c.update), 0.0)
        host.append(time.perf_counter() - t0)
    t["chunk_per_update (host loop)"] = statistics.median(host) / cfg.chunk_updates
    from leed_jax.io.checkpoint import Checkpointer

    with tempfile.TemporaryDirectory() as d:
        ck = Checkpointer(d)
        saves = []
        for i in range(max(2, reps // 2)):
            t0 = time.perf_counter()
            ck.save(i + 1, state_c, {"update": i + 1})
            saves.append(time.perf_counter() - t0)
        ck.close()
    t["checkpoint_save"] = statistics.median(saves)

    # -- rollout and env only
    k = jax.random.PRNGKey(1)
    collect = jax.jit(tr.collect)
    t["rollout"] = _timeit(collect, state, reps=reps)
    env_only = make_rollout(tr.env, cfg.num_envs, cfg.num_steps)
    t["env_only"] = _timeit(env_only, k, reps=reps)
    _carry, ro, last_value = collect(state)
    g = jax.jit(lambda r, v, d, lv: gae(r, v, d, lv, cfg.gamma, cfg.gae_lambda))
    tt = ro.transition
    t["gae"] = _timeit(g, tt.reward, ro.value, tt.done, last_value, reps=reps)

    # -- minibatch pieces, built as the update builds them
    data = jax.jit(tr.batch)(ro, last_value)
    demo_return = None if demos is None else demos.agent_return.astype(jnp.float32)
    weight = jax.jit(tr.expert_weights)(state, demo_return)
    shuffle = jax.jit(tr.shuffle)
    t["shuffle (x epochs)"] = _timeit(shuffle, data, k, reps=reps) * cfg.update_epochs
    mb = jax.tree_util.tree_map(lambda x: x[0], shuffle(data, k))
    demo = jax.jit(tr.sample_demo)(k, demos) if tr.use_expert else None
    grad = jax.jit(jax.value_and_grad(tr.loss, has_aux=True))
    t["fwd/bwd (x minibatches)"] = _timeit(grad, state.params, mb, demo, weight, reps=reps) * n_mb
    if tr.use_expert:
        ippo = make_train(cfg.replace(algo="ippo"), env)
        no_expert = jax.jit(jax.value_and_grad(ippo.loss, has_aux=True))
        base = _timeit(no_expert, state.params, mb, None, weight, reps=reps) * n_mb
        t["  of which expert: demo sampling"] = _timeit(
            jax.jit(tr.sample_demo), k, demos, reps=reps) * n_mb
        t["  of which expert: fwd/bwd"] = t["fwd/bwd (x minibatches)"] - base
    (_, _), grads = grad(state.params, mb, demo, weight)
    opt = jax.jit(lambda gr, s, p: optax.apply_updates(p, tr.optimizer.update(gr, s, p)[0]))
    t["optimiser (x minibatches)"] = _timeit(opt, grads, state.opt_state, state.params,
                                             reps=reps) * n_mb
    parts = [v for name, v in t.items() if name in (
        "rollout", "gae", "shuffle (x epochs)", "fwd/bwd (x minibatches)",
        "optimiser (x minibatches)")]
    if tr.use_expert:
        parts.append(t["  of which expert: demo sampling"])
    t["sum of parts"] = sum(parts)
    return {"config": preset, "seconds": {k: round(v, 6) for k, v in t.items()},
            "share_of_update": {k: round(v / t["update"], 3) for k, v in t.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="peer,traffic1000", help=",".join(PRESETS))
    p.add_argument("--reps", type=int, default=7)
    args = p.parse_args()
    out = {"load_avg": os.getloadavg(), "device": jax.devices()[0].device_kind}
    for name in args.preset.split(","):
        r = profile(PRESETS[name], args.reps)
        out[name] = r
        print(f"# {name}: update {r['seconds']['update'] * 1e3:.1f} ms", flush=True)
        for k, v in r["seconds"].items():
            print(f"#   {k:32s} {v * 1e3:9.2f} ms  {r['share_of_update'][k]:6.1%}", flush=True)
    out["load_avg_end"] = os.getloadavg()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
