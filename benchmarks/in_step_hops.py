"""How often the traffic env's in-step hops (the free-flow fastest link after a vehicle's chosen
link, used when ``step`` gets no ``route``) turn a vehicle straight back without its choosing.

    python benchmarks/in_step_hops.py [--scenario traffic-sumo-drt] [--keys 0,1]

Per policy (``fastest``: ``env.fastest_slot``; ``random``: uniform over allowed slots) and
episode: decisions, steps that ended on a link the action did not choose (a hop happened),
those whose last link reverses the one before it (an unchosen U-turn), arrival rate and mean
travel time. Also, over all origin–destination pairs, how many free-flow fastest paths take a
U-turn themselves (where banning hop U-turns would make a lone vehicle slower than
free flow). Last line JSON.
"""

import argparse
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from leed_jax.envs.registry import make_env

ap = argparse.ArgumentParser()
ap.add_argument("--scenario", default="traffic-sumo-drt")
ap.add_argument("--keys", default="0,1")
args = ap.parse_args()
env = make_env(args.scenario)
net = env.network
out_links = jnp.asarray(net.out_links)
src, dst = jnp.asarray(net.link_src), jnp.asarray(net.link_dst)


def reverses(f, p):
    f, p = jnp.maximum(f, 0), jnp.maximum(p, 0)
    return (src[f] == dst[p]) & (dst[f] == src[p])


def episode(policy: str, key):
    @jax.jit
    def go(key):
        _, s = env.reset(key)

        def body(s, k):
            if policy == "fastest":
                a = env.fastest_slot(s)
            else:
                a = jax.random.categorical(k, jnp.where(env.avail_actions(s), 0.0, -jnp.inf))
            chosen = out_links[s.node, a]
            _, s2, _, _, info = env.step(k, s, a)
            moved = (s2.link >= 0) & (s2.prev_link >= 0) & ((s2.link != s.link) | (s2.enter != s.enter))
            hop = moved & (s2.link != chosen)
            return s2, (hop.sum(), (hop & reverses(s2.link, s2.prev_link)).sum(), info["decision"].sum())

        return jax.lax.scan(body, s, jax.random.split(key, env.spec.horizon))

    s, (hop, uturn, dec) = jax.device_get(go(key))
    m = env._metrics(s)
    return {"policy": policy, "decisions": int(dec.sum()), "steps_ending_after_a_hop": int(hop.sum()),
            "unchosen_uturns": int(uturn.sum()), "arrival_rate": round(float(m["arrival_rate"]), 3),
            "mean_travel_time": round(float(m["mean_travel_time"]), 1)}


def fastest_paths_with_uturns() -> tuple[int, int]:
    """(OD pairs whose turn-aware free-flow fastest path turns round somewhere, reachable pairs)."""
    v = net.num_nodes
    with_u = pairs = 0
    for o in range(v):
        links = net.out_links[o][net.out_links[o] >= 0]
        for d in range(v):
            if d == o or not np.isfinite(net.tt[o, d]):
                continue
            pairs += 1
            cost = net.link_tfree[links] + net.link_tt[links, d]
            cur = int(links[np.argmin(cost)])
            for _ in range(net.num_links):
                nxt = int(net.link_next[cur, d])
                if nxt < 0:
                    break
                if net.link_src[nxt] == net.link_dst[cur] and net.link_dst[nxt] == net.link_src[cur]:
                    with_u += 1
                    break
                cur = nxt
    return with_u, pairs


rows = [dict(key=int(k), **episode(pol, jax.random.PRNGKey(int(k)))) for pol in ("fastest", "random")
        for k in args.keys.split(",")]
for r in rows:
    print(json.dumps(r), flush=True)
u, pairs = fastest_paths_with_uturns()
print(json.dumps({"scenario": args.scenario, "episodes": rows, "fastest_paths_with_uturn": u, "od_pairs": pairs,
                  "loadavg": os.getloadavg()}))
