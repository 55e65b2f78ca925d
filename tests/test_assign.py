"""Static traffic assignment (leed_jax.assign): analytic cases, Sioux Falls against its published
solution (skipped when ../shared/data/tntp/ is absent), and env scenarios' yardsticks."""

from pathlib import Path

import numpy as np
import pytest

import leed_jax
from leed_jax.assign import AssignmentProblem, problem_from_scenario, problem_from_tntp, solve
from leed_jax.assign.paths import HostAllOrNothing, all_or_nothing, make_graph

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tntp"
needs_data = pytest.mark.skipif(not (DATA / "SiouxFalls_net.tntp").is_file(), reason=f"TNTP data not in {DATA}")


def two_routes(demand=3.0):
    """Two parallel links 0 → 1 with linear costs t_A = 1 + x, t_B = 2 + 2x (power 1)."""
    return AssignmentProblem(
        name="two-routes", num_nodes=2, link_src=[0, 0], link_dst=[1, 1], t0=[1.0, 2.0], capacity=[1.0, 1.0],
        b=[1.0, 1.0], power=[1.0, 1.0], origins=[0], destinations=[1], demand=[[demand]],
    )


@pytest.mark.parametrize("backend", ["jax", "scipy"])
def test_two_routes_ue_and_so_analytic(backend):
    ue = solve(two_routes(), objective="ue", gap=1e-9, backend=backend)
    # UE: 1 + x_A = 2 + 2 x_B, x_A + x_B = 3  →  x_B = 2/3
    np.testing.assert_allclose(ue.flow, [7 / 3, 2 / 3], atol=1e-6)
    assert ue.converged and ue.relative_gap <= 1e-9
    assert ue.beckmann == pytest.approx((7 / 3 + 0.5 * (7 / 3) ** 2) + (2 * 2 / 3 + (2 / 3) ** 2), rel=1e-6)
    so = solve(two_routes(), objective="so", gap=1e-9, backend=backend)
    # SO: marginal costs equal, 1 + 2 x_A = 2 + 4 x_B  →  x_B = 5/6
    np.testing.assert_allclose(so.flow, [13 / 6, 5 / 6], atol=1e-6)
    assert so.tstt < ue.tstt


def test_unroutable_demand_and_bad_options_are_errors():
    with pytest.raises(leed_jax.ScenarioError, match="cannot be reached"):
        AssignmentProblem(
            name="x", num_nodes=3, link_src=[0], link_dst=[1], t0=[1.0], capacity=[1.0], b=[0.15], power=[4.0],
            origins=[0], destinations=[2], demand=[[1.0]],
        )
    with pytest.raises(leed_jax.ScenarioError, match="objective 'nash'"):
        solve(two_routes(), objective="nash")


@needs_data
def test_jax_and_host_all_or_nothing_agree():
    import jax
    import jax.numpy as jnp

    p = problem_from_tntp(DATA / "SiouxFalls_net.tntp", DATA / "SiouxFalls_trips.tntp")
    cost = p.t0 * (1.0 + np.random.default_rng(0).random(p.num_links))  # no ties
    with jax.enable_x64(True):
        flow, spt, _ = jax.jit(all_or_nothing)(make_graph(p), jnp.asarray(cost))
    host_flow, host_spt = HostAllOrNothing(p)(cost)
    np.testing.assert_allclose(np.asarray(flow), host_flow, rtol=1e-12)
    assert float(spt) == pytest.approx(host_spt, rel=1e-12)
    assert host_flow.sum() > p.total_demand  # every trip uses at least one link


@needs_data
def test_sioux_falls_matches_the_published_equilibrium():
    from leed_jax.envs.tntp import read_tntp_flow

    p = problem_from_tntp(DATA / "SiouxFalls_net.tntp", DATA / "SiouxFalls_trips.tntp")
    ue = solve(p, objective="ue", method="bfw", gap=1e-4)
    assert ue.converged and ue.relative_gap <= 1e-4
    # Published Beckmann objective 42.31335 (file units: 1e5 vehicle-minutes, i.e. veh·(0.01 h)/1000)
    assert ue.beckmann / 1e5 == pytest.approx(42.31335287107440, rel=1e-4)
    _, _, volume, cost = read_tntp_flow(DATA / "SiouxFalls_flow.tntp")
    assert (np.abs(ue.flow - volume) <= np.maximum(0.01 * volume, 1.0)).all()
    np.testing.assert_allclose(ue.cost, cost, rtol=0.01)
    so = solve(p, objective="so", gap=1e-4)
    assert so.converged and so.tstt < ue.tstt  # the optimum beats the equilibrium on total time


def test_scenario_yardsticks():
    p = problem_from_scenario("traffic-grid")
    env = leed_jax.make_env("traffic-grid")
    window = env.scenario.tables["demand"]["departure_window"]  # steps
    assert p.total_demand == pytest.approx(env.spec.num_agents * 3600.0 / (window * env.params.dt))
    ue = solve(p, objective="ue", gap=1e-6, backend="scipy")  # the host loop compiles least
    so = solve(p, objective="so", gap=1e-6, backend="scipy")
    free = np.asarray(env.network.tt)[env.demand.origin, env.demand.destination].mean()
    assert ue.mean_time >= free - 1e-6 and so.tstt <= ue.tstt * (1 + 1e-6)



def test_cli_writes_flows_and_fails_cleanly(tmp_path, capsys):
    import json

    from leed_jax.assign.__main__ import main

    net = tmp_path / "two_net.tntp"
    net.write_text("<NUMBER OF ZONES> 2\n<NUMBER OF NODES> 3\n<FIRST THRU NODE> 3\n<END OF METADATA>\n"
                   "1 3 100 1 1 0.15 4 ;\n3 2 100 1 1 0.15 4 ;\n1 2 100 1 5 0.15 4 ;\n")
    trips = tmp_path / "two_trips.tntp"
    trips.write_text("<NUMBER OF ZONES> 2\n<END OF METADATA>\nOrigin 1\n 2 : 300.0;\n")
    out = tmp_path / "flows.csv"
    assert main([str(net), str(trips), "--backend", "scipy", "--gap", "1e-8", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["converged"] and summary["time_unit"] == "min"
    rows = out.read_text().splitlines()
    assert rows[0] == "from,to,flow,cost" and rows[1].startswith("1,3,") and len(rows) == 4
    flows = [float(r.split(",")[2]) for r in rows[1:]]
    assert flows[0] == pytest.approx(flows[1]) and flows[1] + flows[2] == pytest.approx(300.0)
    # equal times on the two routes: 2 (1 + 0.15 (x/100)^4) = 5 (1 + 0.15 ((300 - x)/100)^4)
    x = flows[0]
    assert 2 * (1 + 0.15 * (x / 100) ** 4) == pytest.approx(5 * (1 + 0.15 * ((300 - x) / 100) ** 4), rel=1e-5)
    assert main([str(tmp_path / "missing_net.tntp"), str(trips)]) == 2
    assert "missing_net.tntp" in capsys.readouterr().err


@needs_data
def test_path_based_gp_agrees_with_the_published_flows():
    from leed_jax.envs.tntp import read_tntp_flow

    p = problem_from_tntp(DATA / "SiouxFalls_net.tntp", DATA / "SiouxFalls_trips.tntp")
    ue = solve(p, method="gp", gap=1e-5)
    _, _, volume, _ = read_tntp_flow(DATA / "SiouxFalls_flow.tntp")
    assert ue.converged and ue.iterations < 50
    assert (np.abs(ue.flow - volume) <= np.maximum(0.01 * volume, 1.0)).all()
    assert ue.beckmann / 1e5 == pytest.approx(42.31335287107440, rel=1e-5)
