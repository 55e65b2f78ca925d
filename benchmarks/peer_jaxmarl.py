"""leed_jax IPPO against JaxMARL's own IPPO baseline on MPE simple spread (N = 3), side by side.

    python benchmarks/peer_jaxmarl.py [--total-steps 2000000] [--reps 2] [--no-shared]
        [--peer-dir /work/shared/peers/jaxmarl]      # or $LEED_PEER_JAXMARL

Needs the ``bench`` extra (distrax, hydra-core, omegaconf, wandb) and the peer's
``ippo_ff_mpe.py`` + ``ippo_ff_mpe.yaml`` (JaxMARL's baselines/IPPO; the jaxmarl wheel does not
ship them). The peer is imported by path and run as it is: ``make_train(config)`` with its
yaml (TOTAL_TIMESTEPS set to ``--total-steps``, one seed per run), ``jax.jit``, compile and run
timed apart; ``wandb.init(mode="disabled")`` since its update logs through a host callback.

leed_jax runs ``train()`` end to end (run directory, metrics, checkpoints, final evaluation)
with the peer's hyper-parameters: 16 envs x 128 steps, 4 epochs x 4 minibatches, lr 2.5e-4
annealed to 0, gamma 0.99, lambda 0.95, clip 0.2, entropy 0.01, value 0.5, grad norm 0.5,
64x64 tanh actor and critic. Per-agent (non-shared) parameters are leed_jax's default; the
peer shares one network between the agents, so ``--share-params`` is reported too (one network
plus a learned agent embedding).

A third row, ``leed_jax lean``, does the peer's work only: per-agent parameters, no held-out
evaluation and no checkpoint until the end (``eval_every`` = all updates, ``checkpoint_every``
= all chunks); the default rows evaluate 16 held-out episodes and save a checkpoint after each
of their ~40 logged chunks, inside the timed loop — work the peer does not do.

Runs alternate (peer, leed_jax, leed_jax shared, leed_jax lean; repeat), seed ``30 + rep``.
Reported per run: env steps/s excluding compile (the peer: NUM_UPDATES x 2048 / run time;
leed_jax: its training loop, host loop and checkpoints included), compile s, whole-run wall s
(the peer: make_train + compile + run; leed_jax: the whole ``train()`` call), and the final
return per agent per step. Return conversion: the peer logs ``returned_episode_returns``, the
sum over agents of their rewards (MPE spread gives each agent the same shared reward, so N x
the per-agent reward) over an episode of max_steps + 1 = 26 steps: per agent per step =
logged / (3 x 26), averaged over the last 5 % of updates. leed_jax logs each agent's own
episodic return over its 25-step episodes: per agent per step = return / 25, over the same
last 5 % of training (stochastic policy, like the peer's), and its greedy evaluation / 25.
Prints one JSON object last.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np

DEFAULT_PEER = pathlib.Path(os.environ.get("LEED_PEER_JAXMARL", "/work/shared/peers/jaxmarl"))
N_AGENTS = 3
PEER_EPISODE = 26  # max_steps + 1 (jaxmarl checks the limit before incrementing the step)
OURS_EPISODE = 25  # leed_jax's adapter ends episodes after exactly max_steps steps


def load_peer(peer_dir: pathlib.Path):
    """The peer module and its yaml config (a dict)."""
    script, cfg_file = peer_dir / "ippo_ff_mpe.py", peer_dir / "ippo_ff_mpe.yaml"
    for f in (script, cfg_file):
        if not f.is_file():
            sys.exit(f"peer_jaxmarl: {f} not found; pass --peer-dir (JaxMARL's baselines/IPPO)")
    try:
        import distrax  # noqa: F401
        import hydra  # noqa: F401
        import omegaconf
        import wandb
    except ImportError as exc:
        sys.exit(f"peer_jaxmarl: {exc.name} is missing; pip install -e '.[bench]'")
    spec = importlib.util.spec_from_file_location("jaxmarl_ippo_ff_mpe", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = omegaconf.OmegaConf.to_container(omegaconf.OmegaConf.load(cfg_file))
    wandb.init(mode="disabled")
    return module, config


def run_peer(module, base: dict, total_steps: int, seed: int) -> dict:
    import jax

    t0 = time.perf_counter()
    config = dict(base, TOTAL_TIMESTEPS=total_steps, NUM_SEEDS=1, SEED=seed)
    train = jax.jit(module.make_train(config))
    rng = jax.random.PRNGKey(seed)
    t1 = time.perf_counter()
    compiled = train.lower(rng).compile()
    compile_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    out = compiled(rng)
    jax.block_until_ready(out)
    run_s = time.perf_counter() - t2
    wall_s = time.perf_counter() - t0
    steps = config["NUM_UPDATES"] * config["NUM_STEPS"] * config["NUM_ENVS"]
    logged = np.asarray(out["metrics"]["returned_episode_returns"])  # [NUM_UPDATES]
    tail = logged[-max(1, len(logged) // 20):]
    return {
        "who": "jaxmarl", "seed": seed, "env_steps": int(steps),
        "env_steps_per_s": round(steps / run_s, 1), "compile_s": round(compile_s, 2),
        "wall_s": round(wall_s, 2),
        "final_return_per_agent_step": float(tail.mean()) / (N_AGENTS * PEER_EPISODE),
    }


def ours_config(total_steps: int, seed: int, share: bool):
    """leed_jax's TrainConfig with the peer's hyper-parameters (the module docstring)."""
    from leed_jax.config import TrainConfig

    return TrainConfig(
        scenario="mpe-spread", algo="ippo", num_agents=N_AGENTS, total_steps=total_steps,
        num_envs=16, num_steps=128, update_epochs=4, num_minibatches=4, lr=2.5e-4,
        anneal_lr=True, gamma=0.99, gae_lambda=0.95, clip_eps=0.2, ent_coef=0.01, vf_coef=0.5,
        max_grad_norm=0.5, actor_hidden=(64, 64), critic_hidden=(64, 64), share_params=share,
        seed=seed, progress=False,
    )


def run_ours(total_steps: int, seed: int, share: bool, lean: bool = False) -> dict:
    from leed_jax.po.loop import train

    cfg = ours_config(total_steps, seed, share)
    if lean:  # the peer's work only: no evaluation or checkpoint until the end
        cfg = cfg.replace(eval_every=cfg.num_updates, checkpoint_every=cfg.num_chunks)
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        result = train(cfg.replace(out=out), say=lambda msg: None)
        wall_s = time.perf_counter() - t0
    s, hist = result.summary, result.history
    steps = s["env_steps"]
    tail = [r["return"] for r in hist if r["env_steps"] > 0.95 * steps and r.get("return") is not None]
    tail = tail or [hist[-1]["return"]]
    return {
        "who": ("leed_jax shared" if share else "leed_jax") + (" lean" if lean else ""),
        "seed": seed, "env_steps": steps,
        "env_steps_per_s": s["env_steps_per_s"], "compile_s": s["compile_s"],
        "wall_s": round(wall_s, 2),
        "final_return_per_agent_step": float(np.mean(tail)) / OURS_EPISODE,
        "greedy_eval_return_per_agent_step": s["final_return"] / OURS_EPISODE,
    }


def summarise(runs: list[dict]) -> dict:
    def med(who, key):
        vals = [r[key] for r in runs if r["who"] == who]
        return statistics.median(vals) if vals else None

    out = {}
    peer_sps, peer_wall = med("jaxmarl", "env_steps_per_s"), med("jaxmarl", "wall_s")
    for who in dict.fromkeys(r["who"] for r in runs):
        rets = [r["final_return_per_agent_step"] for r in runs if r["who"] == who]
        out[who] = {
            "env_steps_per_s": med(who, "env_steps_per_s"), "compile_s": med(who, "compile_s"),
            "wall_s": med(who, "wall_s"), "final_return_per_agent_step": rets,
            "speed_vs_peer": round(med(who, "env_steps_per_s") / peer_sps, 3),
            "wall_vs_peer": round(med(who, "wall_s") / peer_wall, 3),
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--total-steps", type=int, default=2_000_000)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--peer-dir", type=pathlib.Path, default=DEFAULT_PEER)
    p.add_argument("--no-shared", action="store_true", help="skip the --share-params row")
    p.add_argument("--no-lean", action="store_true",
                   help="skip the row without periodic evaluation and checkpoints")
    args = p.parse_args()
    module, peer_cfg = load_peer(args.peer_dir)
    import jax

    load0 = os.getloadavg()
    runs = []
    for rep in range(args.reps):
        seed = 30 + rep
        jobs = [("jaxmarl", lambda s=seed: run_peer(module, peer_cfg, args.total_steps, s)),
                ("leed_jax", lambda s=seed: run_ours(args.total_steps, s, False))]
        if not args.no_shared:
            jobs.append(("leed_jax shared", lambda s=seed: run_ours(args.total_steps, s, True)))
        if not args.no_lean:
            jobs.append(("leed_jax lean",
                         lambda s=seed: run_ours(args.total_steps, s, False, lean=True)))
        for _who, job in jobs:
            r = job()
            r["load_avg"] = os.getloadavg()[0]
            runs.append(r)
            print(f"# rep {rep} {r['who']:16s} {r['env_steps_per_s']:9.0f} env steps/s  compile "
                  f"{r['compile_s']:5.1f} s  wall {r['wall_s']:6.1f} s  return/agent/step "
                  f"{r['final_return_per_agent_step']:.3f}", flush=True)
    result = {"total_steps": args.total_steps, "reps": args.reps,
              "device": jax.devices()[0].device_kind, "load_avg_start": load0,
              "load_avg_end": os.getloadavg(), "runs": runs, "summary": summarise(runs)}
    for who, s in result["summary"].items():
        print(f"# {who:16s} {s['speed_vs_peer']:.2f}x peer env steps/s, {s['wall_vs_peer']:.2f}x "
              f"peer wall", flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
