"""The PO stage: one trainer for LEED, IPPO, MAPPO and BC.

``make_train(config, env, demos)`` builds a ``Trainer`` whose ``update(state, demos) ->
(state, metrics)`` is pure and jit-able (``chunk`` scans it; ``demos`` is the ``DemoBuffer``,
passed as an argument so that one compiled program serves every buffer): a rollout (``lax.scan``), GAE, and epochs of minibatch updates
of every agent's own loss

    L_i = PPO_i  +  w_i(t) · E_i,      E_i = −log π_i(a_demo | o_demo) on agent i's demos,

summed over agents (each term averaged over agent i's own data, so agent i's gradient depends
on agent i's data only). The methods are options of this one trainer:

    leed   PPO + weighted expert loss            ippo   PPO only (w = 0)
    mappo  PPO with a centralised critic         bc     expert loss only
           (own obs + the env's global state)

``train(config)`` is the host loop around it: it runs chunks of updates as one compiled
program (vmapped over ``--seeds``), and only between chunks touches files, progress, logs and
checkpoints.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import sys
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from leed_jax.config import TrainConfig
from leed_jax.dg.buffer import sample_demos
from leed_jax.po.expert import expert_loss
from leed_jax.po.gae import gae
from leed_jax.po.networks import ActorCritic, Params, critic_input
from leed_jax.po.optim import Optimizer, make_optimizer, per_agent_norm
from leed_jax.po.ppo import masked_mean, normalize_advantage, ppo_terms
from leed_jax.po.rollout import EnvCarry, reset_envs, rollout
from leed_jax.po.schedules import ScheduleParams, expert_weight


class TrainingError(RuntimeError):
    """Training cannot go on (one-line message), e.g. a NaN in the loss."""


class OutOfMemoryError(TrainingError):
    """The run does not fit in device memory; the message says which options would."""


def is_out_of_memory(exc: BaseException) -> bool:
    text = str(exc)
    return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text


def memory_advice(config: TrainConfig, num_agents: int, num_devices: int) -> str:
    """One line: the batch, seed and sharding options that shrink a run's memory per device."""
    tips = []
    if config.num_envs > 1:
        tips.append(f"--num-envs {max(1, config.num_envs // 2)} (now {config.num_envs})")
    if config.seeds > 1:
        tips.append(f"--seeds 1 and run seeds one by one (now {config.seeds} in one program)")
    free = num_devices // max(1, config.mesh_data * config.mesh_agent)
    if free > 1:
        agent_fits = [k for k in range(2, free + 1) if num_agents % k == 0]
        if agent_fits and not config.share_params:
            tips.append(f"--mesh-agent {agent_fits[-1]} (split the agents' networks over devices)")
        data_fits = [k for k in range(2, free + 1) if config.num_envs % k == 0]
        if data_fits:
            tips.append(f"--mesh-data {data_fits[-1]} (split the env batch over devices)")
    if not config.share_params:
        tips.append("--share-params (one network for all agents)")
    return "; ".join(tips)


class DemoMismatchError(ValueError):
    """A demo buffer that does not fit the env (one-line message)."""


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


def _wrap_autoreset(env):
    from leed_jax.envs.wrappers import AutoResetWrapper

    return env if isinstance(env, AutoResetWrapper) else AutoResetWrapper(env)


def check_demos(demos, env) -> None:
    """Raise ``DemoMismatchError`` unless the buffer's shapes fit ``env``."""
    spec = env.spec
    n, _, d = demos.obs.shape
    a = demos.avail.shape[-1]
    if (n, d, a) != (spec.num_agents, spec.obs_dim, spec.num_actions):
        raise DemoMismatchError(
            f"the demo buffer (agents={n}, obs_dim={d}, actions={a}) does not fit scenario "
            f"{env.name!r} (agents={spec.num_agents}, obs_dim={spec.obs_dim}, "
            f"actions={spec.num_actions}); generate demos for this scenario or drop --demos"
        )


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
            if self.use_ppo and c.expert_schedule == "qfilter":
                d_weight, kept = self.qfilter(params, teacher, d_obs, d_weight)
            ex = expert_loss(d_logits, d_action, d_weight)
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
        n = self.num_agents
        if not self.use_expert:
            return jnp.zeros((n,), jnp.float32)
        if not self.use_ppo:  # bc: imitation is all there is
            return jnp.full((n,), self.config.expert_weight, jnp.float32)
        progress = state.update.astype(jnp.float32) / self.config.num_updates
        if self.config.expert_schedule == "greedy":
            seen = jnp.broadcast_to(state.eval_seen, (n,))
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

    def batch(self, state: TrainState, ro, last_value, demos=None):
        """GAE, the adaptive schedule's return EMA and the expert weights -> ``(data,
        weight [N], return_ema [N], return_seen [N])``, data flattened to ``[S, N, ...]``."""
        c = self.config
        tr = ro.transition
        advantage, target = gae(
            tr.reward, ro.value, tr.done, last_value, discount_per_step(c, self.env), c.gae_lambda,
            bootstrap=ro.bootstrap,
        )

        # Own episodic returns: per-episode statistics and the EMA of the adaptive schedule.
        ends = ro.episode_end.astype(jnp.float32)  # [T, E]
        n_end = ends.sum()
        agent_mean = ro.episode_return.sum((0, 1)) / jnp.maximum(n_end, 1.0)  # [N]
        ema = jnp.where(
            state.return_seen,
            state.return_ema + c.expert_return_ema * (agent_mean - state.return_ema),
            agent_mean,
        )
        return_ema = jnp.where(n_end > 0, ema, state.return_ema)
        return_seen = state.return_seen | (n_end > 0)
        demo_return = None if demos is None else demos.agent_return.astype(jnp.float32)
        weight = self.expert_weights(state, demo_return)

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
        )
        return data, weight, return_ema, return_seen

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
        data, weight, return_ema, return_seen = self.batch(state, ro, last_value, demos)

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
           ``warm_start_steps``);
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

        def bc_loss(params, demo):
            d_obs, d_action, d_avail, d_weight = (jnp.swapaxes(x, 0, 1) for x in demo)
            return expert_loss(self.policy.logits(params, d_obs, d_avail), d_action, d_weight)

        def bc_step(carry, key):
            params, opt_state = carry
            loss, grads = jax.value_and_grad(lambda p: bc_loss(p, demo_batch(key)).sum())(params)
            updates, opt_state = opt.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss / self.num_agents

        def window_body(carry):
            params, opt_state, key, i, prev, _ = carry
            key, k = jax.random.split(key)
            (params, opt_state), losses = jax.lax.scan(
                bc_step, (params, opt_state), jax.random.split(k, window)
            )
            cur = losses.mean()
            stalled = (prev - cur) < jnp.maximum(c.warm_start_tol * jnp.abs(prev), 1e-3)
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
            "warm_demo_accuracy": demo_accuracy(self.policy, params, demos),
        }
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
            data, *_ = self.batch(s, ro, last_value, demos)
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


def ci95(values) -> float:
    """Half-width of the 95 % confidence interval of the mean of ``values`` (Student t;
    0 for fewer than two values)."""
    from scipy.stats import t as student_t

    v = np.asarray(values, float).ravel()
    v = v[np.isfinite(v)]
    if len(v) < 2:
        return 0.0
    return float(student_t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))


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
    not already). ``demos`` (a ``DemoBuffer``) is needed by ``leed`` and ``bc``."""
    config.validate()
    env = _wrap_autoreset(env)
    spec = env.spec
    use_expert = config.algo in ("leed", "bc")
    if use_expert:
        if demos is None:
            raise DemoMismatchError(f"algo {config.algo!r} needs demonstrations (--demos PATH)")
        check_demos(demos, env)
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
    lr: Any = config.lr
    if config.anneal_lr:
        steps = config.num_updates * config.update_epochs * config.num_minibatches
        lr = optax.linear_schedule(config.lr, 0.0, steps)
    return Trainer(
        config=config,
        env=env,
        policy=policy,
        optimizer=make_optimizer(lr, config.max_grad_norm, per_agent=not config.share_params),
        schedule=ScheduleParams(
            kind=config.expert_schedule,
            weight=config.expert_weight,
            decay_frac=config.expert_decay_frac,
            half_life_frac=config.expert_half_life_frac,
            adaptive_tol=config.expert_adaptive_tol,
        ),
        centralised=centralised,
        use_ppo=config.algo != "bc",
        use_expert=use_expert,
        full_demos=use_expert and demos.obs.shape[1] <= config.expert_batch_size,
    )


# ====================================================================== host loop


@dataclasses.dataclass
class TrainResult:
    """What ``train`` returns. Arrays carry a leading seed axis ``[K]``."""

    config: TrainConfig
    out_dir: pathlib.Path
    state: TrainState
    summary: dict
    history: list[dict]
    trainer: Trainer

    @property
    def params(self) -> Params:
        return self.state.params


def seed_keys(config: TrainConfig) -> jax.Array:
    """``[K, 2]``: run k of ``--seeds K`` starts from ``PRNGKey(seed + k)``, so it equals a
    separate run with that seed."""
    return jnp.stack([jax.random.PRNGKey(config.seed + k) for k in range(config.seeds)])


def chunk_record(config: TrainConfig, metrics: dict, update: int, wall_s: float) -> dict:
    """One metrics.jsonl line from a chunk's metrics (host numpy, axes ``[K, U]``)."""
    valid = np.asarray(metrics["valid"]) > 0  # [K, U]
    episodes = (np.asarray(metrics["episodes"]) * valid).sum(1)  # [K]

    def per_episode(x):  # sums over episodes -> per-episode means [K]
        total = (np.asarray(x) * valid).sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(episodes > 0, total / np.maximum(episodes, 1), np.nan)

    def per_update(x):  # [K]
        return (np.asarray(x) * valid).sum(1) / np.maximum(valid.sum(1), 1)

    def seeds_mean(v):
        v = np.asarray(v, float)
        return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")

    record: dict[str, Any] = {"update": update, "env_steps": env_steps_at(config, update),
                              "wall_s": round(wall_s, 3)}
    per_seed = {"return": per_episode(metrics["return_sum"])}
    per_seed.update({k: per_episode(v) for k, v in metrics["env"].items()})
    for key in ("loss", "policy", "value", "entropy", "expert_loss", "approx_kl", "clip_frac",
                "grad_norm", "reward_mean", "decision_frac", "demo_kept"):
        if key not in metrics:
            continue
        per_seed[key] = per_update(metrics[key])
    # The weight in force at the last update of the chunk.
    last = np.maximum(valid.sum(1) - 1, 0)
    per_seed["expert_weight"] = np.asarray(metrics["expert_weight"])[np.arange(len(last)), last]
    rename = {"policy": "policy_loss", "value": "value_loss"}
    for key, value in per_seed.items():
        name = rename.get(key, key)
        record[name] = seeds_mean(value)
        if config.seeds > 1 and key in ["return", *metrics["env"]]:
            record[f"{name}_seeds"] = [float(x) for x in value]
    record["episodes"] = int(episodes.sum())
    return record


def env_steps_at(config: TrainConfig, update: int) -> int:
    """Env steps per seed after ``update`` updates, the critic warm-up's included."""
    return config.warm_env_steps + update * config.batch_steps


def eval_record(config: TrainConfig, ev: dict) -> dict:
    """The metrics.jsonl fields of one periodic evaluation (host numpy, leading seed axis
    ``[K]``): ``eval_return`` and ``eval_<metric>`` (means over seeds of the per-seed mean over
    the held-out episodes), with ``_seeds`` lists."""
    out: dict[str, Any] = {}
    per_seed = {"return": np.asarray(ev["return"], float)}
    per_seed.update({k: np.asarray(v, float).mean(-1) for k, v in ev["metrics"].items()})
    for key, value in per_seed.items():
        out[f"eval_{key}"] = float(np.mean(value))
        out[f"eval_{key}_seeds"] = [float(x) for x in value]
    return out


def eval_due(config: TrainConfig, before: int, after: int) -> bool:
    """An evaluation is due after the chunk that took updates ``before`` to ``after``."""
    if after >= config.num_updates or config.eval_every == 0:
        return True
    return after // config.eval_every > before // config.eval_every


def _first_nonfinite(metrics: dict, first_update: int) -> int | None:
    loss = np.asarray(metrics["loss"])  # [K, U]
    bad = ~np.isfinite(loss) & (np.asarray(metrics["valid"]) > 0)
    if not bad.any():
        return None
    return first_update + int(np.argmax(bad.any(0))) + 1


def resolve_demos(config: TrainConfig, env, out_dir: pathlib.Path, say=print):
    """The demo buffer path of ``config`` (generated into ``out_dir/demos`` when unset; in a
    multi-process run by process 0, the others wait for it and read the same files)."""
    if config.demos:
        return pathlib.Path(config.demos)
    from leed_jax.dg.buffer import read_demo_meta
    from leed_jax.dg.generate import generate_demos
    from leed_jax.parallel import is_writer, sync

    overrides = {"num_agents": config.num_agents} if config.num_agents else None
    path = pathlib.Path(out_dir) / "demos"
    if is_writer():
        options = {f.name: getattr(config.dg, f.name) for f in dataclasses.fields(config.dg)}
        path = generate_demos(
            config.scenario, out=path, seed=config.seed, overrides=overrides,
            progress=config.progress, **options,
        )
    sync("leed_jax demos written")
    meta = read_demo_meta(path)
    source = meta.get("source", "?")
    how = f"LLM {meta.get('model')}" if source == "llm" else "the built-in planner (no LLM configured)"
    say(f"demonstrations: {how} -> {path}")
    return pathlib.Path(path)


def load_demo_buffer(path, env):
    from leed_jax.dg.buffer import load_demos

    demos = load_demos(path, env=env)
    check_demos(demos, env)
    return demos


def train(
    config: TrainConfig,
    *,
    env=None,
    demos=None,
    resume: bool = False,
    max_chunks: int | None = None,
    say=None,
) -> TrainResult:
    """Train ``config`` end to end in its run directory and evaluate the result.

    env: an env to use instead of ``make_env(config.scenario)``; demos: a ``DemoBuffer`` to use
    instead of ``config.demos`` (generated when leed/bc has none). resume: continue from the
    latest checkpoint in ``config.out``. max_chunks: stop after this many chunks (as if
    interrupted; for tests and time-boxed jobs). Writes ``config.toml``, ``metrics.jsonl``,
    ``checkpoints/``, ``summary.json`` and ``learning_curve.png`` under ``config.out``.
    """
    from leed_jax.io.checkpoint import Checkpointer, has_checkpoint
    from leed_jax.io.plots import plot_learning_curves
    from leed_jax.io.rundir import RunDir, default_run_dir
    from leed_jax.parallel import broadcast_text, is_writer, sync, to_host

    writer = is_writer()  # process 0 writes files and reports; the others only compute
    say = (say or (lambda msg: print(msg, file=sys.stderr))) if writer else (lambda msg: None)
    t_start = time.perf_counter()
    config.validate()
    if config.out is None:
        out = str(default_run_dir(config.scenario, config.algo))
        config = config.replace(out=broadcast_text(out))
    run = RunDir(config.out)
    ckpt_dir = run.checkpoint_dir
    if resume and not has_checkpoint(run.path):
        raise FileNotFoundError(f"no checkpoint to resume in {run.path}")
    run.create()
    if env is None:
        from leed_jax.envs.registry import make_env

        env = make_env(config.scenario, num_agents=config.num_agents)
    if demos is None and config.algo in ("leed", "bc"):
        if not config.demos:
            config = config.replace(demos=str(resolve_demos(config, env, run.path, say)))
        demos = load_demo_buffer(config.demos, env)
    if not resume:
        run.write_config(config)
        if writer and run.metrics_path.exists():
            run.metrics_path.unlink()
    trainer = make_train(config, env, demos)
    demo_arrays = None if not trainer.use_expert else jax.tree_util.tree_map(jnp.asarray, demos)
    mesh = _mesh(config, env)

    state, demo_arrays = _init_state(trainer, config, demo_arrays, mesh)
    checkpointer = Checkpointer(ckpt_dir)
    prior_wall = 0.0
    if resume:
        state, meta = checkpointer.restore(state, say=say)
        prior_wall = float(meta.get("wall_s", 0.0))
        history = run.truncate_metrics(int(meta["update"]))
        say(f"resuming {run.path} from update {meta['update']}")
    else:
        history = []
    evaluate = trainer.seeds_evaluate()
    # Where the state lives on the mesh (None: one device). The warm start and the evaluations
    # may hand it back laid out otherwise; it is put back before the compiled chunk sees it.
    shardings = None if mesh is None else jax.tree_util.tree_map(lambda x: x.sharding, state)
    if not resume:
        # The jump-start (leed, bc), then the evaluation at update 0: where each method starts.
        record = {"update": 0, "env_steps": config.warm_env_steps}
        if config.warm_start:
            state, warm = trainer.seeds_warm()(state, demo_arrays)
            warm = to_host(warm)
            record.update({k: float(np.mean(v)) for k, v in warm.items()})
            say(f"warm start: {record['warm_steps']:.0f} steps, expert loss "
                f"{record['warm_expert_loss_start']:.3f} -> {record['warm_expert_loss_end']:.3f}, "
                f"greedy matches {100 * record['warm_demo_accuracy']:.1f} % of demo actions")
        state, ev = evaluate(state)
        record.update(eval_record(config, to_host(ev)))
        record["wall_s"] = round(time.perf_counter() - t_start, 3)
        run.append_metrics(record)
        history.append(record)
        if config.warm_start:
            checkpointer.save(0, state, {"update": 0, "wall_s": record["wall_s"]})
        if shardings is not None:
            state = jax.device_put(state, shardings)

    def out_of_memory(where: str) -> OutOfMemoryError:
        advice = memory_advice(config, env.spec.num_agents, jax.device_count())
        return OutOfMemoryError(
            f"out of device memory while {where} (N={env.spec.num_agents}, "
            f"num_envs={config.num_envs}, seeds={config.seeds}); try {advice}"
        )

    t_compile = time.perf_counter()
    try:
        chunk = trainer.seeds_chunk()
        if mesh is not None:
            # The state leaves the chunk placed as it came in: left to itself XLA may pick
            # another sharding for an env leaf (MPE's global state), which the next call's
            # compiled program then rejects.
            chunk = jax.jit(jax.vmap(trainer.chunk, in_axes=(0, None)), donate_argnums=0,
                            out_shardings=(shardings, None))
        compiled = chunk.lower(state, demo_arrays).compile()
    except jax.errors.JaxRuntimeError as exc:
        if is_out_of_memory(exc):
            raise out_of_memory("compiling the update") from None
        raise
    compile_s = time.perf_counter() - t_compile
    sync("leed_jax update compiled")  # the processes start their collectives together

    start_update = int(to_host(state.update)[0])
    done_chunks = start_update // config.chunk_updates
    remaining = config.num_chunks - done_chunks
    if max_chunks is not None:
        remaining = min(remaining, max_chunks)
    progress = _Progress(config, start_update) if config.progress and writer else None
    t_loop = time.perf_counter()
    update = start_update
    ev = None  # the latest periodic evaluation (host numpy)
    try:
        for i in range(remaining):
            try:
                state, metrics = compiled(state, demo_arrays)
                metrics = to_host(metrics)
            except jax.errors.JaxRuntimeError as exc:
                if is_out_of_memory(exc):
                    raise out_of_memory(f"training (update {update})") from None
                raise
            bad = _first_nonfinite(metrics, update)
            if bad is not None:
                last = checkpointer.latest_step()
                kept = f"last good checkpoint: update {last} in {ckpt_dir}" if last is not None \
                    else "no checkpoint was written before it"
                raise TrainingError(f"NaN in the loss at update {bad}; stopped ({kept})")
            before, update = update, int(to_host(state.update)[0])
            ev = None
            if eval_due(config, before, update):
                state, ev = evaluate(state)
                if shardings is not None:  # back to the layout the chunk was compiled for
                    state = jax.device_put(state, shardings)
                ev = to_host(ev)
            wall = prior_wall + time.perf_counter() - t_start
            record = chunk_record(config, metrics, update, wall)
            if ev is not None:
                record.update(eval_record(config, ev))
            record["env_steps_per_s"] = round(
                (update - start_update) * config.batch_steps * config.seeds
                / max(time.perf_counter() - t_loop, 1e-9), 1
            )
            run.append_metrics(record)
            history.append(record)
            is_last = update >= config.num_updates
            if (done_chunks + i + 1) % config.checkpoint_every == 0 or is_last:
                checkpointer.save(update, state, {"update": update, "wall_s": wall})
            if progress:
                progress.advance(update, record)
    finally:
        if progress:
            progress.close()
        checkpointer.close()
    loop_s = time.perf_counter() - t_loop
    trained_steps = (update - start_update) * config.batch_steps

    # The final evaluation: the periodic one at the last update (the same held-out episodes).
    if ev is None:
        state, ev = evaluate(state)
    evaluation = to_host(ev)
    wall_s = prior_wall + time.perf_counter() - t_start
    summary = {
        "algo": config.algo,
        "scenario": env.name,
        "num_agents": env.spec.num_agents,
        "seeds": config.seeds,
        "env_steps": env_steps_at(config, update),
        "updates": update,
        "finished": update >= config.num_updates,
        "wall_s": round(wall_s, 2),
        "compile_s": round(compile_s, 2),
        "env_steps_per_s": round(trained_steps * config.seeds / max(loop_s, 1e-9), 1),
        "final_return": float(np.mean(evaluation["return"])),
        "final_return_ci95": ci95(evaluation["episode_return"]),
        "final_return_seeds": [float(x) for x in evaluation["return"]],
        "eval_episodes": config.eval_envs,
        "eval_seed": config.eval_seed,
        "eval_greedy": config.eval_greedy,
        "devices": 1 if mesh is None else int(mesh.devices.size),
        "processes": jax.process_count(),
        # Episodes differ when the env draws each one (traffic with resampled demand, MPE);
        # greedy evaluation of a fixed-demand traffic scenario repeats one episode.
        "eval_distinct_episodes": bool(getattr(env, "resample", env.family != "traffic")),
        "gamma_per_step": discount_per_step(config, trainer.env),
    }
    summary["metric_names"] = sorted(evaluation["metrics"])
    for k, v in evaluation["metrics"].items():
        v = np.asarray(v)  # [K, E]
        summary[k] = float(np.mean(v))
        summary[f"{k}_ci95"] = ci95(v)
        if config.seeds > 1:
            summary[f"{k}_seeds"] = [float(x) for x in v.mean(1)]
    if demos is not None:
        summary["demo_return"] = float(np.asarray(demos.agent_return).mean())
    warm_line = next((h for h in history if h.get("update") == 0 and "warm_steps" in h), None)
    if warm_line is not None:
        summary.update({k: v for k, v in warm_line.items() if k.startswith("warm_")})
        summary["warm_eval_return"] = warm_line.get("eval_return")
    from leed_jax.dg.yardsticks import for_evaluation  # traffic: UE / SO on the same episodes

    summary.update(for_evaluation(env, config.eval_seed, config.eval_envs, evaluation["metrics"],
                                  config.yardsticks, say=say if config.progress else None))
    run.write_summary(summary)
    if writer:
        plot_learning_curves({config.algo: history}, run.plot_path,
                             title=f"{env.name}: {config.algo}, N={env.spec.num_agents}")
    return TrainResult(config, run.path, state, summary, history, trainer)


def _mesh(config: TrainConfig, env):
    """The device mesh of ``config`` (None: one device in one process, nothing to place)."""
    if config.mesh_data == 1 and config.mesh_agent == 1 and jax.process_count() == 1:
        return None
    from leed_jax.parallel import check_fits, make_mesh

    mesh = make_mesh(config.mesh_data, config.mesh_agent)
    check_fits(mesh, config.num_envs, env.spec.num_agents, config.share_params)
    return mesh


def _init_state(trainer: Trainer, config: TrainConfig, demos, mesh):
    """The initial state (seed axis first) and the demonstrations, on the mesh when there is
    one: the state is created where it lives (each device initialises its own agents' shard,
    and in a multi-process run the init is one program of all processes, compiled once and
    cached like the update); the jitted chunk follows the placement. Every leaf is strongly
    typed (an env's Python-scalar field would be weak): a restored checkpoint is, and a
    resumed run then reuses the update compiled for a fresh one (persistent compile cache)."""
    keys = seed_keys(config)
    if mesh is None:
        return jax.jit(lambda k: _strong(trainer.seeds_init()(k)))(keys), demos
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from leed_jax.parallel import demo_shardings, train_state_shardings

    n = trainer.num_agents
    init = lambda k: _strong(jax.vmap(trainer.init)(k))
    shardings = train_state_shardings(jax.eval_shape(init, keys), mesh, n)
    keys = jax.device_put(np.asarray(keys), NamedSharding(mesh, P()))
    state = jax.jit(init, out_shardings=shardings)(keys)
    if demos is not None:
        demos = jax.device_put(demos, demo_shardings(demos, mesh, n))
    return state, demos


def _strong(tree):
    return jax.tree_util.tree_map(lambda x: jax.lax.convert_element_type(x, x.dtype), tree)


class _Progress:
    """A rich progress bar with return and steps/s (host side only)."""

    def __init__(self, config: TrainConfig, start_update: int):
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.config = config
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:,.0f}/{task.total:,.0f} steps"),
            TextColumn("return {task.fields[ret]}"),
            TextColumn("{task.fields[sps]} steps/s"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self.progress.start()
        self.task = self.progress.add_task(
            config.algo, total=config.num_updates * config.batch_steps,
            completed=start_update * config.batch_steps, ret="-", sps="-",
        )

    def advance(self, update: int, record: dict) -> None:
        ret = record.get("return")
        self.progress.update(
            self.task,
            completed=update * self.config.batch_steps,
            ret="-" if ret is None or not math.isfinite(ret) else f"{ret:.3f}",
            sps=f"{record['env_steps_per_s']:,.0f}",
        )

    def close(self) -> None:
        self.progress.stop()
