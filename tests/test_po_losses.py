"""PO-stage maths on hand-checkable cases: GAE, PPO terms, expert loss, schedules, masks."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_po_toy import ToyEnv

from leed_jax.po.expert import expert_loss
from leed_jax.po.gae import gae
from leed_jax.po.networks import MASKED_LOGIT, ActorCritic
from leed_jax.po.ppo import entropy, ppo_terms
from leed_jax.po.rollout import reset_envs, rollout
from leed_jax.po.schedules import ScheduleParams, expert_weight


def test_gae_matches_a_hand_computed_case():
    # gamma 0.9, lambda 0.8; the episode ends after step 1 (no bootstrap across it).
    reward = jnp.array([1.0, 0.0, 2.0])
    value = jnp.array([0.5, 1.0, 1.5])
    done = jnp.array([False, True, False])
    adv, target = gae(reward, value, done, jnp.array(2.0), gamma=0.9, lam=0.8)
    # delta_2 = 2 + .9*2 - 1.5 = 2.3          A_2 = 2.3
    # delta_1 = 0 + 0 - 1.0 = -1.0            A_1 = -1.0 (done: nothing from t=2)
    # delta_0 = 1 + .9*1.0 - 0.5 = 1.4        A_0 = 1.4 + .72 * -1.0 = 0.68
    np.testing.assert_allclose(adv, [0.68, -1.0, 2.3], rtol=1e-6)
    np.testing.assert_allclose(target, [1.18, 0.0, 3.8], rtol=1e-6)


def test_gae_keeps_trailing_axes_apart():
    # [T, E, N]: each (env, agent) column is its own 1-D GAE.
    key = jax.random.PRNGKey(0)
    r, v = jax.random.normal(key, (2, 5, 2, 3))
    d = jax.random.bernoulli(key, 0.3, (5, 2, 3))
    last = jnp.arange(6.0).reshape(2, 3)
    adv, _ = gae(r, v, d, last, 0.99, 0.95)
    one, _ = gae(r[:, 1, 2], v[:, 1, 2], d[:, 1, 2], last[1, 2], 0.99, 0.95)
    np.testing.assert_allclose(adv[:, 1, 2], one, rtol=1e-6)


def _ppo_case(decision):
    # B = 2 samples, N = 1 agent, A = 2 actions; the new policy is uniform (pi = 0.5).
    logits = jnp.zeros((2, 1, 2))
    return ppo_terms(
        logits,
        value=jnp.array([[1.0], [0.0]]),
        action=jnp.array([[0], [1]]),
        old_log_prob=jnp.log(jnp.array([[0.25], [0.5]])),  # ratios 2 and 1
        old_value=jnp.zeros((2, 1)),
        advantage=jnp.array([[1.0], [-1.0]]),
        target=jnp.ones((2, 1)),
        decision=jnp.array(decision)[:, None],
        clip_eps=0.2,
        normalize=False,
    )


def test_ppo_terms_on_a_hand_checkable_batch():
    t = _ppo_case([True, True])
    # surrogates: min(2*1, 1.2*1) = 1.2 and min(1*-1, 1*-1) = -1 -> loss -(1.2 - 1)/2
    np.testing.assert_allclose(t.policy, [-0.1], rtol=1e-6)
    # values: v=1 (clipped to 0.2) -> 0.5*max(0, .64) = .32; v=0 -> 0.5*1 -> mean .41
    np.testing.assert_allclose(t.value, [0.41], rtol=1e-6)
    np.testing.assert_allclose(t.entropy, [math.log(2)], rtol=1e-6)
    np.testing.assert_allclose(t.clip_frac, [0.5])
    # approx KL: mean of (r - 1) - log r = (1 - log 2 + 0) / 2
    np.testing.assert_allclose(t.approx_kl, [(1 - math.log(2)) / 2], rtol=1e-6)


def test_ppo_policy_loss_leaves_out_non_decision_steps():
    t = _ppo_case([True, False])
    np.testing.assert_allclose(t.policy, [-1.2], rtol=1e-6)  # only the first sample
    np.testing.assert_allclose(t.value, [0.41], rtol=1e-6)  # value loss: all steps
    none = _ppo_case([False, False])
    assert float(none.policy[0]) == 0.0 and float(none.entropy[0]) == 0.0


def test_ppo_advantage_normalisation_is_per_agent():
    # Agent 1's advantages are 1000x agent 0's; per-agent normalisation makes their
    # policy losses equal.
    adv = jnp.array([[1.0, 1000.0], [-1.0, -1000.0], [0.5, 500.0]])
    old = jnp.log(jnp.full((3, 2), 0.5))
    t = ppo_terms(
        jnp.zeros((3, 2, 2)), jnp.zeros((3, 2)), jnp.zeros((3, 2), int), old,
        jnp.zeros((3, 2)), adv, jnp.zeros((3, 2)), jnp.ones((3, 2), bool), 0.2,
    )
    np.testing.assert_allclose(t.policy[0], t.policy[1], atol=1e-6)


def test_expert_loss_on_a_hand_checkable_batch():
    # B = 2, N = 2, A = 3. Agent 0 uniform: nll = log 3. Agent 1: probs (.25, .5, .25).
    logits = jnp.stack(
        [jnp.zeros((2, 3)), jnp.log(jnp.array([[1.0, 2.0, 1.0], [1.0, 2.0, 1.0]]))], axis=1
    )
    action = jnp.array([[0, 1], [2, 0]])
    weight = jnp.array([[1.0, 1.0], [1.0, 0.0]])  # agent 1's second sample is padding
    loss = expert_loss(logits, action, weight)
    np.testing.assert_allclose(loss, [math.log(3), math.log(2)], rtol=1e-6)
    # an agent without demonstrations contributes 0
    np.testing.assert_allclose(expert_loss(logits, action, jnp.zeros((2, 2))), [0.0, 0.0])


def test_expert_loss_drops_a_demonstrated_action_that_the_mask_forbids():
    logits = jnp.array([[[0.0, MASKED_LOGIT]], [[0.0, 0.0]]])  # [B=2, N=1, A=2]
    loss = expert_loss(logits, jnp.array([[1], [0]]), jnp.ones((2, 1)))
    np.testing.assert_allclose(loss, [math.log(2)], rtol=1e-6)


@pytest.mark.parametrize(
    "kind, progress, expected",
    [
        ("constant", 0.7, 2.0),
        ("linear", 0.0, 2.0),
        ("linear", 0.25, 1.0),  # decay_frac 0.5: half way down at 0.25
        ("linear", 0.6, 0.0),
        ("exponential", 0.2, 0.5),  # half-life 0.1: two half-lives
    ],
)
def test_time_schedules(kind, progress, expected):
    p = ScheduleParams(kind, 2.0, decay_frac=0.5, half_life_frac=0.1, adaptive_tol=0.1)
    w = expert_weight(p, jnp.array(progress), jnp.zeros(3), jnp.ones(3, bool), jnp.zeros(3))
    np.testing.assert_allclose(w, [expected] * 3, rtol=1e-6)


def test_adaptive_schedule_fades_each_agent_as_it_reaches_its_demonstrations():
    p = ScheduleParams("adaptive", 1.0, 0.5, 0.1, adaptive_tol=0.1)
    demo = jnp.array([10.0, 10.0, 10.0, 10.0, 10.0])
    own = jnp.array([0.0, 9.45, 10.0, 12.0, 0.0])
    seen = jnp.array([True, True, True, True, False])
    w = expert_weight(p, jnp.array(0.5), own, seen, demo)
    # gaps relative to |R_demo| + 1 = 11: 10/11 (>= tol: full), 0.55/11 = 0.05 (half), 0, < 0;
    # an agent that has not finished an episode yet keeps the full weight.
    np.testing.assert_allclose(w, [1.0, 0.5, 0.0, 0.0, 1.0], rtol=1e-5)


def test_invalid_actions_are_never_sampled():
    env = ToyEnv(num_agents=3, num_actions=4, horizon=6)  # the last action is never available
    policy = ActorCritic(3, env.spec.obs_dim, 4, env.spec.obs_dim, (8,), (8,))
    params = policy.init(jax.random.PRNGKey(0))
    # Make the forbidden action overwhelmingly attractive to the raw network.
    bias = params["actor"]["params"]["Dense_1"]["bias"]
    params["actor"]["params"]["Dense_1"]["bias"] = bias.at[:, -1].set(1e6)
    from leed_jax.envs.wrappers import AutoResetWrapper

    wrapped = AutoResetWrapper(env)
    carry = reset_envs(wrapped, jax.random.PRNGKey(1), 8)
    _, ro = jax.jit(lambda c, k: rollout(wrapped, policy, params, c, k, 30))(
        carry, jax.random.PRNGKey(2)
    )
    actions = np.asarray(ro.transition.action)
    assert actions.max() < 3 and len(np.unique(actions)) == 3
    assert np.isfinite(np.asarray(ro.log_prob)).all()
    # a masked categorical's entropy stays finite and ignores the masked action
    logits = jnp.array([0.0, 0.0, MASKED_LOGIT])
    np.testing.assert_allclose(entropy(logits), math.log(2), rtol=1e-6)
