"""Training throughput against the env-only ceiling, per number of agents.

    python benchmarks/train_throughput.py [--agents 10,100,1000,10000] [--algo leed]
        [--agent-slots 4096] [--num-steps 32] [--mesh-data 1]

For each N on the traffic env (scenario traffic-grid-large, N overridden) and for MPE simple
spread (N = 3, through the jaxmarl adapter): the compiled training update (rollout + GAE +
epochs of minibatch PPO, plus the expert loss for leed) is timed against a random-action
rollout of the same batch (num_envs × num_steps, the same env) — the ceiling that training
cannot beat. num_envs = max(1, agent_slots // N) keeps the agent-steps per update similar
across N. Prints one JSON list last: num_agents, num_envs, agent_steps_per_s,
env_only_agent_steps_per_s, ratio, compile_s, peak_rss_mb, devices.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import resource
import sys
import time

import jax

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from env_throughput import make_rollout

import leed_jax
from leed_jax.config import TrainConfig
from leed_jax.envs.wrappers import AutoResetWrapper
from leed_jax.po.trainer import make_train, seed_keys


def _rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _demos_for(env, algo):
    if algo not in ("leed", "bc"):
        return None

    import tempfile

    out = pathlib.Path(tempfile.mkdtemp()) / "demos"
    path = leed_jax.generate_demos(env, source="planner", out=out, progress=False)
    return leed_jax.load_demos(path, env)


def bench(scenario: str, n: int, algo: str, slots: int, num_steps: int, reps: int, mesh_data: int) -> dict:
    env = leed_jax.make_env(scenario, num_agents=n)
    num_envs = max(mesh_data, (max(1, slots // n) // mesh_data) * mesh_data)
    cfg = TrainConfig(
        scenario=scenario, algo=algo, num_agents=n, num_envs=num_envs, num_steps=num_steps,
        num_minibatches=1, update_epochs=4, total_steps=num_envs * num_steps * 1000,
        log_every=1, progress=False, expert_batch_size=32,
    )
    demos = _demos_for(env, algo)
    trainer = make_train(cfg, env, demos)
    demo_arrays = None if demos is None else jax.tree_util.tree_map(jax.numpy.asarray, demos)
    state = jax.jit(jax.vmap(trainer.init))(seed_keys(cfg))
    chunk = jax.jit(jax.vmap(trainer.chunk, in_axes=(0, None)), donate_argnums=0)
    if mesh_data > 1:
        from leed_jax.parallel import make_mesh, train_state_shardings

        mesh = make_mesh(data=mesh_data)
        state = jax.device_put(state, train_state_shardings(state, mesh, n))
    t0 = time.perf_counter()
    compiled = chunk.lower(state, demo_arrays).compile()
    compile_s = time.perf_counter() - t0
    state, m = compiled(state, demo_arrays)  # warm-up
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for _ in range(reps):
        state, m = compiled(state, demo_arrays)
    jax.block_until_ready(m)
    train_s = (time.perf_counter() - t0) / reps
    train_agent_sps = cfg.batch_steps * n / train_s

    rollout = make_rollout(AutoResetWrapper(env), num_envs, num_steps)
    rollout(jax.random.PRNGKey(0)).block_until_ready()
    t0 = time.perf_counter()
    for i in range(reps):
        rollout(jax.random.PRNGKey(i + 1)).block_until_ready()
    env_s = (time.perf_counter() - t0) / reps
    env_agent_sps = num_envs * num_steps * n / env_s
    return {
        "scenario": scenario,
        "algo": algo,
        "num_agents": n,
        "num_envs": num_envs,
        "num_steps": num_steps,
        "agent_steps_per_s": round(train_agent_sps, 1),
        "env_only_agent_steps_per_s": round(env_agent_sps, 1),
        "ratio": round(train_agent_sps / env_agent_sps, 4),
        "compile_s": round(compile_s, 2),
        "peak_rss_mb": _rss_mb(),
        "devices": f"{mesh_data} x {jax.devices()[0].device_kind}",
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenario", default="traffic-grid-large")
    p.add_argument("--agents", default="10,100,1000,10000")
    p.add_argument("--algo", default="leed")
    p.add_argument("--agent-slots", type=int, default=4096)
    p.add_argument("--num-steps", type=int, default=32)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--mesh-data", type=int, default=1, help="devices on the data axis")
    p.add_argument("--no-mpe", action="store_true")
    args = p.parse_args()
    results = []
    runs = [(args.scenario, int(n)) for n in args.agents.split(",")]
    if not args.no_mpe:
        runs.append(("mpe-spread", 3))
    for scenario, n in runs:
        r = bench(scenario, n, args.algo, args.agent_slots, args.num_steps, args.reps, args.mesh_data)
        print(
            f"# {scenario} N={n}: train {r['agent_steps_per_s']:.3g} agent-steps/s, env-only "
            f"{r['env_only_agent_steps_per_s']:.3g} (ratio {r['ratio']}), compile {r['compile_s']} s, "
            f"rss {r['peak_rss_mb']} MB",
            flush=True,
        )
        results.append(r)
    base = next((r for r in results if r["scenario"] == args.scenario), None)
    for r in results:
        if base and r["scenario"] == args.scenario:
            r["per_agent_vs_first"] = round(r["agent_steps_per_s"] / base["agent_steps_per_s"], 3)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
