"""Traffic routing env: dynamics, masks, determinism, scale and error messages."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import leed_jax
from leed_jax.envs.demand import Demand, random_demand, read_demand
from leed_jax.envs.network import grid_network, read_sumo, read_tntp
from leed_jax.envs.traffic import ARRIVED, ON_LINK, TrafficEnv, TrafficParams
from leed_jax.envs.wrappers import AutoResetWrapper


def _random_policy_rollout(env, steps, seed=0):
    """Random valid actions; returns the list of (state, info) after each step."""

    @jax.jit
    def one(carry, key):
        state = carry
        logits = jnp.where(env.avail_actions(state), 0.0, -jnp.inf)
        a = jax.random.categorical(key, logits)
        _, state, r, d, info = env.step(key, state, a)
        return state, (state, r, d, info, a)

    _, state = env.reset(jax.random.PRNGKey(seed))
    return jax.lax.scan(one, state, jax.random.split(jax.random.PRNGKey(seed), steps))


def test_spec_and_shapes():
    env = leed_jax.make_env("traffic-grid")
    spec = env.spec
    assert spec.num_agents == 50 and spec.num_actions == 4 and spec.horizon == 60
    obs, state = env.reset(jax.random.PRNGKey(0))
    assert obs.shape == (50, spec.obs_dim) and obs.dtype == jnp.float32
    assert env.avail_actions(state).shape == (50, 4)
    assert env.global_state(state).shape == (spec.global_state_dim,)
    obs2, _, r, d, info = env.step(jax.random.PRNGKey(1), state, jnp.zeros(50, jnp.int32))
    assert obs2.shape == obs.shape and r.shape == (50,) and d.shape == (50,)
    assert info["decision"].shape == (50,) and info["link_counts"].shape == (env.network.num_links,)
    assert set(info["metrics"]) >= {"arrival_rate", "mean_travel_time"}


def test_conservation_and_arrived_stay_arrived():
    env = leed_jax.make_env("traffic-grid", num_agents=200)
    net = env.network
    _, (states, _, done, info, actions) = _random_policy_rollout(env, 60)
    status = np.asarray(states.status)
    link = np.asarray(states.link)
    node = np.asarray(states.node)
    assert set(np.unique(status)) <= {0, 1, 2, 3}
    on = status == ON_LINK
    assert ((link >= 0) & (link < net.num_links))[on].all()  # on exactly one existing link
    assert (net.link_dst[np.maximum(link, 0)] == node)[on].all()
    assert (link[~on] == -1).all()  # not on a link otherwise: waiting, at a node or arrived
    assert ((node >= 0) & (node < net.num_nodes)).all()
    # link loads add up to the vehicles on links
    np.testing.assert_allclose(np.asarray(info["link_counts"]).sum(1), on.sum(1))
    arrived = status == ARRIVED
    assert (np.diff(arrived.astype(int), axis=0) >= 0).all()  # arrived vehicles stay arrived
    assert (node[arrived] == np.asarray(states.dest)[arrived]).all()
    assert arrived[-1].mean() > 0.0
    assert np.asarray(done[-1]).all()  # horizon reached


def test_lone_vehicle_free_flow_time_on_known_path():
    # Updated for the continuous-time queue model: the vehicle departs at 30 s and reaches its
    # destination at exactly 30 + 4 * 20 = 110 s, which falls in the step [110, 120).
    net = grid_network(3, 3, link_length=200.0, speed=10.0)  # 20 s per link, 2 steps of 10 s
    demand = Demand(np.array([0], np.int32), np.array([8], np.int32), np.array([3], np.int32))
    env = TrafficEnv(net, demand, TrafficParams(dt=10.0, horizon=30))
    path = [0, 1, 2, 5, 8]  # right, right, up, up
    _, state = env.reset(jax.random.PRNGKey(0))
    arrived_step = None
    decisions = 0
    step = jax.jit(lambda s, nxt: env.step(None, s, env.slot_towards(s, nxt)))  # one compile, not op-by-op
    for t in range(30):
        nxt = path[path.index(int(state.node[0])) + 1] if int(state.node[0]) != 8 else 8
        _, state, r, d, info = step(state, jnp.array([nxt]))
        decisions += int(info["decision"][0])
        if info["arrived"][0]:
            arrived_step = t + 1
            break
    assert arrived_step == 3 + 4 * 2 + 1  # arrives at 110 s, in the step that starts there
    assert float(state.arrive_time[0]) == pytest.approx(110.0)
    assert float(state.travel_time[0]) == pytest.approx(4 * 20.0)
    assert float(state.travel_time[0]) == pytest.approx(net.tt[0, 8])
    assert decisions == 4


def test_bpr_slowdown_matches_law():
    # The original step-rounded BPR model, kept selectable as link_model="step".
    net = grid_network(1, 2, link_length=200.0, speed=10.0, capacity_per_lane_km=20.0)  # c = 4
    n = 10
    demand = Demand(np.zeros(n, np.int32), np.ones(n, np.int32), np.zeros(n, np.int32))
    p = TrafficParams(dt=10.0, horizon=40, link_model="step")
    env = TrafficEnv(net, demand, p)
    _, state = env.reset(jax.random.PRNGKey(0))
    step = jax.jit(lambda s: env.step(None, s, jnp.zeros(n, jnp.int32))[1])  # one compile, not op-by-op
    for _ in range(40):
        state = step(state)
    t_link = 20.0 * (1 + 0.15 * ((n - 1) / 4.0) ** 4)
    expected = math.ceil(t_link / 10.0 - 1e-6)
    assert (np.asarray(state.arrived_at) == expected).all()
    assert expected > 2  # slower than the lone vehicle's 2 steps
    lone = TrafficEnv(net, Demand(demand.origin[:1], demand.destination[:1], demand.departure[:1]), p)
    _, s1 = lone.reset(None)
    for _ in range(3):
        _, s1, *_ = lone.step(None, s1, jnp.zeros(1, jnp.int32))
    assert int(s1.arrived_at[0]) == 2


def test_masks_never_allow_missing_links():
    env = leed_jax.make_env("traffic-sumo-drt", num_agents=100) if _has_sumo() else leed_jax.make_env("traffic-grid")
    net = env.network
    _, (states, _, _, info, actions) = _random_policy_rollout(env, 40)
    for t in range(0, 40, 5):
        s = jax.tree_util.tree_map(lambda x: x[t], states)
        avail = np.asarray(env.avail_actions(s))
        links = net.out_links[np.asarray(s.node)]
        deciding = np.asarray(s.status) != ARRIVED
        assert (links[deciding][avail[deciding]] >= 0).all()
        assert avail.any(1).all()
    # every taken decision entered a link leaving the vehicle's decision node
    dec = np.asarray(info["decision"])
    _, s0 = env.reset(jax.random.PRNGKey(0))
    prev_node = np.concatenate([np.asarray(s0.node)[None], np.asarray(states.node)[:-1]])
    a = np.asarray(actions)
    chosen = net.out_links[prev_node, a]
    assert (chosen[dec] >= 0).all()


def test_determinism_jit_and_vmap():
    env = leed_jax.make_env("traffic-grid")
    s1 = _random_policy_rollout(env, 30, seed=3)
    s2 = _random_policy_rollout(env, 30, seed=3)
    for a, b in zip(jax.tree_util.tree_leaves(s1), jax.tree_util.tree_leaves(s2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    obs, states = jax.jit(jax.vmap(env.reset))(keys)
    assert obs.shape == (4, 50, env.spec.obs_dim)
    acts = jnp.zeros((4, 50), jnp.int32)
    obs2, _, r, d, info = jax.jit(jax.vmap(env.step))(keys, states, acts)
    assert r.shape == (4, 50) and info["decision"].shape == (4, 50)


def test_autoreset_wrapper_restarts_episode():
    env = AutoResetWrapper(leed_jax.make_env("traffic-grid", horizon=5, departure_window=3))
    _, state = env.reset(jax.random.PRNGKey(0))
    ends = []
    for t in range(11):
        _, state, _, _, info = env.step(jax.random.PRNGKey(t), state, jnp.zeros(50, jnp.int32))
        ends.append(bool(info["episode_end"]))
    assert ends == [False] * 4 + [True] + [False] * 4 + [True, False]
    assert int(state.t) == 1


def test_ten_thousand_vehicles_construct_and_step():
    env = leed_jax.make_env("traffic-grid-large", num_agents=10_000)
    assert env.spec.num_agents == 10_000
    final, (states, r, d, info, _) = _random_policy_rollout(env, 20)
    assert r.shape == (20, 10_000)
    assert np.isfinite(np.asarray(r)).all()
    assert int((np.asarray(final.status) == ON_LINK).sum()) > 0


def test_team_reward_mixes_mean():
    base = leed_jax.make_env("traffic-grid")
    team = leed_jax.make_env("traffic-grid", team_reward=1.0)
    _, s = base.reset(jax.random.PRNGKey(0))
    a = jnp.zeros(50, jnp.int32)
    r_team = team.step(None, s, a)[2]
    r_base = base.step(None, s, a)[2]
    np.testing.assert_allclose(r_team, jnp.full(50, r_base.mean()), rtol=1e-6)


# ---------------------------------------------------------------- networks and demand files


def _has_sumo():
    try:
        import sumolib  # noqa: F401
    except ImportError:
        return False
    return True


TNTP = """<NUMBER OF ZONES> 3
<NUMBER OF NODES> 3
<FIRST THRU NODE> 1
<NUMBER OF LINKS> 4
<END OF METADATA>
~ init term capacity length fftime b power speed toll type ;
1 2 1800 1.0 2.0 0.15 4 0 0 1 ;
2 1 1800 1.0 2.0 0.15 4 0 0 1 ;
2 3 900 2.0 3.0 0.15 4 0 0 1 ;
3 2 900 2.0 3.0 0.15 4 0 0 1 ;
"""


def test_tntp_reader(tmp_path):
    f = tmp_path / "tiny_net.tntp"
    f.write_text(TNTP)
    net = read_tntp(f)
    assert net.num_nodes == 3 and net.num_links == 4
    assert net.tt[0, 2] == pytest.approx(300.0)  # 2 min + 3 min
    assert net.link_capacity[0] == pytest.approx(1800 / 3600 * 120)


def test_tntp_malformed_names_file_and_line(tmp_path):
    f = tmp_path / "bad_net.tntp"
    f.write_text(TNTP.replace("2 3 900 2.0 3.0", "2 3 nine 2.0 3.0"))
    with pytest.raises(leed_jax.ScenarioError, match=r"bad_net\.tntp:9: non-numeric"):
        read_tntp(f)


def test_demand_file_errors(tmp_path):
    net = grid_network(2, 2)
    good = tmp_path / "d.csv"
    good.write_text("origin,destination,departure\nIntersection_0,Intersection_3,0\n1,2,4\n")
    d = read_demand(net, good)
    assert list(d.origin) == [0, 1] and list(d.departure) == [0, 4]
    bad = tmp_path / "bad.csv"
    bad.write_text("origin,destination,departure\n0,3,0\n0,Nowhere,1\n")
    with pytest.raises(leed_jax.ScenarioError, match=r"bad\.csv:3: unknown node 'Nowhere'"):
        read_demand(net, bad)


def test_unreachable_pairs_never_generated_and_rejected_in_files(tmp_path):
    # one-way chain 0 -> 1 -> 2: node 0 cannot be reached from 2
    from leed_jax.envs.network import RoadNetwork

    net = RoadNetwork("chain", np.zeros((3, 2)), ["a", "b", "c"], [0, 1], [1, 2], [10, 10], [1, 1], [1, 1], [2, 2])
    d = random_demand(net, 200, 5, seed=1)
    assert np.isfinite(net.tt[d.origin, d.destination]).all() and (d.origin != d.destination).all()
    f = tmp_path / "u.csv"
    f.write_text("origin,destination,departure\na,c,0\nc,a,0\n")
    with pytest.raises(leed_jax.ScenarioError, match=r"u\.csv:3: destination a cannot be reached from c"):
        read_demand(net, f)


@pytest.mark.skipif(not _has_sumo(), reason="needs the 'sumo' extra")
def test_sumo_osm_network_reads_and_runs():
    env = leed_jax.make_env("traffic-sumo-drt", num_agents=50)
    net = env.network
    assert net.num_nodes > 100 and net.num_links > 200
    assert np.isfinite(net.tt).all()  # strongly connected after the cut
    final, _ = _random_policy_rollout(env, 50)
    assert int((np.asarray(final.status) == ON_LINK).sum() + (np.asarray(final.status) == ARRIVED).sum()) > 0


@pytest.mark.skipif(not _has_sumo(), reason="needs the 'sumo' extra")
def test_sumo_malformed_file(tmp_path):
    f = tmp_path / "broken.net.xml"
    f.write_text("<net><edge id='e' from='a'")
    with pytest.raises(leed_jax.ScenarioError, match="broken.net.xml"):
        read_sumo(f)


def test_unknown_scenario_lists_available():
    with pytest.raises(leed_jax.ScenarioError, match="available: .*traffic-grid"):
        leed_jax.make_env("no-such-scenario")


@pytest.mark.parametrize(
    "override, message",
    [
        ({"num_agents": 0}, "num_agents=0 must be > 0"),
        ({"horizon": -5}, "horizon=-5 must be > 0"),
        ({"num_agents": "many"}, "must be an integer"),
        ({"alpha": "x"}, "must be a number"),
        ({"wheels": 4}, "unknown override 'wheels'"),
        ({"team_reward": 2.0}, "team_reward=2.0 must be in"),
    ],
)
def test_bad_overrides_one_line_errors(override, message):
    with pytest.raises(leed_jax.ScenarioError, match=message) as exc:
        leed_jax.make_env("traffic-grid", **override)
    assert "\n" not in str(exc.value)
