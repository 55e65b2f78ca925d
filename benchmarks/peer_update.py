"""The compiled update alone: JaxMARL's IPPO against leed_jax IPPO on the peer's MPE config.

    python benchmarks/peer_update.py [--updates 10,40] [--reps 5] [--share-params]
        [--peer-dir /work/shared/peers/jaxmarl]      # or $LEED_PEER_JAXMARL

``benchmarks/peer_jaxmarl.py`` compares whole runs; this separates the compiled update from
everything around it. The peer's ``make_train`` compiles its whole training as one program,
so one update cannot be timed alone: both are compiled for two run lengths (``--updates``
K1 < K2; the peer with TOTAL_TIMESTEPS = K x 2048, leed_jax as one chunk of K updates), run
alternately ``--reps`` times after a warm-up, and the time per update is the difference of
the medians over K2 - K1 (fixed costs — init, dispatch, the peer's reset — cancel). Same
hyper-parameters as peer_jaxmarl.py. Prints one JSON object last.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import peer_jaxmarl as pj


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--updates", default="10,40", help="two run lengths K1,K2 in updates")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--share-params", action="store_true")
    p.add_argument("--peer-dir", type=pathlib.Path, default=pj.DEFAULT_PEER)
    args = p.parse_args()
    ks = [int(x) for x in args.updates.split(",")]
    if len(ks) != 2 or not 0 < ks[0] < ks[1]:
        p.error("--updates takes two run lengths K1 < K2, e.g. 10,40")
    module, base = pj.load_peer(args.peer_dir)
    import jax

    import leed_jax
    from leed_jax.po.trainer import make_train, seed_keys

    programs = {}
    for k in ks:
        cfg = dict(base, TOTAL_TIMESTEPS=k * 2048, NUM_SEEDS=1, SEED=0)
        peer = jax.jit(module.make_train(cfg)).lower(jax.random.PRNGKey(0)).compile()
        programs[("jaxmarl", k)] = lambda f=peer: f(jax.random.PRNGKey(0))
        tc = pj.ours_config(10**6, 0, args.share_params).replace(log_every=k)
        trainer = make_train(tc, leed_jax.make_env("mpe-spread", num_agents=pj.N_AGENTS))
        state = jax.jit(jax.vmap(trainer.init))(seed_keys(tc))
        chunk = trainer.seeds_chunk().lower(state, None).compile()
        box = [state]

        def ours(chunk=chunk, box=box):
            box[0], metrics = chunk(box[0], None)
            return metrics

        programs[("leed_jax", k)] = ours
    for run in programs.values():  # warm-up
        jax.block_until_ready(run())
    times = {key: [] for key in programs}
    for _ in range(args.reps):
        for key, run in programs.items():
            t0 = time.perf_counter()
            jax.block_until_ready(run())
            times[key].append(time.perf_counter() - t0)
    med = {key: statistics.median(v) for key, v in times.items()}
    per = {who: (med[(who, ks[1])] - med[(who, ks[0])]) / (ks[1] - ks[0])
           for who in ("jaxmarl", "leed_jax")}
    for who, s in per.items():
        print(f"# {who:9s} {1000 * s:7.2f} ms per update", flush=True)
    print(json.dumps({
        "updates": ks, "reps": args.reps, "share_params": args.share_params,
        "device": jax.devices()[0].device_kind, "load_avg": os.getloadavg(),
        "ms_per_update": {who: round(1000 * s, 2) for who, s in per.items()},
        "leed_jax_vs_peer_time": round(per["leed_jax"] / per["jaxmarl"], 3),
    }))


if __name__ == "__main__":
    main()
