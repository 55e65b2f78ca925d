"""Static traffic assignment in JAX: user equilibrium and system optimum under BPR link costs.

    from leed_jax.assign import problem_from_tntp, problem_from_scenario, solve
    p = problem_from_tntp("SiouxFalls_net.tntp", "SiouxFalls_trips.tntp")
    ue = solve(p, objective="ue", gap=1e-4)      # bi-conjugate Frank–Wolfe, jit-compiled
    so = solve(p, objective="so")
    ue.relative_gap, ue.beckmann, ue.tstt, ue.flow
    exact = solve(p, method="gp", gap=1e-10)     # path-based gradient projection (host)

    # yardsticks of an env scenario (its vehicles as flows over the departure window)
    solve(problem_from_scenario("traffic-grid")).mean_time     # seconds

See :mod:`leed_jax.assign.solver` for the methods and their sources, ``python -m
leed_jax.assign --help`` for the command line.
"""

from leed_jax.assign.problem import (
    AssignmentProblem,
    free_flow_times,
    problem_from_network,
    problem_from_scenario,
    problem_from_tntp,
)
from leed_jax.assign.solver import METHODS, OBJECTIVES, AssignmentResult, solve

__all__ = [
    "METHODS",
    "OBJECTIVES",
    "AssignmentProblem",
    "AssignmentResult",
    "free_flow_times",
    "problem_from_network",
    "problem_from_scenario",
    "problem_from_tntp",
    "solve",
]
