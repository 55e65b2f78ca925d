"""Training throughput against the bare network arithmetic of an update, per number of agents.

    python benchmarks/train_throughput.py [--agents 10,100,1000,10000] [--algo leed]
        [--agent-slots 4096[,65536,...]] [--num-steps 32] [--reps 3] [--no-ippo] [--no-mpe] [--mesh-data 1]

For each N on the traffic env (scenario traffic-grid-large, N overridden) and for MPE simple
spread (N = 3, through the jaxmarl adapter), three programs are compiled and timed alternately
in one process (median of ``--reps``):

* the training update (rollout + GAE + 4 epochs of PPO, plus the expert loss for leed);
* the bare network arithmetic of that update, compiled alone: the same per-agent actor and
  critic forward passes of the rollout (num_steps steps of [E, N, D]) and the same forward and
  backward passes of every minibatch (actor on the minibatch and, for leed, on the demo rows;
  critic on the minibatch), with the parameters moved by each gradient so nothing is hoisted
  out of the loop — no env, no sampling, no GAE, no loss terms beyond a log-softmax, no
  optimiser state. ``ratio`` = update time / bare time (target <= 1.3 on traffic);
* for leed, the IPPO update on the same batch: ``leed_vs_ippo`` = LEED's update time / IPPO's
  (target <= 1.15 at N = 1,000).

num_envs = max(1, agent_slots // N) keeps the agent-steps per update similar across N; a
comma-separated ``--agent-slots`` times each N at several batch sizes (an accelerator needs
far larger batches than the CPU's 4,096 to be busy), with one demo buffer per N. The
env-only throughput (random actions, same batch) is reported for information. Prints one JSON
list last (with the load average: figures from a shared machine are noisy, ratios less so).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import statistics
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from env_throughput import make_rollout

import leed_jax
from leed_jax.config import TrainConfig
from leed_jax.envs.wrappers import AutoResetWrapper
from leed_jax.po.trainer import make_train, seed_keys


def _rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


_DEMOS: dict = {}


def _demos_for(env, algo):
    """The planner's demo buffer for ``env`` (made once per scenario and N in a process)."""
    if algo not in ("leed", "bc"):
        return None
    key = (env.name, env.spec.num_agents)
    if key not in _DEMOS:
        _DEMOS[key] = _make_demos(env)
    return _DEMOS[key]


def _make_demos(env):
    import tempfile

    out = pathlib.Path(tempfile.mkdtemp()) / "demos"
    path = leed_jax.generate_demos(env, source="planner", out=out, progress=False)
    return leed_jax.load_demos(path, env)


def bare_arithmetic(trainer, demos):
    """The network arithmetic of one update, alone (see the module docstring)."""
    c, policy = trainer.config, trainer.policy
    spec = trainer.env.spec
    n, d, a = spec.num_agents, spec.obs_dim, spec.num_actions
    e, t = c.num_envs, c.num_steps
    u = c.update_epochs * c.num_minibatches
    demo_rows = 0
    if trainer.use_expert:
        demo_rows = demos.obs.shape[1] if trainer.full_demos else c.expert_batch_size
    avail = jnp.ones((a,), bool)

    def nets_loss(p, obs, demo_obs):
        logits = policy.logits(p, obs, jnp.broadcast_to(avail, obs.shape[:-1] + (a,)))
        value = policy.value(p, obs)
        out = jax.nn.log_softmax(logits).mean() + jnp.square(value).mean()
        if demo_rows:
            dl = policy.logits(p, demo_obs, jnp.broadcast_to(avail, demo_obs.shape[:-1] + (a,)))
            out += jax.nn.log_softmax(dl).mean()
        return out

    def run(params, roll_obs, mb_obs, demo_obs):
        def fwd(acc, o):
            logits = policy.logits(params, o, jnp.broadcast_to(avail, o.shape[:-1] + (a,)))
            return acc + logits.sum() + policy.value(params, o).sum(), None

        acc, _ = jax.lax.scan(fwd, jnp.zeros(()), roll_obs)
        grad = jax.grad(nets_loss)

        def step(p, xs):
            g = grad(p, *xs)
            return jax.tree_util.tree_map(lambda w, gw: w - 1e-6 * gw, p, g), None

        params, _ = jax.lax.scan(step, params, (mb_obs, demo_obs))
        return acc, params

    # Inputs drawn once, outside the timed program.
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    inputs = (
        jax.random.normal(k1, (t, e, n, d)),  # [T, E, N, D] rollout observations
        jax.random.normal(k2, (u, c.minibatch_size, n, d)),  # [U, B, N, D] minibatches
        jax.random.normal(k3, (u, max(demo_rows, 1), n, d)),  # [U, Bd, N, D] demo rows
    )
    program = jax.jit(run)
    return lambda params: program(params, *inputs)


def bench(scenario: str, n: int, algo: str, slots: int, num_steps: int, reps: int,
          mesh_data: int, with_ippo: bool) -> dict:
    env = leed_jax.make_env(scenario, num_agents=n)
    num_envs = max(mesh_data, (max(1, slots // n) // mesh_data) * mesh_data)
    cfg = TrainConfig(
        scenario=scenario, algo=algo, num_agents=n, num_envs=num_envs, num_steps=num_steps,
        num_minibatches=1, update_epochs=4, total_steps=num_envs * num_steps * 1000,
        log_every=1, progress=False, expert_batch_size=32,
    )
    demos = _demos_for(env, algo)
    demo_arrays = None if demos is None else jax.tree_util.tree_map(jax.numpy.asarray, demos)
    trainers = {algo: make_train(cfg, env, demos)}
    if with_ippo and algo in ("leed", "bc"):
        trainers["ippo"] = make_train(cfg.replace(algo="ippo"), env)
    programs = {}
    compile_s = None
    for name, trainer in trainers.items():
        d = demo_arrays if trainer.use_expert else None
        state = jax.jit(jax.vmap(trainer.init))(seed_keys(cfg))
        chunk = jax.jit(jax.vmap(trainer.chunk, in_axes=(0, None)), donate_argnums=0)
        if mesh_data > 1:
            from leed_jax.parallel import make_mesh, train_state_shardings

            mesh = make_mesh(data=mesh_data)
            state = jax.device_put(state, train_state_shardings(state, mesh, n))
        t0 = time.perf_counter()
        compiled = chunk.lower(state, d).compile()
        if compile_s is None:
            compile_s = time.perf_counter() - t0
        programs[name] = [compiled, state, d]
    bare = bare_arithmetic(trainers[algo], demos)
    params0 = jax.tree_util.tree_map(lambda x: x[0], programs[algo][1].params)
    rollout = make_rollout(AutoResetWrapper(env), num_envs, num_steps)

    def run(name):
        if name == "bare":
            return bare(params0)
        if name == "env_only":
            return rollout(jax.random.PRNGKey(1))
        prog = programs[name]
        prog[1], m = prog[0](prog[1], prog[2])
        return m

    names = [*programs, "bare", "env_only"]
    times = {k: [] for k in names}
    for k in names:  # warm-up
        jax.block_until_ready(run(k))
    load = os.getloadavg()
    for _ in range(reps):
        for k in names:
            t0 = time.perf_counter()
            jax.block_until_ready(run(k))
            times[k].append(time.perf_counter() - t0)
    sec = {k: statistics.median(v) for k, v in times.items()}
    agent_steps = cfg.batch_steps * n
    r = {
        "scenario": scenario,
        "algo": algo,
        "num_agents": n,
        "num_envs": num_envs,
        "agent_slots": slots,
        "num_steps": num_steps,
        "update_s": round(sec[algo], 4),
        "agent_steps_per_s": round(agent_steps / sec[algo], 1),
        "bare_network_s": round(sec["bare"], 4),
        "ratio": round(sec[algo] / sec["bare"], 3),
        "env_only_agent_steps_per_s": round(agent_steps / sec["env_only"], 1),
        "compile_s": round(compile_s, 2),
        "peak_rss_mb": _rss_mb(),
        "devices": f"{mesh_data} x {jax.devices()[0].device_kind}",
        "load_avg": [round(x, 2) for x in load],
    }
    if "ippo" in sec:
        r["ippo_update_s"] = round(sec["ippo"], 4)
        r["leed_vs_ippo"] = round(sec[algo] / sec["ippo"], 3)
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenario", default="traffic-grid-large")
    p.add_argument("--agents", default="10,100,1000,10000")
    p.add_argument("--algo", default="leed")
    p.add_argument("--agent-slots", default="4096", help="comma-separated: agents x envs per update")
    p.add_argument("--num-steps", type=int, default=32)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--mesh-data", type=int, default=1, help="devices on the data axis")
    p.add_argument("--no-mpe", action="store_true")
    p.add_argument("--no-ippo", action="store_true", help="skip the IPPO update beside leed")
    args = p.parse_args()
    results = []
    slots = [int(x) for x in args.agent_slots.split(",")]
    runs = [(args.scenario, int(n), k) for n in args.agents.split(",") for k in slots]
    if not args.no_mpe:
        runs.append(("mpe-spread", 3, slots[0]))
    for scenario, n, k in runs:
        r = bench(scenario, n, args.algo, k, args.num_steps, args.reps, args.mesh_data,
                  not args.no_ippo)
        print(
            f"# {scenario} N={n} envs={r['num_envs']}: train {r['agent_steps_per_s']:.3g} agent-steps/s, update "
            f"{r['update_s']:.3g} s = {r['ratio']}x bare nets ({r['bare_network_s']:.3g} s), "
            f"leed/ippo {r.get('leed_vs_ippo')}, compile {r['compile_s']} s, "
            f"rss {r['peak_rss_mb']} MB, load {r['load_avg'][0]}",
            flush=True,
        )
        results.append(r)
    base = next((r for r in results if r["scenario"] == args.scenario), None)
    for r in results:
        if base and r["scenario"] == args.scenario and r["agent_slots"] == slots[0]:
            r["per_agent_vs_first"] = round(r["agent_steps_per_s"] / base["agent_steps_per_s"], 3)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
