"""The expert loss on the whole demo buffer (when it is no larger than expert_batch_size) is the
exact per-agent mean that sampling estimates; larger buffers are still sampled."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from test_po_toy import ToyEnv, toy_demos

from leed_jax.config import TrainConfig
from leed_jax.po.expert import expert_loss
from leed_jax.po.ppo import log_prob
from leed_jax.po.trainer import make_train


def _trainer(env, demos, batch):
    cfg = TrainConfig(algo="leed", num_envs=2, num_steps=4, total_steps=8, num_minibatches=1,
                      expert_batch_size=batch)
    return make_train(cfg, env, demos)


def _expert(trainer, params, demo):
    d_obs, d_action, d_avail, d_weight = (jnp.swapaxes(x, 0, 1) for x in demo)  # [B, N]
    return expert_loss(trainer.policy.logits(params, d_obs, d_avail), d_action, d_weight)


def test_whole_buffer_gives_each_agents_exact_mean_over_its_demonstrations():
    env = ToyEnv(num_agents=3)
    demos = jax.tree_util.tree_map(jnp.asarray, toy_demos(env, per_agent=12))
    demos = demos._replace(valid=demos.valid.at[1, 5:].set(False))  # agent 1: 5 decisions
    trainer = _trainer(env, demos, batch=16)
    assert trainer.full_demos and not _trainer(env, demos, batch=8).full_demos
    params = trainer.policy.init(jax.random.PRNGKey(0))
    demo = trainer.sample_demo(jax.random.PRNGKey(1), demos)
    assert demo[0].shape == (3, 12, env.spec.obs_dim)
    got = np.asarray(_expert(trainer, params, demo))
    all_logits = trainer.policy.logits(params, demos.obs.swapaxes(0, 1),
                                       demos.avail.swapaxes(0, 1))  # [M, N, A]
    for i in range(3):
        m = int(demos.valid[i].sum())  # agent i's decisions come first in its row
        want = -np.mean(np.asarray(log_prob(all_logits[:m, i], demos.action[i, :m])))
        np.testing.assert_allclose(got[i], want, rtol=1e-5)


def test_sampled_expert_loss_averages_to_the_whole_buffer_loss():
    env = ToyEnv(num_agents=3)
    demos = jax.tree_util.tree_map(jnp.asarray, toy_demos(env, per_agent=12))
    full = _trainer(env, demos, batch=16)
    sampled = _trainer(env, demos, batch=8)
    params = full.policy.init(jax.random.PRNGKey(0))
    exact = np.asarray(_expert(full, params, full.sample_demo(jax.random.PRNGKey(0), demos)))
    keys = jax.random.split(jax.random.PRNGKey(2), 400)
    draws = jax.vmap(lambda k: _expert(sampled, params, sampled.sample_demo(k, demos)))(keys)
    np.testing.assert_allclose(np.asarray(draws).mean(0), exact, rtol=0.02)
