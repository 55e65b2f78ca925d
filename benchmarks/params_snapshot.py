"""Parameters after a few updates on small cases, to check that a speed change keeps results
bit-identical (run it on the code before and after the change, then compare).

    PYTHONPATH=old/src python benchmarks/params_snapshot.py --out /tmp/before.npz
    PYTHONPATH=new/src python benchmarks/params_snapshot.py --out /tmp/after.npz
    python benchmarks/params_snapshot.py --compare /tmp/before.npz /tmp/after.npz

Cases: leed, ippo, mappo and bc on traffic-grid (N = 50, planner demos), ippo with
--share-params, and ippo on MPE spread (N = 3); 3 updates each, 2 minibatches x 2 epochs.
The comparison prints, per case, whether every parameter is equal bit for bit and the largest
absolute difference; JSON last.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import tempfile

import numpy as np

CASES = {
    "leed": {"scenario": "traffic-grid", "algo": "leed"},
    "ippo": {"scenario": "traffic-grid", "algo": "ippo"},
    "mappo": {"scenario": "traffic-grid", "algo": "mappo"},
    "bc": {"scenario": "traffic-grid", "algo": "bc"},
    "ippo_shared": {"scenario": "traffic-grid", "algo": "ippo", "share_params": True},
    "mpe_ippo": {"scenario": "mpe-spread", "algo": "ippo"},
}


def snapshot(out: str, updates: int) -> None:
    import jax
    import jax.numpy as jnp

    import leed_jax
    from leed_jax.config import TrainConfig
    from leed_jax.po.trainer import make_train

    arrays = {}
    demo_cache = {}
    for name, case in CASES.items():
        env = leed_jax.make_env(case["scenario"])
        demos = None
        if case["algo"] in ("leed", "bc"):
            if case["scenario"] not in demo_cache:
                d = pathlib.Path(tempfile.mkdtemp()) / "demos"
                path = leed_jax.generate_demos(env, source="planner", out=d, progress=False)
                demo_cache[case["scenario"]] = leed_jax.load_demos(path, env)
            demos = jax.tree_util.tree_map(jnp.asarray, demo_cache[case["scenario"]])
        cfg = TrainConfig(num_envs=4, num_steps=16, num_minibatches=2, update_epochs=2,
                          total_steps=4 * 16 * 10, expert_batch_size=16, progress=False,
                          **{k: v for k, v in case.items() if k != "scenario"},
                          scenario=case["scenario"])
        tr = make_train(cfg, env, demos)
        state = jax.jit(tr.init)(jax.random.PRNGKey(0))
        update = jax.jit(tr.update)
        for _ in range(updates):
            state, metrics = update(state, demos)
        leaves = jax.tree_util.tree_leaves_with_path(state.params)
        for path, leaf in leaves:
            arrays[f"{name}/{jax.tree_util.keystr(path)}"] = np.asarray(leaf)
        arrays[f"{name}/metrics/loss"] = np.asarray(metrics["loss"])
    np.savez(out, **arrays)
    print(json.dumps({"out": out, "arrays": len(arrays)}))


def compare(a: str, b: str) -> dict:
    x, y = np.load(a), np.load(b)
    result = {}
    for case in CASES:
        keys = sorted(k for k in x.files if k.startswith(case + "/") and "/metrics/" not in k)
        keys_b = sorted(k for k in y.files if k.startswith(case + "/") and "/metrics/" not in k)
        # leaves are compared in the order of the flattened tree (a layout change may rename them)
        pairs = list(zip(keys, keys_b, strict=True))
        identical = all(np.array_equal(x[k], y[j]) for k, j in pairs)
        diff = max(float(np.max(np.abs(x[k] - y[j]))) for k, j in pairs)
        result[case] = {"identical": identical, "max_abs_diff": diff}
        print(f"# {case:12s} identical={identical}  max |diff| = {diff:.3g}")
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="/tmp/params_snapshot.npz")
    p.add_argument("--updates", type=int, default=3)
    p.add_argument("--compare", nargs=2, metavar=("A", "B"))
    args = p.parse_args()
    if args.compare:
        print(json.dumps(compare(*args.compare)))
    else:
        snapshot(args.out, args.updates)


if __name__ == "__main__":
    main()
