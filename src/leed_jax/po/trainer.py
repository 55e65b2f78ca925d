"""The PO stage: one trainer for LEED, IPPO, MAPPO and BC.

``make_train(config, env, demos)`` builds a ``Trainer`` whose ``update(state, demos) ->
(state, metrics)`` is pure and jit-able (``chunk`` scans it; ``demos`` is the ``DemoBuffer``,
passed as an argument so that one compiled program serves every buffer): a rollout
(``lax.scan``), GAE, and epochs of minibatch updates of every agent's own loss

    L_i = PPO_i  +  w_i(t) · E_i,      E_i = −log π_i(a_demo | o_demo) on agent i's demos,

summed over agents (each term averaged over agent i's own data, so agent i's gradient depends
on agent i's data only). The methods are options of this one trainer:

    leed   PPO + weighted expert loss            ippo   PPO only (w = 0)
    mappo  PPO with a centralised critic         bc     expert loss only
           (own obs + the env's global state)

The weight ``w_i(t)`` and the return statistics it reads are the schedule's
(``leed_jax.po.schedules``). This module is the compiled program only: ``prepare``
(``leed_jax.po.prepare``) assembles a run once, and the host loop (``leed_jax.po.loop``:
``train``) compiles chunks of updates, runs them, and between chunks touches files,
progress, logs and checkpoints.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from leed_jax.config import TrainConfig
from leed_jax.dg.buffer import check_fits, sample_demos
from leed_jax.dg.errors import DemoBufferError
from leed_jax.po.expert import expert_loss
from leed_jax.po.gae import gae
from leed_jax.po.networks import ActorCritic, Params, critic_input
from leed_jax.po.optim import Optimizer, make_optimizer, per_agent_norm
from leed_jax.po.ppo import masked_mean, normalize_advantage, ppo_terms
from leed_jax.po.rollout import EnvCarry, reset_envs, rollout
from leed_jax.po.schedules import ScheduleParams, expert_weight, observe_returns, schedule_of

# The trainer's former name for a buffer that does not fit; one error type now.
DemoMismatchError = DemoBufferError


class TrainState(NamedTuple):
    """Everything an update reads and writes; checkpointed whole."""

    params: Params  # per-agent leaves [N, ...] (or shared + "embed" [N, K])
    opt_state: Any  # per-agent like params
    env: EnvCarry  # env states [E], obs [E, N, D], running returns [E, N]
    rng: jax.Array  # PRNGKey (uint32 [2])
    update: jax.Array  # [] int32 updates done
    return_ema: jax.Array  # [N] EMA of each agent's own episodic return
    return_seen: jax.Array  # [N] bool: the EMA has seen an episode
    eval_return: jax.Array  # [N] each agent's return in the latest greedy evaluation
    eval_seen: jax.Array  # [] bool: an evaluation has run
    teacher_critic: Params  # the critic (and embedding) after the warm start: V of the
    #                         demonstrator's clone, the reference of the qfilter weight
    warm: jax.Array  # [] bool: the warm start is done (or not wanted)


class MiniBatchData(NamedTuple):
    """Flattened rollout samples, ``[S, N, ...]`` with ``S = T * E`` (or a minibatch of it)."""

    obs: jax.Array  # [S, N, D]
    avail: jax.Array  # [S, N, A]
    action: jax.Array  # [S, N]
    log_prob: jax.Array  # [S, N]
    value: jax.Array  # [S, N]
    advantage: jax.Array  # [S, N]
    target: jax.Array  # [S, N]
    decision: jax.Array  # [S, N]
    global_state: jax.Array | None  # [S, G] (centralised critic only)
    expert_action: jax.Array | None = None  # [S, N] the expert's label (expert_own_states)


def _wrap_autoreset(env):
    from leed_jax.envs.wrappers import AutoResetWrapper

    return env if isinstance(env, AutoResetWrapper) else AutoResetWrapper(env)


@dataclasses.dataclass(frozen=True, eq=False)
class Trainer:
    """Static parts of a run; ``init``/``update``/``chunk``/``evaluate`` are pure functions
    of arrays (jit them, vmap them over seeds)."""

    config: TrainConfig
    env: Any  # auto-resetting
    policy: ActorCritic
    optimizer: Optimizer
    schedule: ScheduleParams
    centralised: bool
    use_ppo: bool
    use_expert: bool
    full_demos: bool = False  # the expert loss uses the whole demo buffer (see sample_demo)
    labeler: Any = None  # DAgger: the family's expert, obs [..., N, D] -> action [..., N]

    @classmethod
    def build(cls, config: TrainConfig, env, demos=None) -> Trainer:
        """The trainer of ``config`` for ``env`` (wrapped in ``AutoResetWrapper`` unless it
        is), without checks: the caller has validated ``config`` and fitted ``demos`` to
        ``env`` (``make_train`` and ``prepare`` do, once)."""
        config = config.for_family(getattr(env, "family", None))  # warm-start defaults
        env = _wrap_autoreset(env)
        spec = env.spec
        use_expert = config.algo in ("leed", "bc")
        centralised = config.algo == "mappo"
        policy = ActorCritic(
            num_agents=spec.num_agents,
            obs_dim=spec.obs_dim,
            num_actions=spec.num_actions,
            critic_dim=spec.obs_dim + (spec.global_state_dim if centralised else 0),
            actor_hidden=tuple(config.actor_hidden),
            critic_hidden=tuple(config.critic_hidden),
            share=config.share_params,
            embed_dim=config.agent_embed_dim,
        )
        labeler = dagger_labeler(env) if config.needs_labeler else None
        lr: Any = config.lr
        if config.anneal_lr:
            steps = config.num_updates * config.update_epochs * config.num_minibatches
            lr = optax.linear_schedule(config.lr, 0.0, steps)
        return cls(
            config=config,
            env=env,
            policy=policy,
            optimizer=make_optimizer(lr, config.max_grad_norm, per_agent=not config.share_params),
            schedule=schedule_of(config),
            centralised=centralised,
            use_ppo=config.algo != "bc",
            use_expert=use_expert,
            full_demos=use_expert and demos.obs.shape[1] <= config.expert_batch_size,
            labeler=labeler,
        )

    @property
    def num_agents(self) -> int:
        return self.env.spec.num_agents

    # ------------------------------------------------------------------ init
    def init(self, key: jax.Array) -> TrainState:
        k_params, k_env, k_rng = jax.random.split(key, 3)
        params = self.policy.init(k_params)
        n = self.num_agents
        return TrainState(
            params=params,
            opt_state=self.optimizer.init(params),
            env=reset_envs(self.env, k_env, self.config.num_envs),
            rng=k_rng,
            update=jnp.zeros((), jnp.int32),
            return_ema=jnp.zeros((n,), jnp.float32),
            return_seen=jnp.zeros((n,), bool),
            eval_return=jnp.zeros((n,), jnp.float32),
            eval_seen=jnp.zeros((), bool),
            teacher_critic=_critic_part(params),
            warm=jnp.asarray(not self.config.warm_start),
        )

    # ------------------------------------------------------------------ losses
    def loss(self, params: Params, mb: MiniBatchData, demo, weight: jax.Array, teacher=None):
        """Sum over agents of each agent's loss; aux: per-agent PPO terms, expert loss and the
        fraction of demonstrations kept by the qfilter (1 for the other schedules).

        Advantages arrive normalised over the whole update (``batch``), not per minibatch."""
        c = self.config
        logits = self.policy.logits(params, mb.obs, mb.avail)  # [B, N, A]
        value = self.policy.value(params, critic_input(mb.obs, mb.global_state))  # [B, N]
        terms = ppo_terms(
            logits, value, mb.action, mb.log_prob, mb.value, mb.advantage, mb.target,
            mb.decision, c.clip_eps, normalize=False,
        )
        per_agent = jnp.zeros((self.num_agents,), jnp.float32)
        if self.use_ppo:
            per_agent += terms.policy + c.vf_coef * terms.value - c.ent_coef * terms.entropy
        ex = jnp.zeros_like(per_agent)
        kept = jnp.ones_like(per_agent)
        if self.use_expert:
            d_obs, d_action, d_avail, d_weight = (jnp.swapaxes(x, 0, 1) for x in demo)  # [B, N]
            d_logits = self.policy.logits(params, d_obs, d_avail)
            if self.schedule.kind == "qfilter":
                d_weight, kept = self.qfilter(params, teacher, d_obs, d_weight)
            ex = expert_loss(d_logits, d_action, d_weight)
            if c.expert_own_states > 0:
                # DAgger in training: the expert's action on the states this policy reached
                # (its own rollout), on the logits computed above.
                own = expert_loss(logits, mb.expert_action, mb.decision.astype(jnp.float32))
                ex = (1 - c.expert_own_states) * ex + c.expert_own_states * own
            per_agent += weight * ex
        return per_agent.sum(), (terms, ex, kept)

    def qfilter(self, params: Params, teacher: Params, d_obs: jax.Array, d_weight: jax.Array):
        """The Q-filter of Nair et al. 2018 ("Overcoming Exploration in RL with
        Demonstrations"), with state values: imitate demonstration ``(o, a_demo)`` only where
        ``V_teacher(o) >= V_pi(o)``. ``V_teacher`` is the critic fitted in the warm start to the
        returns of the demonstrations' clone (so it estimates following the demonstrator from
        ``o``); ``V_pi`` is the current critic (the current stochastic policy, fitted the same
        way): both stochastic-policy values from one kind of regression, like with like.
        Where the agent's own policy is rated higher, its demonstration is dropped, so the
        agent can pass its teacher there. Returns the filtered weights ``[B, N]`` and the kept
        fraction ``[N]``."""
        v_teacher = self.policy.value(teacher, d_obs)  # [B, N]
        v_pi = self.policy.value(params, d_obs)
        keep = jax.lax.stop_gradient(v_teacher >= v_pi)
        kept = masked_mean(keep.astype(jnp.float32), d_weight > 0)
        return d_weight * keep, kept

    def expert_weights(self, state: TrainState, demo_return: jax.Array | None) -> jax.Array:
        """The schedule's weight ``[N]`` at ``state``: ``greedy`` reads the latest greedy
        evaluation, the others the training-return EMA (``demo_return [N]``, None without
        demonstrations)."""
        progress = state.update.astype(jnp.float32) / self.config.num_updates
        if self.schedule.kind == "greedy":
            seen = jnp.broadcast_to(state.eval_seen, (self.num_agents,))
            return expert_weight(self.schedule, progress, state.eval_return, seen, demo_return)
        return expert_weight(
            self.schedule, progress, state.return_ema, state.return_seen, demo_return
        )

    # ------------------------------------------------------------------ update
    def collect(self, state: TrainState):
        """Rollout of the current policy -> ``(carry, rollout, last_value [E, N])``."""
        c = self.config
        _, k_roll, _ = jax.random.split(state.rng, 3)
        carry, ro = rollout(
            self.env, self.policy, state.params, state.env, k_roll, c.num_steps,
            centralised=self.centralised,
        )
        last_gs = jax.vmap(self.env.global_state)(carry.state) if self.centralised else None
        last_value = self.policy.value(state.params, critic_input(carry.obs, last_gs))
        return carry, ro, last_value

    def batch(self, ro, last_value) -> MiniBatchData:
        """GAE and standardised advantages -> the update's samples, flattened to
        ``[S, N, ...]``."""
        c = self.config
        tr = ro.transition
        advantage, target = gae(
            tr.reward, ro.value, tr.done, last_value, discount_per_step(c, self.env), c.gae_lambda,
            bootstrap=ro.bootstrap,
        )

        flat = lambda x: x.reshape((-1,) + x.shape[2:])
        # Each agent's advantages standardised over its decision steps of the whole update,
        # before minibatching: a minibatch with 0–2 decisions of an agent would otherwise give
        # that agent exactly 0 or ±1 (no signal), as on traffic-grid-large with one env.
        advantage = normalize_advantage(flat(advantage), flat(tr.decision))  # [S, N]
        data = MiniBatchData(
            obs=flat(tr.obs), avail=flat(tr.avail), action=flat(tr.action),
            log_prob=flat(ro.log_prob), value=flat(ro.value), advantage=advantage,
            target=flat(target), decision=flat(tr.decision),
            global_state=None if ro.global_state is None else flat(ro.global_state),
            # Labelled once per update (not per epoch and minibatch): expert_own_states.
            expert_action=(self.labeler(flat(tr.obs))
                           if self.use_expert and self.config.expert_own_states > 0 else None),
        )
        return data

    def shuffle(self, data: MiniBatchData, key: jax.Array) -> MiniBatchData:
        """One epoch's minibatches: a permutation of the samples -> ``[M, B, N, ...]``."""
        c = self.config
        perm = jax.random.permutation(key, c.batch_steps)
        shape = (c.num_minibatches, c.minibatch_size)
        return jax.tree_util.tree_map(lambda x: x[perm].reshape(shape + x.shape[1:]), data)

    def sample_demo(self, key: jax.Array, demos):
        """One minibatch's demonstrations: ``obs [N, B, D]``, ``action [N, B]``, ``avail [N, B,
        A]``, ``weight [N, B]``.

        When the buffer holds no more decisions per agent (``M``) than ``expert_batch_size``
        (traffic: one episode's 4–16 decisions), every minibatch uses the whole buffer, each
        agent's valid entries weighted equally: the exact mean that sampling
        ``expert_batch_size`` of them with replacement only estimates, at ``M`` rows instead
        of ``expert_batch_size`` (e.g. 16 instead of 64) and without a gather. Larger buffers
        are sampled (``expert_batch_size`` per agent, uniformly among its decisions)."""
        if self.full_demos:
            return demos.obs, demos.action, demos.avail, demos.valid.astype(jnp.float32)
        return sample_demos(key, demos, self.config.expert_batch_size)

    def minibatch_step(self, carry, mb: MiniBatchData, demo, weight: jax.Array, teacher=None):
        """Gradient of every agent's loss on one minibatch and one optimiser step."""
        params, opt_state = carry
        grad = jax.value_and_grad(self.loss, has_aux=True)
        (loss, (terms, ex, kept)), grads = grad(params, mb, demo, weight, teacher)
        updates, opt_state = self.optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        gnorm = optax.tree.norm(grads) if self.policy.share else per_agent_norm(grads).mean()
        stats = {"loss": loss, "expert_loss": ex.mean(), "grad_norm": gnorm,
                 "demo_kept": kept.mean()}
        stats.update({k: v.mean() for k, v in terms._asdict().items()})
        return (params, opt_state), stats

    def update(self, state: TrainState, demos=None) -> tuple[TrainState, dict]:
        """One PPO(+expert) update: rollout, GAE, ``update_epochs`` x ``num_minibatches``
        minibatch steps. ``demos``: the ``DemoBuffer`` (needed by leed and bc)."""
        c = self.config
        rng, _, k_epochs = jax.random.split(state.rng, 3)
        carry, ro, last_value = self.collect(state)
        data = self.batch(ro, last_value)
        demo_return = None if demos is None else demos.agent_return.astype(jnp.float32)
        weight = self.expert_weights(state, demo_return)  # at the state before this update
        return_ema, return_seen = observe_returns(
            self.schedule, state.return_ema, state.return_seen, ro.episode_return, ro.episode_end
        )

        def minibatch_step(carry, xs):
            mb, key = xs
            demo = self.sample_demo(key, demos) if self.use_expert else None
            return self.minibatch_step(carry, mb, demo, weight, state.teacher_critic)

        def epoch(carry, key):
            k_perm, k_demo = jax.random.split(key)
            mbs = self.shuffle(data, k_perm)
            keys = jax.random.split(k_demo, c.num_minibatches)
            return jax.lax.scan(minibatch_step, carry, (mbs, keys))

        (params, opt_state), stats = jax.lax.scan(
            epoch, (state.params, state.opt_state), jax.random.split(k_epochs, c.update_epochs)
        )
        tr = ro.transition
        ends = ro.episode_end.astype(jnp.float32)  # [T, E]
        metrics = {k: v.mean() for k, v in stats.items()}
        metrics.update(
            expert_weight=weight.mean(),
            episodes=ends.sum(),
            return_sum=(ro.episode_return.mean(-1) * ends).sum(),
            env={k: (v * ends).sum() for k, v in ro.metrics.items()},
            reward_mean=tr.reward.mean(),
            decision_frac=tr.decision.astype(jnp.float32).mean(),
            valid=jnp.ones((), jnp.float32),
        )
        new_state = state._replace(
            params=params, opt_state=opt_state, env=carry, rng=rng, update=state.update + 1,
            return_ema=return_ema, return_seen=return_seen,
        )
        return new_state, metrics

    def chunk(self, state: TrainState, demos=None) -> tuple[TrainState, dict]:
        """``chunk_updates`` updates as one ``lax.scan`` (metrics stacked ``[U]``). Updates past
        ``num_updates`` are skipped (``metrics["valid"] == 0``), so every chunk has the same
        compiled program."""
        shapes = jax.eval_shape(self.update, state, demos)[1]
        skipped = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

        def body(s, _):
            return jax.lax.cond(
                s.update < self.config.num_updates,
                lambda s: self.update(s, demos),
                lambda s: (s, skipped),
                s,
            )

        return jax.lax.scan(body, state, None, length=self.config.chunk_updates)

    # ------------------------------------------------------------------ seed-batched, jitted
    def seeds_init(self):
        """``jit(vmap(init))``: keys ``[K, 2]`` -> a state with a leading seed axis."""
        return jax.jit(jax.vmap(self.init))

    def seeds_chunk(self):
        """``jit(vmap(chunk))`` over the seed axis of the state (donated: updated in place)."""
        return jax.jit(jax.vmap(self.chunk, in_axes=(0, None)), donate_argnums=0)

    # ------------------------------------------------------------------ warm start
    def warm_start(self, state: TrainState, demos) -> tuple[TrainState, dict]:
        """The jump-start, before the first rollout (leed and bc; pure, jit-able):

        1. fit each agent's actor to its own demonstrations — Adam on the expert loss alone
           (``warm_start_lr``, ``warm_start_batch`` samples per agent, or the whole buffer when
           it is that small), in windows of 100 steps, stopping when a window improves the mean
           loss by less than ``warm_start_tol`` of it and 1e-3 nats (or at
           ``warm_start_steps``; ``warm_start_tol=0``: always at ``warm_start_steps``);
           then, with ``warm_start_dagger_rounds > 0``, DAgger rounds on the states the clone
           reaches itself, labelled by the env family's expert (``_dagger``);
        2. (leed) fit each agent's critic to the returns of the warm policy:
           ``warm_critic_updates`` rollouts, each followed by ``warm_critic_epochs`` epochs of
           the value loss alone (GAE(λ) targets, no clipping), while the actor stays frozen —
           PPO started from a cloned policy and a critic of noise would take its first steps on
           noise advantages and undo the clone.

        Both use their own Adam states; the PPO optimiser starts fresh afterwards. The critic
        it leaves is also kept as ``teacher_critic`` (the qfilter's reference). Metrics are
        scalars (per seed under vmap)."""
        c = self.config
        opt = make_optimizer(c.warm_start_lr, c.max_grad_norm, per_agent=not self.policy.share)
        window = min(100, c.warm_start_steps)
        max_windows = max(1, c.warm_start_steps // window)

        def demo_batch(key):
            if self.full_demos:
                return demos.obs, demos.action, demos.avail, demos.valid.astype(jnp.float32)
            return sample_demos(key, demos, c.warm_start_batch)

        def bc_step(carry, key):
            return self._expert_step(opt, carry, demo_batch(key))

        def window_body(carry):
            params, opt_state, key, i, prev, _ = carry
            key, k = jax.random.split(key)
            (params, opt_state), losses = jax.lax.scan(
                bc_step, (params, opt_state), jax.random.split(k, window)
            )
            cur = losses.mean()
            # tol 0: no plateau stop. On MPE spread the loss rests near 0.55 nats for a while
            # before the clone learns the planner's agent-landmark assignment; a 100-step
            # window takes that for the end (README, issue #10).
            stalled = (c.warm_start_tol > 0) & (
                (prev - cur) < jnp.maximum(c.warm_start_tol * jnp.abs(prev), 1e-3))
            return params, opt_state, key, i + 1, cur, stalled

        def window_cond(carry):
            *_, i, _, stalled = carry
            return (i < max_windows) & ~stalled

        rng, k_bc, k_critic = jax.random.split(state.rng, 3)
        full = self.policy.logits(state.params, jnp.swapaxes(demos.obs, 0, 1),
                                  jnp.swapaxes(demos.avail, 0, 1))
        loss0 = expert_loss(full, jnp.swapaxes(demos.action, 0, 1),
                            jnp.swapaxes(demos.valid, 0, 1).astype(jnp.float32)).mean()
        params, _, _, windows, loss_end, _ = jax.lax.while_loop(
            window_cond, window_body,
            (state.params, opt.init(state.params), k_bc, jnp.zeros((), jnp.int32),
             jnp.asarray(jnp.inf, jnp.float32), jnp.zeros((), bool)),
        )
        metrics = {
            "warm_steps": windows * window,
            "warm_expert_loss_start": loss0,
            "warm_expert_loss_end": loss_end,
        }
        if c.warm_dagger:
            # Its own key, so that runs without DAgger keep the keys (and results) they had.
            params, dagger_metrics = self._dagger(params, demos, jax.random.fold_in(k_bc, 7))
            metrics.update(dagger_metrics)
        metrics["warm_demo_accuracy"] = demo_accuracy(self.policy, params, demos)
        state = state._replace(params=params, rng=rng)
        if c.warm_critic:
            actor = state.params["actor"]
            state, critic_metrics = self._warm_critic(state, demos, k_critic)
            metrics.update(critic_metrics)
            # 0 by construction (the value loss has no actor gradient); checked in the tests.
            metrics["warm_actor_change"] = optax.tree.norm(
                jax.tree_util.tree_map(jnp.subtract, state.params["actor"], actor))
        state = state._replace(teacher_critic=_critic_part(state.params), warm=jnp.ones((), bool))
        return state, metrics

    def _expert_step(self, opt, carry, demo):
        """One ``opt`` step of the expert loss alone (the warm start's fit and DAgger's) on
        ``demo`` = ``obs [N, B, D]``, ``action [N, B]``, ``avail [N, B, A]``, ``weight [N, B]``:
        ``((params, opt_state), mean loss per agent)``."""
        params, opt_state = carry

        def loss(p):
            d_obs, d_action, d_avail, d_weight = (jnp.swapaxes(x, 0, 1) for x in demo)
            return expert_loss(self.policy.logits(p, d_obs, d_avail), d_action, d_weight).sum()

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), value / self.num_agents

    def _dagger(self, params: Params, demos, key: jax.Array):
        """DAgger after the fit (Ross, Gordon & Bagnell 2011, "A Reduction of Imitation
        Learning and Structured Prediction to No-Regret Online Learning"): a clone fitted on
        the expert's trajectories errs on the states its own mistakes lead to, which the
        demonstrations never show (compounding error). Each of ``warm_start_dagger_rounds``
        rounds runs the current clone greedily for one episode in ``warm_start_dagger_envs``
        fresh envs, has the family's expert (``labeler``) label every state it visited,
        adds them to an aggregate, and fits ``warm_start_dagger_steps`` Adam steps of the
        expert loss on batches of ``warm_start_batch`` per agent, a ``warm_start_dagger_frac``
        share of them drawn from the aggregate and the rest from the demonstrations. The
        aggregate has a fixed size (all rounds), so this is one compiled scan."""
        c = self.config
        n, horizon = self.num_agents, self.env.spec.horizon
        per_round = c.warm_start_dagger_envs * horizon
        cap = c.warm_start_dagger_rounds * per_round
        b_new = 0 if c.warm_start_dagger_frac == 0 else max(
            1, round(c.warm_start_batch * c.warm_start_dagger_frac))
        b_demo = c.warm_start_batch - b_new
        opt = make_optimizer(c.warm_start_lr, c.max_grad_norm, per_agent=not self.policy.share)
        agent_major = lambda x: jnp.swapaxes(x.reshape((per_round, n) + x.shape[3:]), 0, 1)

        def collect(params, k):
            k_reset, k_roll = jax.random.split(k)
            carry = reset_envs(self.env, k_reset, c.warm_start_dagger_envs)
            _, ro = rollout(self.env, self.policy, params, carry, k_roll, horizon,
                            centralised=self.centralised, greedy=True)
            tr = ro.transition
            label = self.labeler(tr.obs)  # [T, E, N]
            dec = tr.decision
            agree = ((tr.action == label) & dec).sum() / jnp.maximum(dec.sum(), 1)
            return (agent_major(tr.obs), agent_major(label), agent_major(tr.avail),
                    agent_major(dec).astype(jnp.float32)), agree

        def fit_step(buf, filled):
            def step(carry, k):
                k_demo, k_new = jax.random.split(k)
                d = sample_demos(k_demo, demos, b_demo)  # obs [N, b, D], action, avail, weight
                idx = jax.random.randint(k_new, (n, b_new), 0, filled)
                g = tuple(jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), 1)
                          for x in buf)
                return self._expert_step(opt, carry,
                                         tuple(jnp.concatenate([a, b], 1) for a, b in zip(d, g)))
            return step

        def one_round(carry, xs):
            params, buf = carry
            r, k = xs
            k_collect, k_fit = jax.random.split(k)
            new, agree = collect(params, k_collect)
            buf = tuple(jax.lax.dynamic_update_slice_in_dim(b, x, r * per_round, axis=1)
                        for b, x in zip(buf, new))
            (params, _), losses = jax.lax.scan(
                fit_step(buf, (r + 1) * per_round), (params, opt.init(params)),
                jax.random.split(k_fit, c.warm_start_dagger_steps))
            return (params, buf), (agree, losses[-min(100, losses.shape[0]):].mean())

        buf0 = (jnp.zeros((n, cap) + demos.obs.shape[2:], demos.obs.dtype),
                jnp.zeros((n, cap), jnp.int32),
                jnp.ones((n, cap) + demos.avail.shape[2:], bool),
                jnp.zeros((n, cap), jnp.float32))
        rounds = jnp.arange(c.warm_start_dagger_rounds)
        (params, _), (agree, losses) = jax.lax.scan(
            one_round, (params, buf0),
            (rounds, jax.random.split(key, c.warm_start_dagger_rounds)))
        # Agreement of the clone's greedy action with the expert's on the clone's own states:
        # before the first round's fit, and (a fresh rollout) after the last one's.
        _, agree_end = collect(params, jax.random.fold_in(key, 1))
        return params, {"warm_dagger_agreement_start": agree[0],
                        "warm_dagger_agreement_end": agree_end,
                        "warm_dagger_expert_loss_end": losses[-1],
                        "warm_dagger_states": jnp.asarray(cap * n, jnp.float32)}

    def _warm_critic(self, state: TrainState, demos, key: jax.Array):
        """Step 2 of ``warm_start``: value-only updates on rollouts of the frozen warm actor."""
        c = self.config
        opt = make_optimizer(c.warm_start_lr, c.max_grad_norm, per_agent=not self.policy.share)

        def value_loss(params, mb: MiniBatchData):
            v = self.policy.value(params, critic_input(mb.obs, mb.global_state))
            return (0.5 * jnp.square(v - mb.target)).mean(0).sum()  # per-agent means, summed

        def mb_step(carry, mb):
            params, opt_state = carry
            loss, grads = jax.value_and_grad(value_loss)(params, mb)
            # The actor's gradient is exactly 0 here, and a fresh Adam moves nothing on 0.
            updates, opt_state = opt.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss / self.num_agents

        def one(carry, k):
            s, opt_state = carry
            s = s._replace(rng=k)
            env_carry, ro, last_value = self.collect(s)
            data = self.batch(ro, last_value)
            k_epochs = jax.random.split(jax.random.fold_in(k, 1), c.warm_critic_epochs)
            (params, opt_state), losses = jax.lax.scan(
                lambda cr, ke: jax.lax.scan(mb_step, cr, self.shuffle(data, ke)),
                (s.params, opt_state), k_epochs,
            )
            ends = ro.episode_end.astype(jnp.float32)
            ret = (ro.episode_return.mean(-1) * ends).sum() / jnp.maximum(ends.sum(), 1.0)
            return (s._replace(params=params, env=env_carry), opt_state), (losses, ret)

        keys = jax.random.split(key, c.warm_critic_updates)
        (state_out, _), (losses, rets) = jax.lax.scan(
            one, (state, opt.init(state.params)), keys
        )
        state_out = state_out._replace(rng=state.rng)
        # losses [U, epochs, minibatches]: before any fitting, and the last epoch's.
        return state_out, {"warm_value_loss_start": losses[0, 0, 0],
                           "warm_value_loss_end": losses[-1, -1].mean(),
                           "warm_train_return": rets.mean()}

    def seeds_warm(self):
        """``jit(vmap(warm_start))`` over the seed axis of the state."""
        return jax.jit(jax.vmap(self.warm_start, in_axes=(0, None)))

    def evaluate_state(self, state: TrainState) -> tuple[TrainState, dict]:
        """The periodic evaluation: ``evaluate`` of the current params on the held-out episodes
        (key ``eval_seed``, the same for every seed and method); the greedy schedule reads
        its per-agent returns from the state."""
        c = self.config
        ev = self.evaluate(state.params, jax.random.PRNGKey(c.eval_seed), c.eval_envs,
                           c.eval_greedy)
        state = state._replace(eval_return=ev["agent_return"].astype(jnp.float32),
                               eval_seen=jnp.ones((), bool))
        return state, ev

    def seeds_evaluate(self):
        """``jit(vmap(evaluate_state))`` over the seed axis."""
        return jax.jit(jax.vmap(self.evaluate_state))

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, params: Params, key: jax.Array, num_envs: int, greedy: bool = True) -> dict:
        """One episode in each of ``num_envs`` fresh envs, each reset with its own key (so
        envs that draw their episodes, e.g. traffic with resampled demand, run distinct
        episodes): per-episode mean return ``[E]``, per-agent returns ``[N]`` (mean over
        episodes) and the env metrics of each finished episode ``{name: [E]}``."""
        k_reset, k_roll = jax.random.split(key)
        carry = reset_envs(self.env, k_reset, num_envs)
        carry, ro = rollout(
            self.env, self.policy, params, carry, k_roll, self.env.spec.horizon,
            centralised=self.centralised, greedy=greedy,
        )
        ended = ro.episode_end.any(0)  # [E]
        first = jnp.argmax(ro.episode_end, axis=0)  # [E]
        env_idx = jnp.arange(num_envs)
        agent_return = jnp.where(
            ended[:, None], ro.episode_return[first, env_idx], carry.ep_return
        )  # [E, N]
        last = ro.episode_end.shape[0] - 1
        metrics = {k: jnp.where(ended, v[first, env_idx], v[last]) for k, v in ro.metrics.items()}
        return {
            "return": agent_return.mean(),
            "episode_return": agent_return.mean(1),
            "agent_return": agent_return.mean(0),
            "ended_frac": ended.astype(jnp.float32).mean(),
            "metrics": metrics,
        }


def _critic_part(params: Params) -> Params:
    """The parts of ``params`` that ``ActorCritic.value`` reads (critic, shared embedding)."""
    return {k: v for k, v in params.items() if k in ("critic", "embed")}


def demo_accuracy(policy: ActorCritic, params: Params, demos) -> jax.Array:
    """Fraction of the demonstrated decisions on which the greedy policy takes the
    demonstrated action (over all agents' valid entries)."""
    obs, avail = jnp.swapaxes(demos.obs, 0, 1), jnp.swapaxes(demos.avail, 0, 1)  # [M, N, ...]
    greedy = jnp.argmax(policy.logits(params, obs, avail), -1)  # [M, N]
    valid = jnp.swapaxes(demos.valid, 0, 1)
    hit = (greedy == jnp.swapaxes(demos.action, 0, 1)) & valid
    return hit.sum() / jnp.maximum(valid.sum(), 1)


def dagger_labeler(env):
    """The env family's expert for DAgger (``leed_jax.dg.executor.expert_labeler``), or a
    one-line ``ConfigError`` where the family has none."""
    from leed_jax.config import ConfigError
    from leed_jax.dg.errors import DGError
    from leed_jax.dg.executor import expert_labeler

    try:
        labeler = expert_labeler(env)  # the auto-reset wrapper forwards family, jaxmarl_env
    except DGError as exc:
        raise ConfigError(f"warm_start_dagger_rounds / expert_own_states: {exc}") from None
    if labeler is None:
        raise ConfigError(
            f"warm_start_dagger_rounds / expert_own_states > 0 need an expert that labels any "
            f"observation; env family {getattr(env, 'family', None)!r} has none (mpe has)")
    return labeler


def discount_per_step(config: TrainConfig, env) -> float:
    """γ per env step: ``gamma ** (dt / gamma_seconds)`` for envs with a clock (traffic:
    ``env.step_seconds``), so that scenarios with different dt look equally far ahead in
    seconds; ``gamma`` itself for envs without one."""
    dt = getattr(env, "step_seconds", None)
    if dt is None:
        return float(config.gamma)
    return float(config.gamma) ** (float(dt) / float(config.gamma_seconds))


def make_train(config: TrainConfig, env, demos=None) -> Trainer:
    """Build the trainer of ``config`` for ``env`` (wrapped in ``AutoResetWrapper`` if it is
    not already). ``demos`` (a ``DemoBuffer``) is needed by ``leed`` and ``bc``. Validates
    ``config`` and checks that ``demos`` fits ``env`` (``DemoBufferError``)."""
    config.validate()
    if config.algo in ("leed", "bc"):
        if demos is None:
            raise DemoBufferError(f"algo {config.algo!r} needs demonstrations (--demos PATH)")
        check_fits(demos, env)
    return Trainer.build(config, env, demos)


def seed_keys(config: TrainConfig) -> jax.Array:
    """``[K, 2]``: run k of ``--seeds K`` starts from ``PRNGKey(seed + k)``, so it equals a
    separate run with that seed."""
    return jnp.stack([jax.random.PRNGKey(config.seed + k) for k in range(config.seeds)])


# The host side moved to leed_jax.po.loop and leed_jax.po.prepare; these names still import
# from here (lazily: the loop imports this module).
_MOVED = {
    "train": "leed_jax.po.loop", "TrainResult": "leed_jax.po.loop",
    "TrainingError": "leed_jax.po.loop", "OutOfMemoryError": "leed_jax.po.loop",
    "is_out_of_memory": "leed_jax.po.loop", "memory_advice": "leed_jax.po.loop",
    "chunk_record": "leed_jax.po.loop", "eval_record": "leed_jax.po.loop",
    "eval_due": "leed_jax.po.loop", "env_steps_at": "leed_jax.po.loop", "ci95": "leed_jax.po.loop",
}


def __getattr__(name: str):
    module = _MOVED.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
