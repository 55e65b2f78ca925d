"""Env-only throughput: random valid actions under jit + vmap over parallel envs.

    python benchmarks/env_throughput.py [--scenario traffic-grid-large] [--agents 10,100,1000,10000]
        [--models queue,step] [--no-anaheim]

Prints one JSON list last: per (link model, N), num_agents, num_envs, env_steps_per_s,
agent_steps_per_s, compile_s, peak_rss_mb, load average. The batch keeps about 2^15 agent
slots per step (num_envs = max(1, 32768 // N)), so per-agent figures compare like with like.
The link models run alternately in one process (queue = the continuous-time spatial queue,
step = the old step-rounded BPR model), so their ratio is meaningful on a shared machine.
A last row steps the city-scale ``traffic-anaheim`` scenario (its whole OD matrix, 104,694
vehicles, one env, scenario default model) when its TNTP files are present
(``../shared/data/tntp/``), else says why it is missing.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import jax
import jax.numpy as jnp

import leed_jax


def make_rollout(env, num_envs: int, steps: int):
    def policy_step(carry, key):
        states = carry
        avail = jax.vmap(env.avail_actions)(states)  # [E, N, A]
        k_act, k_env = jax.random.split(key)
        actions = jax.random.categorical(k_act, jnp.where(avail, 0.0, -1e9))
        _, states, reward, _, _ = jax.vmap(env.step)(jax.random.split(k_env, num_envs), states, actions)
        return states, reward.sum()

    @jax.jit
    def rollout(key):
        _, states = jax.vmap(env.reset)(jax.random.split(key, num_envs))
        states, rewards = jax.lax.scan(policy_step, states, jax.random.split(key, steps))
        return rewards.sum()

    return rollout


def bench(scenario: str, n: int, steps: int, agent_slots: int, model: str | None = None) -> dict:
    import os

    overrides = {"num_agents": n}
    if model:
        overrides["link_model"] = model
    env = leed_jax.envs.wrappers.AutoResetWrapper(leed_jax.make_env(scenario, **overrides))
    num_envs = max(1, agent_slots // n)
    rollout = make_rollout(env, num_envs, steps)
    t0 = time.perf_counter()
    rollout(jax.random.PRNGKey(0)).block_until_ready()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    reps = 3
    for i in range(reps):
        rollout(jax.random.PRNGKey(i + 1)).block_until_ready()
    run_s = (time.perf_counter() - t0) / reps
    env_steps = num_envs * steps / run_s
    return {
        "scenario": scenario,
        "link_model": model or "default",
        "moves_per_step": getattr(env, "moves", None),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "num_agents": n,
        "num_envs": num_envs,
        "steps": steps,
        "env_steps_per_s": round(env_steps, 1),
        "agent_steps_per_s": round(env_steps * n, 1),
        "compile_s": round(compile_s - run_s, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "device": jax.devices()[0].device_kind,
    }


def main() -> None:
    import leed_jax.envs.wrappers  # noqa: F401  (attribute access above)

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenario", default="traffic-grid-large")
    p.add_argument("--agents", default="10,100,1000,10000")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--agent-slots", type=int, default=32768)
    p.add_argument("--models", default="queue,step", help="link models to compare (traffic only; '' = scenario default)")
    p.add_argument("--no-anaheim", action="store_true", help="skip the traffic-anaheim row")
    args = p.parse_args()
    models = [m for m in args.models.split(",") if m] or [None]
    results = []
    for n in [int(x) for x in args.agents.split(",")]:
        for m in models:  # alternate models at each N: same machine load for both
            r = bench(args.scenario, n, args.steps, args.agent_slots, m)
            print(f"# {m or 'default'} N={n}: {r['agent_steps_per_s']:.3g} agent-steps/s, compile {r['compile_s']} s",
                  flush=True)
            results.append(r)
    for m in models:
        rows = [r for r in results if r["link_model"] == (m or "default")]
        base = rows[0]
        for r in rows:
            r["per_agent_vs_first"] = round(r["agent_steps_per_s"] / base["agent_steps_per_s"], 3)
            r["compile_vs_first"] = round(r["compile_s"] / max(base["compile_s"], 1e-9), 3)
    if len(models) > 1:
        for r in results:
            if r["link_model"] != models[-1]:
                ref = next(x for x in results if x["link_model"] == models[-1] and x["num_agents"] == r["num_agents"])
                r[f"vs_{models[-1]}"] = round(r["agent_steps_per_s"] / ref["agent_steps_per_s"], 3)
    if not args.no_anaheim:
        try:
            scenario = leed_jax.load_scenario("traffic-anaheim")
            r = bench("traffic-anaheim", scenario.num_agents, args.steps, args.agent_slots)
            print(f"# traffic-anaheim N={r['num_agents']}: {r['agent_steps_per_s']:.3g} agent-steps/s", flush=True)
            results.append(r)
        except leed_jax.ScenarioError as exc:  # the TNTP files are not shipped
            results.append({"scenario": "traffic-anaheim", "skipped": str(exc)})
    print(json.dumps(results))


if __name__ == "__main__":
    main()
