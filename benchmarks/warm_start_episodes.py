"""How many demonstration episodes the warm start needs to generalise (issue #10, JSON last).

    python benchmarks/warm_start_episodes.py --scenario mpe-spread --episodes 64,256,1024 \
        --seeds 3 --set num_envs=64 --set num_steps=25 --set lr=0.001 --set eval_envs=64

For each K in ``--episodes``: the planner's demonstrations of K random starts (generated and
timed, or read from ``--demo-dir/K`` when there), then LEED's warm start alone — the
expert-loss fit of ``Trainer.warm_start`` before the first rollout, ``--seeds`` seeds vmapped —
and the greedy evaluation on the held-out episodes every method is judged on (``eval_seed``,
``eval_envs``). The critic warm-up is skipped (``warm_critic_updates=0``): it leaves the actor
unchanged, so the greedy return after it is the same. Besides the return, the clone's greedy
action is compared with the planner's on the demonstrated states (training accuracy) and on
the planner's trajectories from ``--heldout-episodes`` other starts (key ``--heldout-seed``):
the gap between the two is what the clone memorised but did not learn. The clone is also
evaluated on the same episodes with its actions sampled (``warm_eval_return_sampled``), and the
planner itself is run on them (``planner_on_eval_episodes``). The fit is the
trainer's (``warm_start_steps`` / ``warm_start_tol``, per env family unless ``--set``: on MPE
40,000 steps without the plateau stop; ``--set warm_start_steps=3000 --set
warm_start_tol=0.01`` gives the plateau fit of the README's "default" rows).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

import numpy as np


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenario", default="mpe-spread")
    p.add_argument("--episodes", default="64,256,1024", help="comma-separated demo episode counts")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--demo-dir", default="runs/warm-start-episodes",
                   help="buffers are written to (or read from) DIR/K")
    p.add_argument("--heldout-episodes", type=int, default=64)
    p.add_argument("--heldout-seed", type=int, default=777)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a TrainConfig field (JSON value), e.g. --set warm_start_steps=6000")
    return p.parse_args(argv)


def make_demos(scenario: str, episodes: int, seed: int, out: pathlib.Path) -> tuple[str, float]:
    """The planner's buffer of ``episodes`` starts at ``out`` (reused when there): path and
    the DG seconds (measured now, or as the buffer's meta.json recorded them)."""
    from leed_jax.dg.buffer import read_demo_meta

    if (out / "meta.json").is_file():
        meta = read_demo_meta(out)
        if meta.get("episodes") == episodes:
            return str(out), float(meta["timing_s"]["total"])
    from leed_jax.dg.generate import generate_demos

    t = time.perf_counter()
    generate_demos(scenario, out=out, source="planner", episodes=episodes, seed=seed,
                   progress=False)
    return str(out), time.perf_counter() - t


def mpe_assigned_not_nearest(buffer, horizon: int) -> np.ndarray:
    """``[N, M]`` bool: the planner sent the agent to a landmark other than the one nearest to
    it at that step (the part of the task a nearest-landmark rule gets wrong). Positions come
    from the observations (MPE spread: own velocity, own position, landmarks relative, other
    agents relative); the assignment is the planner's of the episode's first step."""
    from leed_jax.dg.planner import spread_assignment

    obs = np.asarray(buffer.obs)  # [N, M, D]
    n, m = obs.shape[:2]
    lm_rel = obs[..., 4:4 + 2 * n].reshape(n, m, n, 2)  # [N, M, L, 2] (L = N in spread)
    nearest = np.linalg.norm(lm_rel, axis=-1).argmin(-1)  # [N, M]
    first = obs[0, ::horizon]  # agent 0 at each episode's first step [E, D]
    own = first[:, 2:4]
    lms = own[:, None] + first[:, 4:4 + 2 * n].reshape(-1, n, 2)
    agents = np.concatenate([own[:, None], own[:, None]
                             + first[:, 4 + 2 * n:4 + 2 * n + 2 * (n - 1)].reshape(-1, n - 1, 2)], 1)
    assigned = np.stack([spread_assignment(a, lm) for a, lm in zip(agents, lms)])  # [E, N]
    return np.repeat(assigned.T, horizon, axis=1) != nearest


def mpe_obs_check(buffer, env) -> dict:
    """Is the planner's action a function of the agent's own observation? Recomputes it from
    the observation (own velocity and position, the landmarks relative) and the episode's
    assignment with the executor's rule (the force whose stopping point is nearest the goal),
    and counts the steps where the assignment of the current positions differs from the
    episode's (what a memoryless policy cannot know)."""
    from leed_jax.dg.executor import _MPE_DIRECTIONS, _mpe_dynamics
    from leed_jax.dg.planner import spread_assignment

    horizon = env.spec.horizon
    n, dt, damping, gain = _mpe_dynamics(env)
    obs = np.asarray(buffer.obs)  # [N, M, D]
    m = obs.shape[1]
    o0 = obs[0]
    lms = o0[:, 2:4][:, None] + o0[:, 4:4 + 2 * n].reshape(m, n, 2)  # [M, L, 2]
    agents = np.concatenate([o0[:, None, 2:4], o0[:, None, 2:4] + o0[:, 4 + 2 * n:4 + 2 * n + 2
                                                                    * (n - 1)].reshape(m, n - 1, 2)], 1)
    current = np.stack([spread_assignment(a, lm) for a, lm in zip(agents, lms)])  # [M, N]
    episode = np.repeat(current[::horizon], horizon, axis=0)  # [M, N]
    d = np.asarray(_MPE_DIRECTIONS, float)
    hits, gaps = [], []
    for i in range(n):
        vel, pos = obs[i, :, 0:2], obs[i, :, 2:4]
        goal = pos + obs[i, :, 4:4 + 2 * n].reshape(m, n, 2)[np.arange(m), episode[:, i]]
        v_next = vel[:, None] * (1 - damping) + d[None] * float(np.asarray(gain)[i])
        stop = (pos + vel * dt)[:, None] + v_next * (dt / damping)  # [M, 5, 2]
        cost = np.sort(np.linalg.norm(stop - goal[:, None], axis=-1), -1)
        hits.append(np.linalg.norm(stop - goal[:, None], axis=-1).argmin(-1)
                    == np.asarray(buffer.action)[i])
        gaps.append(cost[:, 1] - cost[:, 0])
    return {"planner_action_from_own_obs": float(np.mean(hits)),
            "near_ties_frac": float(np.mean(np.asarray(gaps) < 1e-5)),
            "assignment_of_current_positions_differs": float(np.mean(current != episode))}


def main(argv=None) -> dict:
    args = parse(argv)
    import jax
    import jax.numpy as jnp

    from leed_jax.config import TrainConfig, parse_set
    from leed_jax.dg.buffer import load_demos, read_demo_meta
    from leed_jax.dg.generate import planner_on_episodes
    from leed_jax.dg.yardsticks import evaluation_keys
    from leed_jax.envs.registry import make_env
    from leed_jax.po.trainer import Trainer, demo_accuracy, seed_keys

    extra = parse_set(args.set)
    cfg = TrainConfig(scenario=args.scenario, algo="leed", seeds=args.seeds, progress=False,
                      **{"warm_critic_updates": 0, **extra})
    cfg.validate()
    env = make_env(cfg.scenario)
    root = pathlib.Path(args.demo_dir)
    held_path, held_s = make_demos(cfg.scenario, args.heldout_episodes, args.heldout_seed,
                                   root / f"heldout-{args.heldout_seed}-{args.heldout_episodes}")
    held_np = load_demos(held_path, env)
    held = jax.tree_util.tree_map(jnp.asarray, held_np)
    mpe = env.family == "mpe" and bool(np.asarray(held_np.valid).all())
    hard = mpe_assigned_not_nearest(held_np, env.spec.horizon) if mpe else None
    result: dict = {"scenario": env.name, "num_agents": env.spec.num_agents, "seeds": args.seeds,
                    "config": extra, "eval_seed": cfg.eval_seed, "eval_episodes": cfg.eval_envs,
                    "heldout": {"episodes": args.heldout_episodes, "seed": args.heldout_seed,
                                **read_demo_meta(held_path)["metrics"]},
                    "rows": [], "loadavg_start": list(os.getloadavg())}
    t = time.perf_counter()
    # The level the clone is judged against, on the same starts as its evaluation.
    result["planner_on_eval_episodes"] = planner_on_episodes(
        env, evaluation_keys(cfg.eval_seed, cfg.eval_envs))["mean_return"]
    if mpe:
        result["heldout"]["assigned_not_nearest_frac"] = float(hard.mean())
        result["heldout"].update(mpe_obs_check(held_np, env))
    print(f"held-out demonstrations: {result['heldout']}", file=sys.stderr, flush=True)
    print(f"planner on the {cfg.eval_envs} evaluation episodes: "
          f"{result['planner_on_eval_episodes']:.4g} ({time.perf_counter() - t:.0f} s)",
          file=sys.stderr, flush=True)
    for k in (int(x) for x in args.episodes.split(",") if x.strip()):
        path, dg_s = make_demos(cfg.scenario, k, cfg.seed, root / str(k))
        meta = read_demo_meta(path)
        demos = load_demos(path, env)
        trainer = Trainer.build(cfg, env, demos)
        d = jax.tree_util.tree_map(jnp.asarray, demos)
        state = jax.jit(trainer.seeds_init())(seed_keys(cfg))
        t = time.perf_counter()
        warm = trainer.seeds_warm().lower(state, d).compile()
        compile_s = time.perf_counter() - t
        t = time.perf_counter()
        state, metrics = warm(state, d)
        metrics = jax.device_get(metrics)
        warm_s = time.perf_counter() - t
        state, ev = trainer.seeds_evaluate()(state)
        # The same episodes with the clone's actions sampled instead of its argmax: where the
        # expert spreads like observations over several actions (an equilibrium's route
        # split), the argmax sends them all one way.
        sampled = np.asarray(jax.jit(jax.vmap(lambda p: trainer.evaluate(
            p, jax.random.PRNGKey(cfg.eval_seed), cfg.eval_envs, greedy=False)["return"]))(
            state.params), float)
        acc_fn = jax.jit(jax.vmap(lambda p, b: demo_accuracy(trainer.policy, p, b),
                                  in_axes=(0, None)))
        held_acc = np.asarray(acc_fn(state.params, held))
        greedy = jax.jit(jax.vmap(lambda p: jnp.argmax(trainer.policy.logits(
            p, jnp.swapaxes(held.obs, 0, 1), jnp.swapaxes(held.avail, 0, 1)), -1)))
        hit = np.asarray(greedy(state.params)) == np.asarray(held_np.action).T[None]  # [S, M, N]
        hit = np.swapaxes(hit, 1, 2)  # [S, N, M]
        split = {} if hard is None else {
            "heldout_accuracy_assigned_nearest": float(hit[:, ~hard].mean()),
            "heldout_accuracy_assigned_not_nearest": float(hit[:, hard].mean()),
            "heldout_accuracy_per_agent": hit.mean(axis=(0, 2)).round(4).tolist()}
        ret = np.asarray(ev["return"], float)  # [seeds]
        row = {
            "episodes": k,
            "demos_return": meta["metrics"]["mean_return"],
            "dg_s": round(dg_s, 2),
            "warm_steps": float(np.mean(metrics["warm_steps"])),
            "warm_expert_loss_end": float(np.mean(metrics["warm_expert_loss_end"])),
            "train_accuracy": float(np.mean(metrics["warm_demo_accuracy"])),
            # DAgger (--set warm_start_dagger_rounds=R): the clone against the expert on the
            # states it reaches itself, before the first round and after the last
            **{k: float(np.mean(v)) for k, v in metrics.items() if k.startswith("warm_dagger")},
            "heldout_accuracy": float(held_acc.mean()),
            **split,
            "warm_eval_return": float(ret.mean()),
            "warm_eval_return_seeds": ret.tolist(),
            "warm_eval_return_se": float(ret.std(ddof=1) / np.sqrt(len(ret))) if len(ret) > 1
            else 0.0,
            "warm_eval_return_sampled": float(sampled.mean()),
            "warm_eval_return_sampled_seeds": sampled.tolist(),
            "warm_compile_s": round(compile_s, 2),
            "warm_run_s": round(warm_s, 2),
            "loadavg": list(os.getloadavg()),
        }
        result["rows"].append(row)
        print(f"K={k}: demos {row['demos_return']:.2f}, warm-start greedy "
              f"{row['warm_eval_return']:.4g} ± {row['warm_eval_return_se']:.2g} (held out; "
              f"sampled {row['warm_eval_return_sampled']:.4g}), "
              f"accuracy {row['train_accuracy']:.3f} train / {row['heldout_accuracy']:.3f} "
              f"held out" + (f" ({split['heldout_accuracy_assigned_nearest']:.3f} where the "
                             f"planner's landmark is the nearest, "
                             f"{split['heldout_accuracy_assigned_not_nearest']:.3f} where not)"
                             if split else "")
              + f", {row['warm_steps']:.0f} steps, loss {row['warm_expert_loss_end']:.3f}, "
              f"DG {dg_s:.1f} s, warm {compile_s:.0f} s compile + {warm_s:.0f} s",
              file=sys.stderr, flush=True)
    result["loadavg_end"] = list(os.getloadavg())
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    from leed_jax.config import main_or_exit_2

    main_or_exit_2(main, pathlib.Path(__file__).name)  # a bad flag or field: one line, exit 2
