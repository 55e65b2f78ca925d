"""TNTP in full: per-link BPR data, zones and <FIRST THRU NODE>, trips → vehicles, the Anaheim scenario.

Tests on the real files look in <repo>/../shared/data/tntp/ and skip when it is absent."""

from pathlib import Path

import numpy as np
import pytest

import leed_jax
from leed_jax.envs import tntp
from leed_jax.envs.network import read_tntp

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tntp"
needs_data = pytest.mark.skipif(not (DATA / "Anaheim_net.tntp").is_file(), reason=f"TNTP data not in {DATA}")

# Zones 1, 2 (centroids, first thru node 3); 3 -> 4 is slow, 3 -> 1 -> 4 would be a shortcut
# through centroid 1.
NET = """<NUMBER OF ZONES> 2
<NUMBER OF NODES> 4
<FIRST THRU NODE> 3
<NUMBER OF LINKS> 8
<ORIGINAL HEADER>~ Tail Head Capacity (veh/h) Length (ft) Free Flow Time (min) B Power ;
<END OF METADATA>
~ init term capacity length fftime b power speed toll type ;
1 3 1800 5280 1 0.15 4 0 0 1 ;
3 1 1800 5280 1 0.15 4 0 0 1 ;
1 4 3600 5280 1 0.30 2 0 0 1 ;
4 1 1800 5280 1 0.15 4 0 0 1 ;
3 4 900 5280 10 0.15 4 0 0 1 ;
4 3 900 5280 10 0.15 4 0 0 1 ;
2 4 1800 5280 1 0.15 4 0 0 1 ;
4 2 1800 5280 1 0.15 4 0 0 1 ;
"""

TRIPS = """<NUMBER OF ZONES> 2
<TOTAL OD FLOW> 30.5
<END OF METADATA>

Origin 1
    1 :   0.0;    2 :  20.5;
Origin 2
    1 :  10.0;    2 :   0.0;
"""


@pytest.fixture
def tiny(tmp_path):
    (tmp_path / "tiny_net.tntp").write_text(NET)
    (tmp_path / "tiny_trips.tntp").write_text(TRIPS)
    return tmp_path


def test_per_link_bpr_capacity_and_units(tiny):
    tn = tntp.read_tntp_network(tiny / "tiny_net.tntp")
    net = tn.net
    assert net.link_bpr_b[2] == 0.30 and net.link_bpr_power[2] == 2.0  # each link its own
    assert net.link_flow_capacity[2] == 3600.0  # capacity as a flow, veh/h
    assert net.link_length[0] == pytest.approx(1609.344)  # the header says feet
    assert net.link_lanes[2] == 2.0  # 3,600 veh/h at 1,800 per lane


def test_centroids_are_never_through_nodes(tiny):
    split = tntp.read_tntp_network(tiny / "tiny_net.tntp")
    net = split.net
    assert net.num_nodes == 6  # two centroids gained a sink copy
    a, b = 2, 3  # node indices of TNTP nodes 3 and 4
    assert net.tt[a, b] == pytest.approx(600.0)  # 10 min direct, not 2 min via centroid 1
    # trips start at the centroid, end at its copy; the copy has no out-link, the original no in-link
    o, d = split.zone_origin[0], split.zone_dest[0]
    assert o != d and (net.link_dst != o).all() and (net.link_src != d).all()
    assert net.tt[split.zone_origin[1], split.zone_dest[0]] == pytest.approx(120.0)
    # without splitting, the rule is a turn restriction: nothing turns at a centroid
    plain = tntp.read_tntp_network(tiny / "tiny_net.tntp", split_centroids=False)
    turns = {tuple(c) for c in plain.net.connections.tolist()}
    into_1 = np.flatnonzero(plain.net.link_dst == 0)
    assert into_1.size and not any(c[0] in into_1 for c in turns)
    assert not plain.through_ok[:2].any() and plain.through_ok[2:].all()
    assert read_tntp(tiny / "tiny_net.tntp").num_nodes == 6


def test_trips_reader_and_demand(tiny):
    od = tntp.read_tntp_trips(tiny / "tiny_trips.tntp")
    np.testing.assert_allclose(od, [[0.0, 20.5], [10.0, 0.0]])
    tn = tntp.read_tntp_network(tiny / "tiny_net.tntp")
    d = tntp.tntp_demand(tn, od, num_agents=61, departure_window=30, seed=3)
    assert d.num_agents == 61
    n12 = int(((d.origin == tn.zone_origin[0]) & (d.destination == tn.zone_dest[1])).sum())
    assert abs(n12 - 41) <= 1  # within one vehicle of 61 · 20.5 / 30.5
    assert d.departure.min() >= 0 and d.departure.max() < 30 and (np.diff(d.departure) >= 0).all()
    again = tntp.tntp_demand(tn, od, num_agents=61, departure_window=30, seed=3)
    assert (again.origin == d.origin).all() and (again.departure == d.departure).all()
    assert tntp.tntp_demand(tn, od).num_agents == 30  # one vehicle per trip by default


def test_bad_files_name_file_and_line(tiny):
    bad = tiny / "bad_trips.tntp"
    bad.write_text(TRIPS.replace("2 :  20.5;", "2 :  lots;"))
    with pytest.raises(leed_jax.ScenarioError, match=r"bad_trips\.tntp:6: expected 'destination : trips;'"):
        tntp.read_tntp_trips(bad)
    bad.write_text(TRIPS.replace("30.5", "31.5"))
    with pytest.raises(leed_jax.ScenarioError, match=r"TOTAL OD FLOW"):
        tntp.read_tntp_trips(bad)
    net = tiny / "bad_net.tntp"
    net.write_text(NET.replace("1 4 3600 5280 1 0.30 2", "1 4 3600 5280 1 -0.3 2"))
    with pytest.raises(leed_jax.ScenarioError, match=r"bad_net\.tntp:10: BPR b and power"):
        tntp.read_tntp_network(net)
    with pytest.raises(leed_jax.ScenarioError, match=r"TNTP trips file not found: .*nowhere_trips\.tntp"):
        tntp.read_tntp_trips(tiny / "nowhere_trips.tntp")


def test_missing_data_is_one_clear_line(tmp_path):
    with pytest.raises(leed_jax.ScenarioError) as err:
        leed_jax.make_env("traffic-anaheim", file=str(tmp_path / "Anaheim_net.tntp"))
    assert "Anaheim_net.tntp" in str(err.value) and "\n" not in str(err.value)


@needs_data
def test_anaheim_files_in_full():
    tn = tntp.read_tntp_network(DATA / "Anaheim_net.tntp")
    assert tn.num_zones == 38 and tn.first_thru_node == 39
    assert tn.net.num_links == 914 and tn.net.num_nodes == 416 + 38
    assert tn.link_capacity[0] == 9000.0 and tn.link_capacity[7] == 5400.0  # the file's first links
    assert (tn.net.link_flow_capacity == tn.link_capacity).all()
    od = tntp.read_tntp_trips(DATA / "Anaheim_trips.tntp")
    assert od.shape == (38, 38) and od.sum() == pytest.approx(104694.4)
    frm, _, vol, _ = tntp.read_tntp_flow(DATA / "Anaheim_flow.tntp")
    assert len(vol) == 914 and (tn.node_ids[tn.net.link_src] == frm).all()


@needs_data
def test_anaheim_scenario_builds_and_steps():
    import jax

    env = leed_jax.make_env("traffic-anaheim", num_agents=2000)
    assert env.spec.num_agents == 2000
    obs, state = env.reset(jax.random.PRNGKey(0))
    step = jax.jit(env.step)
    for t in range(3):
        actions = np.asarray(env.avail_actions(state)).argmax(-1)
        obs, state, *_ = step(jax.random.PRNGKey(t), state, actions)
    assert np.isfinite(np.asarray(obs)).all()
    full = leed_jax.load_scenario("traffic-anaheim")
    assert full.num_agents == 104694


def test_od_pairs_for_resampling(tiny):
    tn = tntp.read_tntp_network(tiny / "tiny_net.tntp")
    o, d, w = tntp.od_pairs(tn, tntp.read_tntp_trips(tiny / "tiny_trips.tntp"))
    assert sorted(w.tolist()) == [10.0, 20.5]
    assert np.isfinite(tn.net.tt[o, d]).all() and (o != d).all()
