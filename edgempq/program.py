"""The integer program over numbers: one precision per layer, the least total penalty under the budgets.

One binary per (layer, precision the target runs for the layer's kind), exactly one per layer;
the objective is the Sensitivity's penalties plus its pairwise terms, each product of two
binaries linearised exactly (y ≤ xᵢ, y ≤ xⱼ, y ≥ xᵢ + xⱼ − 1). Budgets: latency (the profile's
scaled per-layer costs, the conversions between layers as pairwise and any-of terms, and, per case
of the policy's common bits, what those add), size (weight bytes as the artifact stores them), BOPs, and RAM (every
layer's working set under the limit). A problem with cases is solved once per case, under the
case's rows; the best policy over them wins. The solver sees only numbers (`problem.py`), so it is
tested with hand-made tables; `solve.py` builds them from a model's layers, profile and sensitivity."""

from __future__ import annotations

import itertools
import math
import sys
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .errors import InfeasibleError, SolverTimeoutError
from .problem import (
    AnyOf,
    Case,
    Choice,
    Problem,
    Row,
    Solution,
    group_options,
    merge_groups,
    objective,
    totals,
    with_case,
)
from .schema import Budget

__all__ = ["AnyOf", "Case", "Choice", "Problem", "Row", "Solution", "check_feasible", "least_under", "merge_groups",
           "objective", "solve_problem", "totals", "with_case"]

if TYPE_CHECKING:
    import mip

METRICS = {"latency_ms": ("latency_ms", 1.0, "ms"), "size_kb": ("size_bytes", 1024.0, "KB"),
           "bops": ("bops", 1.0, "BOPs"), "ram_kb": ("ram_bytes", 1024.0, "KB"),
           "flash_kb": ("flash_bytes", 1024.0, "KB")}


def check_feasible(problem: Problem, budget: Budget) -> None:
    """Raise InfeasibleError naming the first budget that even the cheapest choices break, and
    the smallest value that is achievable."""
    _raise_needs(budget, _needs(problem, budget))


def _needs(problem: Problem, budget: Budget) -> dict[str, float | None]:
    """Per budget, the least value the cheapest choices reach (None when unknown)."""
    units = group_options(problem)
    out: dict[str, float | None] = {}
    for key, _ in budget.items():
        attr, scale, _ = METRICS[key]
        per_unit = [min(sum(_metric(problem, la, p, attr) for la in members) if attr != "ram_bytes"
                        else max(_metric(problem, la, p, attr) for la in members) for p in options)
                    for members, options in units]
        out[key] = (max([*per_unit, problem.constant.get("ram_bytes", 0.0)]) if attr == "ram_bytes"
                    else sum(per_unit) + problem.constant.get(attr, 0.0)) / scale
        if attr == "latency_ms" and (problem.latency_pairs or problem.latency_any or problem.rows):
            out[key] = _min_latency(problem, budget)  # conversions between layers count too
    return out


def _raise_needs(budget: Budget, needs: dict[str, float | None]) -> None:
    for key, limit in budget.items():
        need = needs.get(key)
        if need is not None and need > limit * (1 + 1e-9):  # None: RAM or groups rule all out, the solve says which
            unit = METRICS[key][2]
            raise InfeasibleError(f"budget {key}={limit:g} cannot be met: the cheapest precision per layer needs "
                                  f"{need:.6g} {unit}; raise {key} to at least {need:.6g}")


def _metric(problem: Problem, layer: str, precision: str, attr: str) -> float:
    return next(getattr(c, attr) for c in problem.choices[layer] if c.precision == precision)


def optimize(m: Any, seconds: float) -> Any:
    """`m.optimize` within `seconds`, leaving the process's thread count as it was: CBC sets
    OpenMP's to 1, which would make every later torch op in the process (the demo's deploy and
    validate) run on one thread and round differently than in a fresh process. torch is not
    imported here; only a torch already loaded is restored."""
    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch is not None else None
    try:
        return m.optimize(max_seconds=seconds)
    finally:
        if torch is not None and torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def solve_problem(problem: Problem, budget: Budget, time_limit_s: float = 30.0, near_tie: float = 0.0,
                  explain: bool = True, tie_base: float | None = None) -> Solution:
    """The optimum (or the best found in the time limit, with its gap) of `problem`, over all its
    cases; among the policies whose penalty is within `near_tie` (a fraction) of the optimum's
    (of `tie_base`, when given), the fastest. An infeasible problem is an InfeasibleError that
    says (`explain`, which takes more solves) what the budgets need; a time-out, a SolverTimeoutError."""
    import mip

    if problem.cases:
        return _solve_cases(problem, budget, time_limit_s, near_tie, explain)
    check_feasible(problem, budget)
    t0 = time.perf_counter()
    m, x, y = _base_model(problem, budget)
    terms = [c.penalty * x[(la, c.precision)] for la, options in problem.choices.items() for c in options]
    terms += _pair_sum(problem.pairs, y)
    scale = max((abs(float(t.expr[v])) for t in terms for v in t.expr), default=1.0) or 1.0
    m.objective = mip.xsum(t * (1.0 / scale) for t in terms)  # well-scaled for CBC's tolerances
    _add_budgets(m, problem, x, y, budget)
    m.max_mip_gap, m.max_mip_gap_abs = 1e-9, 1e-12
    status = optimize(m, time_limit_s)
    if status not in (mip.OptimizationStatus.OPTIMAL, mip.OptimizationStatus.FEASIBLE):
        if status == mip.OptimizationStatus.INFEASIBLE:
            raise InfeasibleError(_together_message(problem, budget) if explain else "no policy meets the budgets")
        raise SolverTimeoutError(f"the solver found no policy within {time_limit_s:g} s (status {status.name}); "
                                 "raise the time limit")
    pick = optimal = _pick(problem, x)
    gap = 0.0 if status == mip.OptimizationStatus.OPTIMAL else float(m.gap)
    gap = gap if math.isfinite(gap) else None  # python-mip reports inf when the objective is near 0
    if status == mip.OptimizationStatus.OPTIMAL:
        left = time_limit_s - (time.perf_counter() - t0)
        base = m.objective_value if tie_base is None else tie_base / scale
        cheaper = _prefer_cheaper(m, problem, (x, y), scale, (left, near_tie, base))
        if cheaper is not None and _cost(problem, cheaper) <= _cost(problem, pick):
            pick = cheaper  # a time-out in the second solve may stop at a slower one
    least = objective(problem, optimal) if pick != optimal else None
    return Solution(pick, objective(problem, pick), totals(problem, pick),
                    "optimal" if status == mip.OptimizationStatus.OPTIMAL else "feasible", gap,
                    time.perf_counter() - t0, least)


def _solve_cases(problem: Problem, budget: Budget, time_limit_s: float, near_tie: float, explain: bool) -> Solution:
    """The best policy over the problem's cases, which share the time limit: each case's optimum;
    then, among the cases within the near-tie window of the least of them (exact ties always),
    the fastest policy in the window."""
    t0 = time.perf_counter()
    merged = [with_case(problem, c) for c in problem.cases]

    def left() -> float:
        return max(1e-3, time_limit_s - (time.perf_counter() - t0))

    found = []
    for q in merged:
        try:
            found.append((q, solve_problem(q, budget, left(), 0.0, explain=False)))
        except InfeasibleError:
            continue
    if not found:
        if explain:
            needs = [_needs(q, budget) for q in merged]
            _raise_needs(budget, {k: min((n[k] for n in needs if n[k] is not None), default=None)
                                  for k, _ in budget.items()})
        raise InfeasibleError(_together_message(problem, budget) if explain else "no policy meets the budgets")
    best = min(s.objective for _, s in found)
    window = best + max(1e-7 * max(1.0, abs(best)), near_tie * abs(best))
    near = [(q, s) for q, s in found if s.objective <= window]
    if near_tie > 0:
        near = [(q, solve_problem(q, budget, left(), near_tie, explain=False, tie_base=best)) for q, _ in near]
    q, sol = min(near, key=lambda f: (_cost(f[0], f[1].precisions), f[1].objective))
    least = best if sol.objective > best + 1e-7 * max(1.0, abs(best)) else None
    return replace(sol, least=least, seconds=time.perf_counter() - t0)


def _metric_expr(problem: Problem, x: dict, y: dict, key: str) -> mip.LinExpr:
    """Budget `key`'s total over the picked choices in the budget's unit, less the fixed layers'."""
    import mip

    attr, unit_scale, _ = METRICS[key]
    if attr == "latency_ms":
        return _latency_expr(problem, x, y)
    return mip.xsum(getattr(c, attr) / unit_scale * x[(la, c.precision)]
                    for la, options in problem.choices.items() for c in options)


def _add_budgets(m: mip.Model, problem: Problem, x: dict, y: dict, budget: Budget) -> None:
    """The budgets as constraints (RAM is not a sum: `_base_model` excludes choices over it)."""
    for key, limit in budget.items():
        attr, unit_scale, _ = METRICS[key]
        if attr != "ram_bytes":
            m += _metric_expr(problem, x, y, key) <= limit - problem.constant.get(attr, 0.0) / unit_scale


def least_under(problem: Problem, budget: Budget, key: str) -> float | None:
    """The least value of budget `key` (latency_ms, size_kb or bops) that any policy meeting the
    other budgets reaches; None if none does or CBC gives no proof in 30 s."""
    import mip

    if problem.cases:
        found = [least_under(with_case(problem, c), budget, key) for c in problem.cases]
        return min((v for v in found if v is not None), default=None)
    others = replace(budget, **{key: None})
    m, x, y = _base_model(problem, others)
    _add_budgets(m, problem, x, y, others)
    m.objective = _metric_expr(problem, x, y, key)
    if optimize(m, 30) != mip.OptimizationStatus.OPTIMAL:
        return None
    attr, unit_scale, _ = METRICS[key]
    return float(m.objective_value) + problem.constant.get(attr, 0.0) / unit_scale


def _together_message(problem: Problem, budget: Budget) -> str:
    """Budgets each feasible alone but not together: the least latency (else size) the others allow."""
    text = f"the budgets {_fmt(budget)} cannot all be met together (each alone can)"
    for key in ("latency_ms", "size_kb", "flash_kb", "bops"):
        if getattr(budget, key) is not None and len(budget.items()) > 1:
            need = least_under(problem, budget, key)
            if need is not None:
                unit = METRICS[key][2]
                return f"{text}; with the others, {key} needs at least {need:.6g} {unit}: raise it to that, " \
                       "or loosen the others"
    return f"{text}; loosen one of them"


def _base_model(problem: Problem, budget: Budget) -> tuple[mip.Model, dict, dict]:
    """The CBC model with its binaries x (one choice per layer, groups tied, choices over the
    RAM budget excluded) and the pair variables y; no objective yet."""
    import mip

    ram_limit = budget.ram_kb * 1024 if budget.ram_kb is not None else math.inf
    m = mip.Model(sense=mip.MINIMIZE, solver_name=mip.CBC)
    m.verbose = 0
    m.threads = 1
    x: dict[tuple[str, str], mip.Var] = {}
    for la, options in problem.choices.items():
        for c in options:
            # a choice whose working set alone is over the RAM budget is excluded outright
            x[(la, c.precision)] = m.add_var(var_type=mip.BINARY, ub=0 if c.ram_bytes > ram_limit else 1)
        m += mip.xsum(x[(la, c.precision)] for c in options) == 1
    for row in problem.rows:
        m += mip.xsum(v * x[c] for c, v in row.coefficients.items() if c in x) <= row.limit
    for members, common in group_options(problem):
        for la in members:
            for c in problem.choices[la]:
                if c.precision not in common:
                    m += x[(la, c.precision)] == 0
        for other in members[1:]:
            for p in common:
                m += x[(members[0], p)] == x[(other, p)]
    return m, x, _pair_vars(m, problem, x) | _any_vars(m, problem, x)


def _any_vars(m: mip.Model, problem: Problem, x: dict) -> dict:
    """One z ≥ 0 per any-of term, z ≥ Σ x(given) + x(reader) − 1 for each reader (z ≥ x(reader)
    without a given): at least 1 exactly when the term is paid. Its cost is never negative, so
    an optimum or a budget takes z at that bound. Choices cut from the problem are left out."""
    import mip

    z = {}
    for i, t in enumerate(problem.latency_any):
        given = [c for c in t.given if c in x]
        readers = [c for c in t.readers if c in x]
        if t.ms <= 0 or not readers or (t.given and not given):
            continue
        z[("any", i)] = v = m.add_var(lb=0.0, ub=1.0)
        for r in readers:
            m += v >= mip.xsum(x[c] for c in given) + x[r] - (1 if given else 0)
    return z


def _pair_vars(m: mip.Model, problem: Problem, x: dict) -> dict:
    """Products of two layers' choices, linearised exactly: for every two layers that share a
    pairwise penalty or a conversion cost, one y ≥ 0 per combination of their choices, with
    Σ_pb y(pa, pb) = x(a, pa) and Σ_pa y(pa, pb) = x(b, pb). With one choice per layer these
    rows give y = xᵢ·xⱼ and imply the textbook y ≤ xᵢ, y ≤ xⱼ, y ≥ xᵢ + xⱼ − 1 even in the LP
    relaxation, which they make far tighter, so CBC proves dense pairwise optima quickly."""
    import mip

    layer_pairs = {tuple(sorted((a[0], b[0]))) for (a, b), v in (*problem.pairs.items(), *problem.latency_pairs.items())
                   if a in x and b in x and v != 0 and a[0] != b[0]}
    y = {}
    for la, lb in sorted(layer_pairs):
        pas = [c.precision for c in problem.choices[la]]
        pbs = [c.precision for c in problem.choices[lb]]
        ys = {(pa, pb): m.add_var(lb=0.0, ub=1.0) for pa in pas for pb in pbs}
        for pa in pas:
            m += mip.xsum(ys[(pa, pb)] for pb in pbs) == x[(la, pa)]
        for pb in pbs:
            m += mip.xsum(ys[(pa, pb)] for pa in pas) == x[(lb, pb)]
        y |= {((la, pa), (lb, pb)): v for (pa, pb), v in ys.items()}
    return y


def _pair_sum(pairs: dict, y: dict) -> list:
    out = []
    for (a, b), v in pairs.items():
        key = (a, b) if (a, b) in y else (b, a)
        if v != 0 and key in y:
            out.append(v * y[key])
    return out


def _latency_expr(problem: Problem, x: dict, y: dict) -> mip.LinExpr:
    import mip

    return mip.xsum([c.latency_ms * x[(la, c.precision)] for la, cs in problem.choices.items() for c in cs]
                    + _latency_extras(problem, y))


def _latency_extras(problem: Problem, y: dict) -> list:
    """The latency of the pairs and any-of terms (conversions), as terms of the model."""
    return _pair_sum(problem.latency_pairs, y) + [t.ms * y[("any", i)] for i, t in enumerate(problem.latency_any)
                                                  if ("any", i) in y]


def _min_latency(problem: Problem, budget: Budget) -> float | None:
    """The least latency any policy within the RAM budget reaches (conversions included), in ms;
    None if unknown."""
    return least_under(problem, Budget(ram_kb=budget.ram_kb), "latency_ms")


def _prefer_cheaper(m: mip.Model, problem: Problem, xy: tuple[dict, dict], scale: float,
                    limits: tuple[float, float]) -> dict[str, str] | None:
    """Among the policies with the optimal penalty, the fastest, conversions included (or,
    without latencies, the smallest): equal accuracy at a lower cost is what a user wants from a
    tie. Penalties closer than a tenth of the smallest gap between two of a layer's choices (and
    than 1e-7 of the objective) count as equal, and so do those within `limits`' near-tie
    fraction of the optimum. `limits` is (seconds left, near-tie fraction, the optimum the window
    is measured from). None if the second solve finds nothing in time."""
    import mip

    x, y = xy
    seconds_left, near_tie, best = limits
    attr = "latency_ms" if any(c.latency_ms for cs in problem.choices.values() for c in cs) else "size_bytes"
    top = max((getattr(c, attr) for cs in problem.choices.values() for c in cs), default=0.0)
    if top <= 0 or seconds_left <= 0:
        return None
    gaps = [abs(a.penalty - b.penalty) / scale for cs in problem.choices.values()
            for a, b in itertools.combinations(cs, 2) if a.penalty != b.penalty]
    exact = max(1e-12, min([1e-7 * max(1.0, abs(best)), *(0.1 * g for g in gaps)]))
    m += m.objective <= best + max(exact, near_tie * abs(best))
    terms = [getattr(c, attr) / top * x[(la, c.precision)] for la, cs in problem.choices.items() for c in cs]
    if attr == "latency_ms":
        terms += [t * (1.0 / top) for t in _latency_extras(problem, y)]
    m.objective = mip.xsum(terms)
    if optimize(m, seconds_left) not in (mip.OptimizationStatus.OPTIMAL, mip.OptimizationStatus.FEASIBLE):
        return None
    return _pick(problem, x)


def _cost(problem: Problem, pick: dict[str, str]) -> float:
    """What a tie is broken on: the pick's latency, else its size."""
    t = totals(problem, pick)
    return t["latency_ms"] if any(c.latency_ms for cs in problem.choices.values() for c in cs) else t["size_bytes"]


def _pick(problem: Problem, x: dict) -> dict[str, str]:
    return {la: next(c.precision for c in options if x[(la, c.precision)].x >= 0.5)
            for la, options in problem.choices.items()}


def _fmt(budget: Budget) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in budget.items())
