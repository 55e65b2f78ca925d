"""Decentralised actor-critic networks.

Two parameter layouts behind one interface (``ActorCritic``):

* per-agent (default, LEED's personalised local policies): every parameter leaf carries a
  leading agent axis ``[N, ...]`` and the MLPs are applied with ``jax.vmap`` over that axis,
  so agent ``i``'s outputs depend on agent ``i``'s parameters and inputs only;
* shared (``share=True``, for very large N): one MLP for all agents whose input is
  concatenated with a learned per-agent embedding ``[N, K]``.

Inputs carry the agent axis second to last: observations ``[..., N, D]``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Params = Any
# Masked logits are finite (not -inf) so that 0 * logp stays 0 in the entropy.
MASKED_LOGIT = -1e9


def _init(scale: float):
    # Scaled normal rather than the orthogonal init common in PPO code: the same role (unit
    # gain in the hidden layers, a near-uniform initial policy from a tiny output layer), but
    # without a QR decomposition per agent, which costs seconds of XLA compile time when
    # vmapped over agents and seeds.
    return nn.initializers.variance_scaling(scale**2, "fan_avg", "normal")


class MLP(nn.Module):
    """tanh MLP; ``out_scale`` scales the output layer's initial weights."""

    hidden: Sequence[int]
    out: int
    out_scale: float

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for width in self.hidden:
            x = nn.tanh(nn.Dense(width, kernel_init=_init(1.0))(x))
        return nn.Dense(self.out, kernel_init=_init(self.out_scale))(x)


def _agents_first(x: jax.Array) -> jax.Array:
    return jnp.moveaxis(x, -2, 0)


def _agents_back(y: jax.Array) -> jax.Array:
    return jnp.moveaxis(y, 0, -2)


@dataclasses.dataclass(frozen=True)
class ActorCritic:
    """Static description of the actor and critic of all N agents.

    ``critic_dim`` is the critic's per-agent input size: ``obs_dim`` for a decentralised
    critic, ``obs_dim + global_state_dim`` for MAPPO's centralised one.
    """

    num_agents: int
    obs_dim: int
    num_actions: int
    critic_dim: int
    actor_hidden: tuple[int, ...] = (64, 64)
    critic_hidden: tuple[int, ...] = (64, 64)
    share: bool = False
    embed_dim: int = 8

    @property
    def actor(self) -> MLP:
        return MLP(self.actor_hidden, self.num_actions, 0.01)

    @property
    def critic(self) -> MLP:
        return MLP(self.critic_hidden, 1, 1.0)

    def init(self, key: jax.Array) -> Params:
        """Parameters ``{"actor", "critic"}`` (plus ``"embed" [N, K]`` when shared)."""
        k_actor, k_critic, k_embed = jax.random.split(key, 3)
        extra = self.embed_dim if self.share else 0
        obs = jnp.zeros((self.obs_dim + extra,))
        cin = jnp.zeros((self.critic_dim + extra,))
        if self.share:
            return {
                "actor": self.actor.init(k_actor, obs),
                "critic": self.critic.init(k_critic, cin),
                "embed": 0.1 * jax.random.normal(k_embed, (self.num_agents, self.embed_dim)),
            }
        n = self.num_agents
        return {
            "actor": jax.vmap(self.actor.init, in_axes=(0, None))(jax.random.split(k_actor, n), obs),
            "critic": jax.vmap(self.critic.init, in_axes=(0, None))(
                jax.random.split(k_critic, n), cin
            ),
        }

    def _apply(self, net: MLP, net_params, embed, x: jax.Array) -> jax.Array:
        if self.share:
            emb = jnp.broadcast_to(embed, x.shape[:-1] + embed.shape[-1:])
            return net.apply(net_params, jnp.concatenate([x, emb], axis=-1))
        return _agents_back(jax.vmap(net.apply)(net_params, _agents_first(x)))

    def logits(self, params: Params, obs: jax.Array, avail: jax.Array) -> jax.Array:
        """Masked action logits ``[..., N, A]`` from ``obs [..., N, D]``, ``avail [..., N, A]``:
        unavailable actions get ``MASKED_LOGIT`` and are never sampled."""
        raw = self._apply(self.actor, params["actor"], params.get("embed"), obs)
        return jnp.where(avail, raw, MASKED_LOGIT)

    def value(self, params: Params, critic_in: jax.Array) -> jax.Array:
        """State values ``[..., N]`` from critic inputs ``[..., N, C]``."""
        return self._apply(self.critic, params["critic"], params.get("embed"), critic_in)[..., 0]


def critic_input(obs: jax.Array, global_state: jax.Array | None) -> jax.Array:
    """Per-agent critic input: own observation, or (MAPPO) own observation next to the global
    state ``[..., G]``, shared by all agents -> ``[..., N, D + G]``."""
    if global_state is None:
        return obs
    n = obs.shape[-2]
    gs = jnp.broadcast_to(global_state[..., None, :], obs.shape[:-2] + (n, global_state.shape[-1]))
    return jnp.concatenate([obs, gs.astype(obs.dtype)], axis=-1)
