"""Link-based static traffic assignment: user equilibrium and system optimum under BPR costs.

Methods (all link-based, one all-or-nothing loading per iteration):
  * ``fw``  Frank–Wolfe (Frank & Wolfe 1956; LeBlanc, Morlok & Pierskalla 1975): move towards
    the all-or-nothing flows ``y`` with an exact line search.
  * ``gp`` path-based gradient projection (Jayakrishnan et al. 1994) on the host, for exact
    link flows where the link-based methods stall (:mod:`leed_jax.assign.paths_gp`).
  * ``cfw`` conjugate Frank–Wolfe and ``bfw`` bi-conjugate Frank–Wolfe (Mitradjieva & Lindberg
    2013, *The stiff is moving — conjugate direction Frank–Wolfe methods with applications to
    traffic assignment*, Transportation Science 47(2)): the target ``s`` is a combination of
    ``y`` and the previous one (cfw) or two (bfw) targets, chosen so that the new direction is
    conjugate to the previous ones with respect to the Hessian of the objective
    (``diag(c'(x))``). The default.

User equilibrium (``objective="ue"``) minimises the Beckmann objective
``Σ_e ∫_0^{x_e} t_e(w) dw``; system optimum (``"so"``) minimises the total travel time
``Σ_e x_e t_e(x_e)``, i.e. the same algorithm on the marginal cost ``t_e + x_e t_e'``. BPR:
``t_e(x) = t0_e (1 + b_e (x / c_e)^{p_e})`` with each link's own ``b``, ``p``, ``c``.

Relative gap (the usual one, e.g. Boyce, Ralevic-Dekic & Bar-Gera 2004):
``(Σ_e x_e c_e(x) − Σ_od d_od · κ_od(c(x))) / Σ_e x_e c_e(x)`` with ``c`` the cost being
equilibrated (``t`` for UE, marginal cost for SO) and ``κ`` shortest-path costs.

The iteration (costs, all-or-nothing loading, direction, line search) is pure JAX; chunks of
iterations run as one ``lax.while_loop`` inside ``jax.jit``, in float64, with progress printed
between chunks.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from leed_jax.assign.paths import Graph, all_or_nothing, make_graph
from leed_jax.assign.problem import AssignmentProblem
from leed_jax.envs.base import ScenarioError

METHODS = ("fw", "cfw", "bfw", "gp")
BACKENDS = ("auto", "jax", "scipy")
OBJECTIVES = ("ue", "so")
_FW, _CFW, _BFW = 0, 1, 2
# Conjugate weights stay below 1 so the target never collapses onto the previous one (M&L 2013).
_MAX_CONJ = 1.0 - 1e-6
_LINE_SEARCH_STEPS = 60  # bisection halvings: 2^-60 of the unit interval, float64 resolution


class Links(NamedTuple):
    t0: jax.Array  # [E]
    cap: jax.Array  # [E]
    b: jax.Array  # [E]
    power: jax.Array  # [E]


class SolverState(NamedTuple):
    x: jax.Array  # [E] current flows
    s1: jax.Array  # [E] last target s_{k-1}
    s2: jax.Array  # [E] target before that s_{k-2}
    tau: jax.Array  # [] last step size
    kind: jax.Array  # [] int32 direction to try next (0 fw, 1 cfw, 2 bfw)
    it: jax.Array  # [] int32 iterations done (1 = the initial all-or-nothing loading)
    gap: jax.Array  # [] relative gap of the flows measured last (inf until measured)
    tree: jax.Array  # [V, O] int32 last shortest-path trees (warm start of the next search)


@dataclasses.dataclass(frozen=True)
class AssignmentResult:
    """Result of :func:`solve`. Times in ``problem.time_unit``, flows in ``problem.flow_unit``.

    flow [E], cost [E] (BPR travel time at ``flow``); relative_gap (of the objective solved);
    beckmann (Beckmann objective of ``flow``); tstt (total system travel time ``Σ x t(x)``);
    mean_time (tstt / total demand); peak_vc (the largest volume / capacity ratio); iterations
    (all-or-nothing loadings, the first at free flow included; the flows returned are the ones
    the last loading measured); seconds (wall, after compilation); compile_seconds; history:
    (iteration, relative gap, seconds) after each chunk; converged: gap ≤ target.
    """

    problem: str
    objective: str
    method: str
    backend: str
    flow: np.ndarray
    cost: np.ndarray
    relative_gap: float
    beckmann: float
    tstt: float
    mean_time: float
    peak_vc: float
    iterations: int
    seconds: float
    compile_seconds: float
    converged: bool
    history: list

    def summary(self) -> dict:
        """JSON-ready scalars."""
        return {
            "problem": self.problem,
            "objective": self.objective,
            "method": self.method,
            "backend": self.backend,
            "relative_gap": self.relative_gap,
            "beckmann": self.beckmann,
            "tstt": self.tstt,
            "mean_time": self.mean_time,
            "peak_vc": self.peak_vc,
            "iterations": self.iterations,
            "seconds": round(self.seconds, 4),
            "compile_seconds": round(self.compile_seconds, 3),
            "converged": self.converged,
        }


def bpr_time(links: Links, x):
    """``t0 (1 + b (x/c)^p)`` [E]."""
    r = jnp.maximum(x, 0.0) / links.cap
    return links.t0 * (1.0 + links.b * _pow(r, links.power))


def _pow(r, p):
    return jnp.where(p == 0, 1.0, jnp.where(r > 0, r ** p, 0.0))


def _dpow(r, p):
    """d/dr r^p, finite at r = 0 for p ≥ 1 (0 for p > 1, 1 for p = 1)."""
    safe = jnp.where(r > 0, r, 1.0)
    return jnp.where(p == 0, 0.0, jnp.where(r > 0, p * safe ** (p - 1.0), jnp.where(p == 1, 1.0, 0.0)))


def _cost(links: Links, x, so):
    """The cost equilibrated: travel time (UE) or marginal cost ``t + x t'`` (SO). ``so`` may be
    traced, so one compiled program serves both objectives."""
    r = jnp.maximum(x, 0.0) / links.cap
    k = jnp.where(so, 1.0 + links.power, 1.0)
    return links.t0 * (1.0 + links.b * k * _pow(r, links.power))


def _dcost(links: Links, x, so):
    """d cost / dx [E]: the diagonal Hessian of the objective."""
    r = jnp.maximum(x, 0.0) / links.cap
    k = jnp.where(so, 1.0 + links.power, 1.0)
    return links.t0 * links.b * k * _dpow(r, links.power) / links.cap


def beckmann(links: Links, x):
    """``Σ_e ∫_0^{x_e} t_e`` = ``Σ t0 (x + b x^{p+1} / ((p+1) c^p))``."""
    r = jnp.maximum(x, 0.0) / links.cap
    return jnp.sum(links.t0 * x * (1.0 + links.b * _pow(r, links.power) / (links.power + 1.0)))


def _line_search(links: Links, x, d, so):
    """Exact step τ ∈ [0, 1] minimising the objective along ``x + τ d`` (bisection on its
    derivative ``d · c(x + τ d)``, which is non-decreasing in τ)."""
    slope = lambda tau: jnp.dot(d, _cost(links, x + tau * d, so))

    def body(_, lohi):
        lo, hi = lohi
        mid = 0.5 * (lo + hi)
        neg = slope(mid) < 0
        return jnp.where(neg, mid, lo), jnp.where(neg, hi, mid)

    lo, hi = jax.lax.fori_loop(0, _LINE_SEARCH_STEPS, body, (jnp.zeros_like(x[0]), jnp.ones_like(x[0])))
    return jnp.where(slope(1.0) <= 0, 1.0, 0.5 * (lo + hi))


def _direction(links: Links, st: SolverState, y, so, max_kind):
    """Target ``s`` of this iteration and the kind actually used (Mitradjieva & Lindberg 2013)."""
    x, s1, s2, tau = st.x, st.s1, st.s2, st.tau
    h = _dcost(links, x, so)
    hdot = lambda a, b: jnp.sum(a * h * b)
    safe_div = lambda n, dd: jnp.where(dd != 0, n / jnp.where(dd != 0, dd, 1.0), 0.0)
    kind = jnp.minimum(st.kind, max_kind)
    # Conjugate FW: s = α s_{k-1} + (1-α) y with (s - x) H-conjugate to (s_{k-1} - x).
    alpha = jnp.clip(safe_div(hdot(s1 - x, y - x), hdot(s1 - x, y - s1)), 0.0, _MAX_CONJ)
    s_cfw = alpha * s1 + (1.0 - alpha) * y
    # Bi-conjugate FW: s = β0 y + β1 s_{k-1} + β2 s_{k-2}, conjugate to the last two directions.
    dbar2 = tau * s1 + (1.0 - tau) * s2 - x
    dbar1 = s1 - x
    mu = jnp.maximum(0.0, -safe_div(hdot(dbar2, y - x), hdot(dbar2, s2 - s1)))
    nu = jnp.maximum(0.0, -safe_div(hdot(dbar1, y - x), hdot(dbar1, dbar1)) + mu * tau / jnp.maximum(1.0 - tau, 1e-12))
    beta0 = 1.0 / (1.0 + mu + nu)
    s_bfw = beta0 * y + nu * beta0 * s1 + mu * beta0 * s2
    s = jnp.where(kind == _BFW, s_bfw, jnp.where(kind == _CFW, s_cfw, y))
    # A conjugate target that is not a descent direction falls back to the plain FW target.
    c = _cost(links, x, so)
    bad = (kind != _FW) & (jnp.dot(s - x, c) >= 0)
    return jnp.where(bad, y, s), jnp.where(bad, _FW, kind)


def _step(links: Links, st: SolverState, y, spt, tree, so, max_kind):
    """Given the all-or-nothing flows ``y`` and shortest-path total ``spt`` at ``st.x``: the gap
    of ``st.x``, then one move along the (bi)conjugate direction with an exact line search."""
    c = _cost(links, st.x, so)
    total = jnp.dot(st.x, c)
    gap = jnp.where(total > 0, (total - spt) / jnp.where(total > 0, total, 1.0), 0.0)
    s, kind = _direction(links, st, y, so, max_kind)
    tau = _line_search(links, st.x, s - st.x, so)
    x = st.x + tau * (s - st.x)
    # A full step makes the conjugacy history meaningless: restart from FW (M&L 2013, sec. 3).
    next_kind = jnp.where(tau >= 1.0 - 1e-12, _FW, jnp.minimum(kind + 1, max_kind)).astype(jnp.int32)
    new = SolverState(x=x, s1=s, s2=st.s1, tau=tau, kind=next_kind, it=st.it + 1, gap=gap, tree=tree)
    return new, st.x, gap


@jax.jit
def _chunk(g: Graph, links: Links, st: SolverState, target, limit, so, max_kind):
    """Iterate (all-or-nothing in JAX) until the gap of the current flows is ≤ ``target`` or
    ``st.it`` reaches ``limit``. Returns the new state, the flows whose gap was measured last
    (the answer when it meets the target) and that gap. Everything is an argument (no
    closed-over constants), so one compilation serves every problem of the same sizes and both
    objectives and methods."""

    def cond(c):
        st, _, gap = c
        return (gap > target) & (st.it < limit)

    def body(c):
        st, _, _ = c
        y, spt, tree = all_or_nothing(g, _cost(links, st.x, so), st.tree)
        return _step(links, st, y, spt, tree, so, max_kind)

    return jax.lax.while_loop(cond, body, (st, st.x, st.gap))


_first_loading = jax.jit(lambda g, cost: all_or_nothing(g, cost))


_host_cost = jax.jit(_cost)
_host_step = jax.jit(lambda links, st, y, spt, so, max_kind: _step(links, st, y, spt, st.tree, so, max_kind))


def _host_chunk(aon, links: Links, st: SolverState, target, limit, so, max_kind):
    """The same loop with the all-or-nothing loading on the host (scipy Dijkstra), the rest jitted."""
    measured, gap = st.x, st.gap
    while float(gap) > float(target) and int(st.it) < int(limit):
        y, spt = aon(np.asarray(_host_cost(links, st.x, so)))
        st, measured, gap = _host_step(links, st, jnp.asarray(y), jnp.float64(spt), so, max_kind)
    return st, measured, gap


def solve(
    problem: AssignmentProblem,
    objective: str = "ue",
    method: str = "bfw",
    gap: float = 1e-4,
    max_iterations: int = 10_000,
    backend: str = "auto",
    chunk: int = 50,
    verbose: bool = False,
    callback=None,
) -> AssignmentResult:
    """Solve a static assignment to relative ``gap`` (or ``max_iterations``).

    Args:
        problem: links, BPR parameters and demand (:mod:`leed_jax.assign.problem`).
        objective: "ue" (user equilibrium) or "so" (system optimum).
        method: "bfw" (default), "cfw", "fw", or "gp" (path-based, host; see the module
            docstring).
        gap: target relative gap. max_iterations: cap on all-or-nothing loadings (1 = the
            loading at free flow).
        backend: where the all-or-nothing loading runs: "jax" (default: warm-started
            Bellman–Ford inside the jitted loop) or "scipy" (Dijkstra on the host, the rest
            jitted). Measured in ``benchmarks/assignment.py``: the jax loop is the faster per
            iteration on both Sioux Falls and Anaheim (the host loop pays a device round trip
            per iteration); "auto" = "jax".
        chunk: iterations per compiled call; progress goes to stderr between calls if ``verbose``.
        callback: ``callback(iterations, gap, flow [E] numpy) -> bool`` after each chunk; True
            stops the solve there (e.g. once the flows match a reference).

    ``seconds`` counts everything after compilation (the free-flow loading included);
    ``compile_seconds`` the compilation.
    """
    if objective not in OBJECTIVES:
        raise ScenarioError(f"objective {objective!r} is not one of {', '.join(OBJECTIVES)}")
    if method not in METHODS:
        raise ScenarioError(f"method {method!r} is not one of {', '.join(METHODS)}")
    if backend not in BACKENDS:
        raise ScenarioError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if not gap > 0 or max_iterations < 1 or chunk < 1:
        raise ScenarioError(f"need gap > 0, max_iterations ≥ 1 and chunk ≥ 1 (got {gap}, {max_iterations}, {chunk})")
    if backend == "auto":
        backend = "jax"
    so = objective == "so"
    if method == "gp":
        return _solve_gp(problem, objective, gap, max_iterations, verbose, callback)
    max_kind = METHODS.index(method)
    with jax.enable_x64(True):
        t_start = time.perf_counter()
        g = make_graph(problem)
        f64 = lambda a: jnp.asarray(a, jnp.float64)
        links = Links(f64(problem.t0), f64(problem.capacity), f64(problem.b), f64(problem.power))
        v, num_o = problem.num_nodes, len(problem.origins)
        st = SolverState(
            x=links.t0 * 0.0, s1=links.t0 * 0.0, s2=links.t0 * 0.0, tau=jnp.array(1.0, jnp.float64),
            kind=jnp.array(_FW, jnp.int32), it=jnp.array(1, jnp.int32), gap=jnp.array(jnp.inf, jnp.float64),
            tree=jnp.full((v, num_o), problem.num_links, jnp.int32),
        )
        target = jnp.float64(gap)
        so_a, kind_a = jnp.asarray(so), jnp.int32(max_kind)
        if backend == "jax":
            first = lambda c: _first_loading(g, c)
            runner = lambda st, target, limit: _chunk(g, links, st, target, limit, so_a, kind_a)
        else:
            from leed_jax.assign.paths import HostAllOrNothing

            host = HostAllOrNothing(problem)
            first = lambda c: (*map(jnp.asarray, host(np.asarray(c))), st.tree)
            runner = lambda st, target, limit: _host_chunk(host, links, st, target, limit, so_a, kind_a)
        # Compile (or reuse the cached programs) before the clock starts: a zero-iteration call.
        jax.block_until_ready(first(_cost(links, links.t0 * 0.0, so_a)))
        jax.block_until_ready(runner(st, target, jnp.int32(0)))
        if backend == "scipy":  # the host loop's jitted pieces compile on their first call
            jax.block_until_ready(_host_step(links, st, _host_cost(links, st.x, so_a), jnp.float64(0.0), so_a, kind_a))
        compile_s = time.perf_counter() - t_start
        t0 = time.perf_counter()
        x0, _, tree0 = first(_cost(links, links.t0 * 0.0, so_a))
        st = st._replace(x=x0, s1=x0, s2=x0, tree=tree0)
        x = x0
        history = []
        measured_gap = float("inf")
        while int(st.it) < max_iterations:
            limit = min(int(st.it) + chunk, max_iterations)
            st, x, gap_arr = runner(st, target, jnp.int32(limit))
            measured_gap = float(gap_arr)
            history.append((int(st.it), measured_gap, time.perf_counter() - t0))
            if verbose:
                print(f"  [{problem.name} {objective} {method}/{backend}] iteration {int(st.it)}: relative gap "
                      f"{measured_gap:.3e} ({time.perf_counter() - t0:.2f} s)", file=sys.stderr, flush=True)
            if measured_gap <= gap:
                break
            if callback is not None and callback(int(st.it), measured_gap, np.asarray(x)):
                break
        seconds = time.perf_counter() - t0
        # `x` is the flow whose gap was measured last; the state may hold one step more.
        flow = np.asarray(x)
        cost = np.asarray(bpr_time(links, x))
        bk = float(beckmann(links, x))
    tstt = float(np.dot(flow, cost))
    total = problem.total_demand
    return AssignmentResult(
        problem=problem.name,
        objective=objective,
        method=method,
        backend=backend,
        flow=flow,
        cost=cost,
        relative_gap=measured_gap,
        beckmann=bk,
        tstt=tstt,
        mean_time=tstt / total if total > 0 else 0.0,
        peak_vc=float((flow / problem.capacity).max()),
        iterations=int(st.it),
        seconds=seconds,
        compile_seconds=compile_s,
        converged=measured_gap <= gap,
        history=history,
    )


def _solve_gp(problem, objective, gap, max_iterations, verbose, callback) -> AssignmentResult:
    from leed_jax.assign.paths_gp import _bpr, gradient_projection

    so = objective == "so"
    flow, g, it, seconds, history = gradient_projection(
        problem, gap=gap, max_iterations=max_iterations, callback=callback, verbose=verbose, so=so
    )
    cost = _bpr(problem, flow)
    r = flow / problem.capacity
    bk = float(np.sum(problem.t0 * flow * (1.0 + problem.b * np.where(problem.power == 0, 1.0, r ** problem.power)
                                           / (problem.power + 1.0))))
    tstt = float(flow @ cost)
    total = problem.total_demand
    return AssignmentResult(
        problem=problem.name, objective=objective, method="gp", backend="host", flow=flow, cost=cost,
        relative_gap=float(g), beckmann=bk, tstt=tstt, mean_time=tstt / total if total > 0 else 0.0,
        peak_vc=float((flow / problem.capacity).max()), iterations=it, seconds=seconds, compile_seconds=0.0,
        converged=bool(g <= gap), history=history,
    )
