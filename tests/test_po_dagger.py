"""DAgger after the warm start (``warm_start_dagger_rounds``): the MPE expert as a function of
the observation, the clone's agreement with it on its own states, and the one-line error for a
family without such an expert."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_po_toy import ToyEnv, toy_demos

import leed_jax
from leed_jax.config import ConfigError, TrainConfig
from leed_jax.dg.buffer import from_transitions
from leed_jax.dg.executor import executor_for, expert_labeler
from leed_jax.dg.planner import spread_assignment
from leed_jax.po.trainer import make_train


@pytest.fixture(scope="module")
def mpe():
    """mpe-spread and the planner's episodes from 24 random starts (transitions, returns)."""
    env = leed_jax.make_env("mpe-spread")
    n = env.spec.num_agents
    run = executor_for(env)
    obs, states = jax.vmap(env.reset)(jax.random.split(jax.random.PRNGKey(3), 24))
    episodes, returns = [], []
    for e in range(24):
        state = jax.tree_util.tree_map(lambda x, e=e: x[e], states)
        pos = np.asarray(state.env_state.p_pos)
        targets = spread_assignment(pos[:n], pos[n:])[:, None].astype(np.int32)
        ro = run(jax.random.PRNGKey(e), obs[e], state, targets)
        episodes.append(ro.transitions)
        returns.append(np.asarray(ro.returns))
    return env, episodes, returns


def test_mpe_labeler_is_the_planner_as_a_function_of_the_observation(mpe):
    env, episodes, _ = mpe
    label = jax.jit(expert_labeler(env))
    obs = jnp.stack([t.obs for t in episodes])  # [E, T, N, D]
    action = np.stack([np.asarray(t.action) for t in episodes])
    agree = np.asarray(label(obs)) == action
    # Every step but those where the assignment of the current positions differs from the
    # episode's first one (about 1 %).
    assert agree.mean() >= 0.97
    assert expert_labeler(ToyEnv()) is None


def test_dagger_raises_the_clones_agreement_with_the_expert_on_its_own_states(mpe):
    env, episodes, returns = mpe
    demos = jax.tree_util.tree_map(jnp.asarray, from_transitions(episodes, returns))
    cfg = TrainConfig(
        scenario="mpe-spread", algo="bc", num_envs=4, num_steps=25, num_minibatches=4,
        total_steps=200, actor_hidden=(32, 32), critic_hidden=(8,), warm_start_steps=300,
        warm_start_tol=0, warm_start_batch=64, warm_start_dagger_rounds=2,
        warm_start_dagger_envs=16, warm_start_dagger_steps=400, eval_envs=4, progress=False)
    tr = make_train(cfg, env, demos)
    state, m = jax.jit(lambda k: tr.warm_start(tr.init(k), demos))(jax.random.PRNGKey(0))
    m = jax.device_get(m)
    # 2 rounds x 16 episodes x 25 steps x 3 agents labelled by the planner's rule.
    assert float(m["warm_dagger_states"]) == 2 * 16 * 25 * 3
    assert np.isfinite(m["warm_dagger_expert_loss_end"])
    # Fitted on its own labelled states, the clone errs less where it goes itself.
    assert float(m["warm_dagger_agreement_end"]) > float(m["warm_dagger_agreement_start"]) + 0.05
    assert bool(state.warm)


def test_dagger_needs_a_family_with_an_expert_that_labels_observations():
    env = ToyEnv()
    demos = jax.tree_util.tree_map(jnp.asarray, toy_demos(env, per_agent=8))
    cfg = TrainConfig(algo="leed", num_envs=2, num_steps=6, total_steps=96, num_minibatches=2,
                      warm_start_dagger_rounds=1, progress=False)
    with pytest.raises(ConfigError, match="labels any observation"):
        make_train(cfg, env, demos)
    # Methods without a warm start ignore the field, like the other warm-start fields.
    make_train(cfg.replace(algo="ippo"), env, None)


def test_the_mpe_labeler_refuses_an_observation_layout_other_than_spreads():
    from leed_jax.envs.jaxmarl_adapter import JaxMARLEnv
    from leed_jax.po.trainer import dagger_labeler

    with pytest.raises(ConfigError, match="MPE_simple_spread_v3 only"):
        dagger_labeler(JaxMARLEnv("MPE_simple_v3"))


def test_expert_own_states_mixes_the_experts_labels_of_the_minibatch_into_the_expert_loss(mpe):
    from leed_jax.po.expert import expert_loss
    from leed_jax.po.trainer import MiniBatchData

    env, episodes, returns = mpe
    demos = jax.tree_util.tree_map(jnp.asarray, from_transitions(episodes, returns))
    cfg = TrainConfig(scenario="mpe-spread", algo="bc", num_envs=4, num_steps=25,
                      num_minibatches=4, total_steps=200, actor_hidden=(16,), critic_hidden=(8,),
                      expert_own_states=0.25, progress=False)
    tr = make_train(cfg, env, demos)
    params = tr.policy.init(jax.random.PRNGKey(1))
    t = episodes[0]  # the planner's own episode as the "rollout": obs [T, N, D]
    zeros = jnp.zeros(t.action.shape, jnp.float32)
    labels = expert_labeler(env)(t.obs)
    mb = MiniBatchData(obs=t.obs, avail=t.avail, action=t.action, log_prob=zeros, value=zeros,
                       advantage=zeros, target=zeros, decision=t.decision, global_state=None,
                       expert_action=labels)
    demo = tr.sample_demo(jax.random.PRNGKey(2), demos)
    _, (_, ex, _) = tr.loss(params, mb, demo, jnp.ones(env.spec.num_agents), None)
    d_obs, d_action, d_avail, d_weight = (jnp.swapaxes(x, 0, 1) for x in demo)
    ex_demo = expert_loss(tr.policy.logits(params, d_obs, d_avail), d_action, d_weight)
    ex_own = expert_loss(tr.policy.logits(params, t.obs, t.avail), labels,
                         t.decision.astype(jnp.float32))
    np.testing.assert_allclose(np.asarray(ex), np.asarray(0.75 * ex_demo + 0.25 * ex_own),
                               rtol=1e-5)
    assert not np.allclose(np.asarray(ex_own), np.asarray(ex_demo))
    # The update labels its rollout once, in ``batch`` (the minibatches carry the labels).
    _, ro, last_value = tr.collect(tr.init(jax.random.PRNGKey(3)))
    data = tr.batch(ro, last_value)
    np.testing.assert_array_equal(np.asarray(data.expert_action),
                                  np.asarray(expert_labeler(env)(data.obs)))
