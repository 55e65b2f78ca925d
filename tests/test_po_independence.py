"""Agents stay independent: one agent's data, gradients and clipping never reach another's
parameters (per-agent parameters; LEED's decentralised training)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from test_po_toy import ToyEnv, toy_demos

from leed_jax.config import TrainConfig
from leed_jax.po.trainer import MiniBatchData, make_train

N, B = 3, 8


def _batch(key, env):
    d, a = env.spec.obs_dim, env.spec.num_actions
    ks = jax.random.split(key, 6)
    return MiniBatchData(
        obs=jax.random.normal(ks[0], (B, N, d)),
        avail=jnp.ones((B, N, a), bool).at[..., -1].set(False),
        action=jax.random.randint(ks[1], (B, N), 0, a - 1),
        log_prob=jnp.log(jax.random.uniform(ks[2], (B, N), minval=0.2, maxval=0.5)),
        value=jax.random.normal(ks[3], (B, N)),
        advantage=jax.random.normal(ks[4], (B, N)),
        target=jax.random.normal(ks[5], (B, N)),
        decision=jnp.ones((B, N), bool).at[::3, 1].set(False),
        global_state=None,
    )


def _demo(env, key):
    demos = toy_demos(env, per_agent=16)
    from leed_jax.dg.buffer import sample_demos

    return sample_demos(key, jax.tree_util.tree_map(jnp.asarray, demos), B)


def _agent(tree, i):
    return jax.tree_util.tree_map(lambda x: np.asarray(x[i]), tree)


def _same(a, b):
    return all(jax.tree_util.tree_leaves(jax.tree_util.tree_map(np.array_equal, a, b)))


def test_changing_one_agents_data_leaves_the_other_agents_gradients_untouched():
    env = ToyEnv(num_agents=N)
    cfg = TrainConfig(algo="leed", num_envs=2, num_steps=4, total_steps=8, num_minibatches=1)
    trainer = make_train(cfg, env, toy_demos(env))
    params = trainer.policy.init(jax.random.PRNGKey(0))
    mb = _batch(jax.random.PRNGKey(1), env)
    demo = _demo(env, jax.random.PRNGKey(2))
    weight = jnp.array([1.0, 0.5, 0.25])
    grad = jax.jit(jax.grad(lambda p, m, d: trainer.loss(p, m, d, weight)[0]))
    g0 = grad(params, mb, demo)

    # Agent 1's rollout data and demonstrations change; nothing else does.
    noise = jax.random.normal(jax.random.PRNGKey(3), mb.obs[:, 1].shape)
    mb2 = mb._replace(
        obs=mb.obs.at[:, 1].add(noise),
        advantage=mb.advantage.at[:, 1].multiply(-3.0),
        target=mb.target.at[:, 1].add(5.0),
    )
    d_obs, d_act, d_avail, d_w = demo
    demo2 = (d_obs.at[1].add(1.0), (d_act.at[1].add(1)) % 3, d_avail, d_w)
    g1 = grad(params, mb2, demo2)

    for i in (0, 2):
        assert _same(_agent(g0, i), _agent(g1, i)), f"agent {i}'s gradient changed"
    assert not _same(_agent(g0, 1), _agent(g1, 1))


def test_gradient_clipping_is_per_agent():
    env = ToyEnv(num_agents=N)
    cfg = TrainConfig(algo="ippo", num_envs=2, num_steps=4, total_steps=8, num_minibatches=1,
                      max_grad_norm=0.5)
    trainer = make_train(cfg, env)
    params = trainer.policy.init(jax.random.PRNGKey(0))
    opt_state = trainer.optimizer.init(params)
    grads = jax.tree_util.tree_map(lambda x: jnp.full_like(x, 0.01), params)
    update = jax.jit(trainer.optimizer.update)
    upd, _ = update(grads, opt_state, params)
    # Agent 0's gradient explodes; with one global norm across agents it would shrink the
    # others' (clipped) gradients, and so their Adam steps.
    big = jax.tree_util.tree_map(lambda g: g.at[0].multiply(1e6), grads)
    upd_big, state_big = update(big, opt_state, params)
    for i in (1, 2):
        assert _same(_agent(upd, i), _agent(upd_big, i))
    # and agent 0's own step is clipped to norm 0.5 before Adam: its first moment says so
    mu0 = _agent(state_big[1][0].mu, 0)
    norm = float(optax.tree.norm(mu0)) / (1 - 0.9)  # Adam's mu after one step = 0.1 * g
    np.testing.assert_allclose(norm, 0.5, rtol=1e-4)


def test_shared_parameters_with_an_agent_embedding():
    env = ToyEnv(num_agents=N)
    cfg = TrainConfig(algo="ippo", num_envs=2, num_steps=4, total_steps=8, num_minibatches=1,
                      share_params=True, agent_embed_dim=4)
    trainer = make_train(cfg, env)
    params = trainer.policy.init(jax.random.PRNGKey(0))
    assert params["embed"].shape == (N, 4)
    kernel = params["actor"]["params"]["Dense_0"]["kernel"]
    assert kernel.shape == (env.spec.obs_dim + 4, 64)  # one network, no agent axis
    obs = jnp.zeros((5, N, env.spec.obs_dim))
    logits = trainer.policy.logits(params, obs, jnp.ones((5, N, 4), bool))
    assert logits.shape == (5, N, 4)
    # identical observations still give different agents different policies
    assert not np.allclose(logits[:, 0], logits[:, 1])
