"""Run in a subprocess with 8 forced CPU devices (see test_parallel.py): train the same tiny
config unsharded and on several meshes, and print the largest parameter difference per mesh."""

import json
import sys
import tempfile

import jax
import numpy as np

from leed_jax.config import TrainConfig
from leed_jax.dg.generate import generate_demos
from leed_jax.po.loop import train

assert len(jax.devices()) == 8, jax.devices()
algo = sys.argv[1]
base = TrainConfig(
    scenario="traffic-grid", algo=algo, num_agents=4, num_envs=8, num_steps=8, total_steps=8 * 8 * 3,
    num_minibatches=2, update_epochs=2, log_every=1, eval_envs=2, progress=False, expert_batch_size=8,
    warm_start_steps=0,  # the warm start runs before the state is placed: not about sharding
)
# One small demo buffer for every mesh (the cheap incremental planner, a few demand draws): the
# test is about sharding the update, not about the demonstrations.
demos = generate_demos("traffic-grid", source="planner", planner="incremental", episodes=2,
                       out=tempfile.mkdtemp(), overrides={"num_agents": 4}, progress=False)
base = base.replace(demos=str(demos))
meshes = [(1, 1), (2, 4)]  # unsharded, and all 8 devices splitting both envs and agents
params = {}
for data, agent in meshes:
    out = tempfile.mkdtemp()
    res = train(base.replace(mesh_data=data, mesh_agent=agent, out=out), say=lambda m: None)
    leaves = jax.tree_util.tree_leaves(res.state.params)
    if (data, agent) != (1, 1):
        assert len(leaves[0].sharding.device_set) == data * agent, (data, agent, leaves[0].sharding)
    params[(data, agent)] = [np.asarray(x) for x in leaves]
ref = params[(1, 1)]
diff = {
    f"{d}x{a}": max(float(np.max(np.abs(x - y))) for x, y in zip(ref, params[(d, a)]))
    for d, a in meshes[1:]
}
scale = max(float(np.max(np.abs(x))) for x in ref)
print(json.dumps({"diff": diff, "scale": scale}))
