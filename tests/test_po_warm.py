"""Issue #10's PO pieces on the toy env (and MPE for the time limit): the warm start, the
expert weights that compare like with like, advantages normalised over the whole update, the
time-limit bootstrap and the held-out periodic evaluation. Small networks, few compilations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_po_toy import ToyEnv, toy_demos

from leed_jax.config import ConfigError, TrainConfig
from leed_jax.po.gae import gae
from leed_jax.po.loop import eval_due
from leed_jax.po.rollout import Rollout
from leed_jax.po.trainer import MiniBatchData, demo_accuracy, make_train
from leed_jax.types import Transition

CFG = TrainConfig(
    algo="leed", num_envs=2, num_steps=6, total_steps=2 * 6 * 8, num_minibatches=2,
    update_epochs=1, actor_hidden=(16,), critic_hidden=(16,), expert_batch_size=8,
    warm_start_steps=3000, warm_start_batch=32, warm_critic_updates=2, warm_critic_epochs=8,
    eval_envs=2, progress=False,
)


def _zeros_state(tr):
    """A state of zeros with the trainer's shapes, without running (or compiling) ``init``:
    op-by-op dispatch and compiles are what cost time on a loaded 2-core machine."""
    shapes = jax.eval_shape(tr.init, jax.random.PRNGKey(0))
    return jax.tree_util.tree_map(lambda x: np.zeros(x.shape, x.dtype), shapes)


def _demos(env, per_agent=8):
    # 8 decisions per agent: the whole buffer is each step's batch (the small-buffer path).
    return jax.tree_util.tree_map(jnp.asarray, toy_demos(env, per_agent=per_agent))


@pytest.fixture(scope="module")
def warm():
    """leed's warm start: the actor on the demonstrations, then the critic (one compile)."""
    env = ToyEnv()
    demos = _demos(env)
    tr = make_train(CFG, env, demos)

    def run(key):  # init and warm start in one program: one compile
        state = tr.init(key)
        return (state, *tr.warm_start(state, demos))

    return (tr, *jax.jit(run)(jax.random.PRNGKey(0))), demos


def test_warm_start_clones_the_demonstrations_and_stops_on_a_plateau(warm):
    (tr, before, after, m), demos = warm
    assert float(demo_accuracy(tr.policy, before.params, demos)) < 0.6
    # The greedy policy takes the demonstrated action on (nearly) every demo state.
    assert float(m["warm_demo_accuracy"]) >= 0.97
    assert float(demo_accuracy(tr.policy, after.params, demos)) >= 0.97
    assert float(m["warm_expert_loss_end"]) < 0.1 * float(m["warm_expert_loss_start"])
    # It stopped when the loss stopped improving, before the step cap.
    assert 100 <= int(m["warm_steps"]) < CFG.warm_start_steps
    assert bool(after.warm) and not bool(before.warm)


def test_warm_start_tol_zero_runs_every_step(warm):
    # warm_start_tol=0 turns the plateau stop off: the fit runs past where the default stopped
    # (MPE spread needs this, README issue #10), to exactly warm_start_steps.
    (_, _, _, m), demos = warm
    cap = int(m["warm_steps"]) + 200
    cfg = CFG.replace(warm_start_tol=0.0, warm_start_steps=cap, warm_critic_updates=0)
    tr = make_train(cfg, ToyEnv(), demos)
    _, m0 = jax.jit(lambda k: tr.warm_start(tr.init(k), demos))(jax.random.PRNGKey(0))
    assert int(m0["warm_steps"]) == cap


def test_critic_warm_up_moves_the_critic_only(warm):
    (tr, before, after, m), _ = warm
    # The critic warm-up left the cloned actor exactly as it was...
    assert float(m["warm_actor_change"]) == 0.0
    # ...and fitted the critic to the warm policy's returns.
    assert float(m["warm_value_loss_end"]) < 0.5 * float(m["warm_value_loss_start"])
    changed = [not np.array_equal(a, b) for a, b in zip(
        jax.tree_util.tree_leaves(before.params["critic"]),
        jax.tree_util.tree_leaves(after.params["critic"]))]
    assert all(changed)
    for x, y in zip(jax.tree_util.tree_leaves(after.teacher_critic["critic"]),
                    jax.tree_util.tree_leaves(after.params["critic"]), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # The warm-up's env steps come out of the budget.
    assert tr.config.warm_env_steps == 2 * CFG.batch_steps
    assert tr.config.num_updates == (CFG.total_steps - 2 * CFG.batch_steps) // CFG.batch_steps


def test_greedy_weight_compares_the_greedy_evaluation_with_the_demonstrations():
    env = ToyEnv()
    demos = _demos(env)  # agent_return 3.0 for every agent
    tr = make_train(CFG.replace(expert_schedule="greedy", expert_adaptive_tol=0.1), env, demos)
    state = _zeros_state(tr)
    weights = jax.jit(tr.expert_weights)
    demo_return = demos.agent_return
    # Before the first evaluation: full weight, even with a training-return EMA at the demos'.
    state = state._replace(return_ema=np.full((3,), 3.0, np.float32),
                           return_seen=np.ones((3,), bool))
    np.testing.assert_allclose(weights(state, demo_return), 1.0)
    # Agent 0 far behind, agent 1 level with its demos, agent 2 ahead of them.
    state = state._replace(eval_return=np.array([1.0, 3.0, 3.5], np.float32),
                           eval_seen=np.ones((), bool))
    np.testing.assert_allclose(weights(state, demo_return), [1.0, 0.0, 0.0])


def test_qfilter_keeps_a_demonstration_only_where_the_teacher_is_rated_higher():
    env = ToyEnv()
    demos = _demos(env)
    tr = make_train(CFG.replace(expert_schedule="qfilter"), env, demos)
    params = jax.device_get(jax.jit(tr.policy.init)(jax.random.PRNGKey(1)))
    d_obs = np.swapaxes(np.asarray(demos.obs), 0, 1)  # [B, N, D]
    d_weight = np.ones(d_obs.shape[:2], np.float32)

    def shifted(delta):  # the critic's output bias moved by delta for agent 0 only
        crit = jax.tree_util.tree_map(np.array, params["critic"])
        crit["params"]["Dense_1"]["bias"][0] += delta
        return {"critic": crit}

    qfilter = jax.jit(tr.qfilter)
    w, kept = qfilter(params, shifted(+1.0), d_obs, d_weight)
    np.testing.assert_allclose(w, 1.0)
    w, kept = qfilter(params, shifted(-1.0), d_obs, d_weight)
    np.testing.assert_allclose(w[:, 0], 0.0)  # the policy is rated above its teacher: dropped
    np.testing.assert_allclose(w[:, 1:], 1.0)
    np.testing.assert_allclose(kept, [0.0, 1.0, 1.0])
    with pytest.raises(ConfigError, match="qfilter"):
        CFG.replace(expert_schedule="qfilter", warm_start_steps=0).validate()


def _fake_rollout(seed, t, e, n, d, a, decision_rate=0.3):
    rng = np.random.default_rng(seed)
    f32 = lambda *shape: rng.normal(size=shape).astype(np.float32)  # noqa: E731
    tr = Transition(
        obs=f32(t, e, n, d), action=np.zeros((t, e, n), np.int32),
        avail=np.ones((t, e, n, a), bool), reward=f32(t, e, n),
        done=rng.uniform(size=(t, e, n)) < 0.1, decision=rng.uniform(size=(t, e, n)) < decision_rate,
    )
    return Rollout(
        transition=tr, log_prob=np.full((t, e, n), -1.0, np.float32), value=f32(t, e, n),
        global_state=None, episode_end=np.zeros((t, e), bool),
        episode_return=np.zeros((t, e, n), np.float32), metrics={},
    )


def test_advantages_are_normalised_per_agent_over_the_whole_update():
    env = ToyEnv()
    tr = make_train(CFG.replace(algo="ippo", num_envs=4, num_steps=16), env)
    state = _zeros_state(tr)
    state = state._replace(params=jax.device_get(jax.jit(tr.policy.init)(jax.random.PRNGKey(0))))
    ro = _fake_rollout(3, 16, 4, 3, env.spec.obs_dim, env.spec.num_actions)
    data = jax.jit(tr.batch)(ro, np.zeros((4, 3), np.float32))
    adv, dec = np.asarray(data.advantage), np.asarray(data.decision)
    for i in range(3):
        x = adv[dec[:, i], i]
        assert len(x) > 5
        np.testing.assert_allclose(x.mean(), 0.0, atol=1e-5)
        np.testing.assert_allclose(x.std(), 1.0, atol=1e-4)
    # The loss uses them as they are: an agent with one decision in a minibatch still gets
    # its signal (per-minibatch normalisation would make it exactly 0).
    # All actions available and equally likely at a near-uniform init: old log-prob = log(1/A)
    # up to the init's tiny logits, so the ratio is ~1.
    logits = jax.jit(tr.policy.logits)(state.params, data.obs[:2], data.avail[:2])
    mb = MiniBatchData(
        obs=data.obs[:2], avail=data.avail[:2], action=np.zeros((2, 3), np.int32),
        log_prob=jax.nn.log_softmax(np.asarray(logits))[..., 0], value=np.zeros((2, 3), np.float32),
        advantage=np.array([[2.0, 1.0, -1.0], [0.0, 0.0, 0.0]], np.float32),
        target=np.zeros((2, 3), np.float32),
        decision=np.array([[True, True, True], [False, False, False]]), global_state=None,
    )
    _, (terms, _, _) = jax.jit(tr.loss)(state.params, mb, None, np.zeros(3, np.float32))
    np.testing.assert_allclose(terms.policy, [-2.0, -1.0, 1.0], rtol=1e-5)


def test_time_limit_bootstrap_changes_targets_only_in_the_cut_episode():
    gamma, lam = 0.9, 0.8
    reward = jnp.array([1.0, 0.5, 2.0, 1.0, 0.0])
    value = jnp.array([0.3, 0.2, 0.1, 0.4, 0.6])
    done = jnp.array([False, True, False, False, True])  # episode A: steps 0-1; B: steps 2-4
    boot = jnp.array([0.0, 0.0, 0.0, 0.0, 0.0])
    # Episode B (steps 2-4) is cut by the time limit with V(s_T) = 5; A ends for real.
    cut = boot.at[4].set(5.0)
    a0, t0 = gae(reward, value, done, jnp.asarray(7.0), gamma, lam)
    a1, t1 = gae(reward, value, done, jnp.asarray(7.0), gamma, lam, bootstrap=cut)
    diff = np.asarray(t1 - t0)
    np.testing.assert_allclose(diff[:2], 0.0)  # the terminal episode is untouched
    np.testing.assert_allclose(diff[4], gamma * 5.0, rtol=1e-6)
    np.testing.assert_allclose(diff[3], gamma * lam * gamma * 5.0, rtol=1e-6)
    np.testing.assert_allclose(diff[2], (gamma * lam) ** 2 * gamma * 5.0, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(a1 - a0), diff)


def test_evaluations_are_due_on_schedule_and_share_the_held_out_episodes():
    cfg = CFG.replace(eval_every=3, total_steps=CFG.batch_steps * 10, warm_critic_updates=0)
    assert [eval_due(cfg, u, u + 2) for u in (0, 2, 4, 6, 8)] == [False, True, True, False, True]
    assert all(eval_due(cfg.replace(eval_every=0), u, u + 1) for u in range(5))
    env = ToyEnv()
    tr = make_train(cfg.replace(algo="ippo", eval_envs=8), env)
    a = _zeros_state(tr)
    a = a._replace(params=jax.device_get(jax.jit(tr.policy.init)(jax.random.PRNGKey(0))))
    b = a._replace(rng=np.array([0, 7], np.uint32))  # another seed's state, the same policy
    ev = jax.jit(tr.evaluate_state)
    (sa, ea), (sb, eb) = ev(a), ev(b)
    np.testing.assert_array_equal(np.asarray(ea["episode_return"]), np.asarray(eb["episode_return"]))
    assert bool(sa.eval_seen) and bool(sb.eval_seen)
    np.testing.assert_allclose(sa.eval_return, ea["agent_return"])
    # The toy env (like traffic) observes time and reports no truncation: no bootstrap.
    # (MPE's time-limit ends: tests/test_jaxmarl_adapter.py.)
    _, ro, _ = jax.eval_shape(tr.collect, a)
    assert ro.bootstrap is None


def test_warm_start_defaults_come_from_the_env_family():
    """Left at None, the warm start's length and plateau stop are the env family's (MPE needs a
    long fit without the stop, README issue #10); a value the user gives is kept."""
    c = TrainConfig()
    assert c.warm_start_steps is None and c.warm_start_tol is None and c.warm_start
    mpe, traffic, other = c.for_family("mpe"), c.for_family("traffic"), c.for_family("smax")
    assert (mpe.warm_start_steps, mpe.warm_start_tol) == (40_000, 0.0)
    assert (traffic.warm_start_steps, traffic.warm_start_tol) == (3000, 0.01)
    assert (other.warm_start_steps, other.warm_start_tol) == (3000, 0.01)
    mine = c.replace(warm_start_steps=7, warm_start_tol=0.5).for_family("mpe")
    assert (mine.warm_start_steps, mine.warm_start_tol) == (7, 0.5)
    assert not c.replace(warm_start_steps=0).warm_start
