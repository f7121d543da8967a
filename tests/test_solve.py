"""The integer program on hand-computed tables: the solver sees only numbers."""

from __future__ import annotations

import itertools
import random

import pytest

from edgempq.errors import ConfigError, InfeasibleError
from edgempq.program import Choice, Problem, least_under, merge_groups, objective, solve_problem, totals
from edgempq.schema import Budget, Sensitivity, Target
from edgempq.solve import build_problem, shared_input_groups, solve
from edgempq.sweep import Sweep, sweep


def two_way(penalties: dict[str, float]) -> Problem:
    """Each layer: `hi` (penalty 0, 3 ms, 8 bytes) or `lo` (its penalty, 1 ms, 4 bytes)."""
    return Problem({la: [Choice(la, "w8a8", 0.0, 3.0, 8, 64), Choice(la, "w4a8", pen, 1.0, 4, 32)]
                    for la, pen in penalties.items()})


PEN = {"a": 5.0, "b": 1.0, "c": 3.0}


@pytest.mark.parametrize("limit,lows,obj", [
    (9.0, set(), 0.0), (8.99, {"b"}, 1.0),  # all at w8a8 is 9 ms: just below it, drop the cheapest
    (7.0, {"b"}, 1.0), (6.99, {"b", "c"}, 4.0),
    (5.0, {"b", "c"}, 4.0), (4.99, {"a", "b", "c"}, 9.0),
    (3.0, {"a", "b", "c"}, 9.0),
])
def test_latency_optimum_on_both_sides_of_every_boundary(limit, lows, obj):
    sol = solve_problem(two_way(PEN), Budget(latency_ms=limit))
    assert {la for la, p in sol.precisions.items() if p == "w4a8"} == lows
    assert sol.objective == pytest.approx(obj) and sol.status == "optimal" and sol.gap == 0.0
    assert sol.totals["latency_ms"] <= limit


def test_infeasible_budget_names_it_and_the_smallest_achievable_value():
    with pytest.raises(InfeasibleError, match=r"2.99 cannot be met: .* needs 3 ms; raise latency_ms to at least 3"):
        solve_problem(two_way(PEN), Budget(latency_ms=2.99))
    # size in KB: 3 layers x 4 bytes + 1000 bytes of fixed layers = 1012 bytes
    p = Problem(two_way(PEN).choices, constant={"size_bytes": 1000})
    with pytest.raises(InfeasibleError, match=r"size_kb=0.5 .* needs 0.988281 KB"):
        solve_problem(p, Budget(size_kb=0.5))


def test_budgets_each_feasible_but_not_together_is_a_clear_error():
    p = Problem({"a": [Choice("a", "f32", 0.0, 1.0, 10), Choice("a", "w8a8", 0.0, 10.0, 1)]})
    with pytest.raises(InfeasibleError, match="cannot all be met together .*; with the others, latency_ms needs "
                                              "at least 10 ms: raise it to that"):
        solve_problem(p, Budget(latency_ms=5, size_kb=5 / 1024))
    assert least_under(p, Budget(latency_ms=5, size_kb=5 / 1024), "latency_ms") == pytest.approx(10.0)
    assert least_under(p, Budget(latency_ms=5, size_kb=5 / 1024), "size_kb") == pytest.approx(10 / 1024)
    assert least_under(p, Budget(latency_ms=5, size_kb=5 / 1024), "bops") is None  # the others clash


def test_size_and_bops_budgets():
    p = two_way(PEN)
    # sizes 8 / 4 bytes: all w8a8 is 24 bytes; BOPs 64 / 32: all w8a8 is 192
    assert solve_problem(p, Budget(size_kb=20 / 1024)).precisions == {"a": "w8a8", "b": "w4a8", "c": "w8a8"}
    assert solve_problem(p, Budget(size_kb=19 / 1024)).precisions == {"a": "w8a8", "b": "w4a8", "c": "w4a8"}
    assert solve_problem(p, Budget(bops=160)).objective == pytest.approx(1.0)
    assert solve_problem(p, Budget(bops=159)).objective == pytest.approx(4.0)


def test_a_looser_budget_never_gives_a_worse_objective():
    rng = random.Random(3)
    p = Problem({f"l{i}": [Choice(f"l{i}", f"w{b}a8", rng.random() * (8 - b), rng.random() * b, b * 10)
                           for b in (2, 4, 8)] for i in range(6)})
    lo = totals(p, {la: "w2a8" for la in p.choices})["latency_ms"]
    objs = [solve_problem(p, Budget(latency_ms=lo + k * 0.3)).objective for k in range(1, 25)]
    assert all(b <= a + 1e-9 for a, b in itertools.pairwise(objs))


def brute_force(p: Problem, budget: Budget) -> float | None:
    best = None
    for combo in itertools.product(*[[c.precision for c in cs] for cs in p.choices.values()]):
        pick = dict(zip(p.choices, combo, strict=True))
        if any(len({pick[m] for m in g}) > 1 for g in p.groups):
            continue
        t = totals(p, pick)
        if budget.latency_ms is not None and t["latency_ms"] > budget.latency_ms + 1e-9:
            continue
        if budget.ram_kb is not None and t["ram_bytes"] > budget.ram_kb * 1024:
            continue
        v = objective(p, pick)
        best = v if best is None else min(best, v)
    return best


@pytest.mark.parametrize("seed", range(25))
def test_pairwise_linearisation_equals_brute_force(seed):
    rng = random.Random(seed)
    names, precs = ["a", "b", "c", "d"], ["w4a8", "w8a8", "f32"]
    p = Problem({la: [Choice(la, q, rng.uniform(0, 2), rng.uniform(0.5, 3), 0, 0, rng.uniform(100, 400))
                      for q in precs] for la in names},
                pairs={((a, pa), (b, pb)): rng.uniform(-1.5, 2.0)
                       for a, b in itertools.combinations(names, 2) for pa in precs for pb in precs
                       if rng.random() < 0.4},
                groups=(("b", "c"),) if seed % 3 == 0 else (),
                latency_pairs={((a, pa), (b, pb)): rng.uniform(0, 1.5) for a, b in itertools.pairwise(names)
                               for pa in precs for pb in precs if pa != pb})  # conversions between neighbours
    budget = Budget(latency_ms=rng.uniform(4, 9), ram_kb=0.35 if seed % 2 else None)
    expect = brute_force(p, budget)
    if expect is None:
        with pytest.raises(InfeasibleError):
            solve_problem(p, budget)
        return
    sol = solve_problem(p, budget)
    assert sol.objective == pytest.approx(expect, abs=1e-6)


def test_pairwise_terms_change_the_answer_where_they_should():
    p = two_way({"a": 1.0, "b": 1.2})
    assert solve_problem(p, Budget(latency_ms=5)).precisions == {"a": "w4a8", "b": "w8a8"}
    # quantizing a and anything else together hurts more than the sum: now b is the one to drop
    hurt = Problem(p.choices, pairs={(("a", "w4a8"), ("b", "w8a8")): 1.0})
    assert solve_problem(hurt, Budget(latency_ms=5)).precisions == {"a": "w8a8", "b": "w4a8"}
    # a negative pair term (the two errors cancel) makes quantizing both the optimum
    cancel = Problem(p.choices, pairs={(("a", "w4a8"), ("b", "w4a8")): -2.5})
    assert solve_problem(cancel, Budget(latency_ms=100)).precisions == {"a": "w4a8", "b": "w4a8"}


def test_conversions_between_layers_count_against_the_latency_budget():
    p = two_way({"a": 1.0, "b": 1.0, "c": 1.0})
    assert solve_problem(p, Budget(latency_ms=7)).objective == pytest.approx(1.0)  # one layer at w4a8
    convert = {((x, "w8a8"), (y, "w4a8")): 1.5 for x, y in (("a", "b"), ("b", "c"))}
    convert |= {((x, "w4a8"), (y, "w8a8")): 1.5 for x, y in (("a", "b"), ("b", "c"))}
    q = Problem(p.choices, latency_pairs=convert)
    # a single w4a8 layer now also pays a conversion with a neighbour: 7 + 1.5 > 7; two at the
    # end of the chain pay one (6.5 ms); under 6.5 ms only all three (3 ms, no conversion) fit
    sol = solve_problem(q, Budget(latency_ms=7))
    assert sol.objective == pytest.approx(2.0) and sol.totals["latency_ms"] == pytest.approx(6.5)
    assert sol.precisions["b"] == "w4a8"
    sol = solve_problem(q, Budget(latency_ms=6.4))
    assert sol.precisions == {"a": "w4a8", "b": "w4a8", "c": "w4a8"} and sol.totals["latency_ms"] == 3.0
    with pytest.raises(InfeasibleError, match="needs 3 ms"):
        solve_problem(q, Budget(latency_ms=2.5))
    # a with c at w4a8 and b at w8a8 pays two conversions: 3+1+1+3 = 8 -> not under 8
    assert totals(q, {"a": "w4a8", "b": "w8a8", "c": "w4a8"})["latency_ms"] == pytest.approx(8.0)


def test_ram_budget_excludes_layers_working_sets_and_reports_the_minimum():
    p = Problem({"a": [Choice("a", "f32", 0.0, ram_bytes=4096), Choice("a", "w8a8", 1.0, ram_bytes=1024)],
                 "b": [Choice("b", "f32", 0.0, ram_bytes=2048), Choice("b", "w8a8", 1.0, ram_bytes=512)]})
    sol = solve_problem(p, Budget(ram_kb=2))
    assert sol.precisions == {"a": "w8a8", "b": "f32"} and sol.totals["ram_bytes"] <= 2048
    with pytest.raises(InfeasibleError, match="ram_kb=0.5 .* at least 1"):
        solve_problem(p, Budget(ram_kb=0.5))


def test_groups_share_a_precision_and_an_impossible_group_is_an_error():
    p = two_way({"a": 5.0, "b": 0.1, "c": 3.0})
    alone = solve_problem(p, Budget(latency_ms=7))
    assert alone.precisions["b"] == "w4a8" and alone.precisions["a"] == "w8a8"
    grouped = solve_problem(Problem(p.choices, groups=(("a", "b"),)), Budget(latency_ms=7))
    assert grouped.precisions["a"] == grouped.precisions["b"] == "w8a8" and grouped.precisions["c"] == "w4a8"
    odd = Problem({"a": [Choice("a", "f32", 0)], "b": [Choice("b", "w8a8", 0)]}, groups=(("a", "b"),))
    with pytest.raises(InfeasibleError, match="must share a precision but have none in common"):
        solve_problem(odd, Budget(bops=1))
    chained = solve_problem(Problem(p.choices, groups=(("a", "b"), ("b", "c"))), Budget(latency_ms=9))
    assert len(set(chained.precisions.values())) == 1  # overlapping groups merge
    assert merge_groups((("a", "b"), ("c", "d"), ("b", "c"), ("e", "f"))) == [("a", "b", "c", "d"), ("e", "f")]
    with pytest.raises(ConfigError, match="not searched"):
        solve_problem(Problem(p.choices, groups=(("a", "zz"),)), Budget(bops=1e9))


def relax_and_round(coef: list[float], params: list[int], lo: int, hi: int, budget_bits: float) -> list[int] | None:
    """The papers' procedure: the LP over continuous bits (its exact optimum is the fractional
    knapsack: raise layers by c/P until the budget is spent), then round to nearest; None when
    rounding breaks the budget (as np.around can)."""
    bits = [float(lo)] * len(coef)
    left = budget_bits - lo * sum(params)
    for i in sorted(range(len(coef)), key=lambda i: -coef[i] / params[i]):
        step = min(hi - lo, max(0.0, left / params[i]))
        bits[i] += step
        left -= step * params[i]
    rounded = [int(round(b)) for b in bits]
    return rounded if sum(b * p for b, p in zip(rounded, params, strict=True)) <= budget_bits else None


@pytest.mark.parametrize("seed", range(20))
def test_exact_solution_beats_or_ties_the_papers_relax_and_round(seed):
    rng = random.Random(seed)
    n, widths = 8, range(2, 9)
    coef = [rng.random() for _ in range(n)]
    params = [rng.randint(100, 5000) for _ in range(n)]
    budget_bits = rng.uniform(3, 7) * sum(params)
    # as bit_penalties writes the papers' objective: penalty c × (16 − b); size in bytes = P b / 8
    p = Problem({f"l{i}": [Choice(f"l{i}", f"w{b}a8", coef[i] * (16 - b), size_bytes=params[i] * b / 8)
                           for b in widths] for i in range(n)})
    sol = solve_problem(p, Budget(size_kb=budget_bits / 8 / 1024))
    exact = sum(c * int(sol.precisions[f"l{i}"][1:].split("a")[0]) for i, c in enumerate(coef))
    for rounded in (relax_and_round(coef, params, 2, 8, budget_bits),):
        if rounded is not None:
            assert exact >= sum(c * b for c, b in zip(coef, rounded, strict=True)) - 1e-9


TARGET = Target.from_dict({"name": "t", "backend": "litert", "precisions": {"conv": ["w8a8", "w4a8", "f32"],
                                                                         "dwconv": ["w8a8", "f32"],
                                                                         "linear": ["w8a8", "f32"]}})


def test_solve_builds_the_problem_from_layers_and_writes_a_policy(two_layer):
    from edgempq.layers import trace

    layers = trace(two_layer, (3, 10, 10))
    sens = Sensitivity("toy", {("conv", "w8a8"): 1.0, ("conv", "w4a8"): 3.0, ("conv", "f32"): 0.0,
                               ("fc", "w8a8"): 0.5, ("fc", "f32"): 0.0}, model_hash="h")
    problem = build_problem(layers, sens, None, TARGET)
    assert [c.precision for c in problem.choices["conv"]] == ["w8a8", "w4a8", "f32"]
    assert problem.choices["fc"][0].size_bytes == 4000 + 5 * 4 + 5 * 24  # int8 weights, int32 bias, scales
    pol = solve(layers, sens, None, Budget(size_kb=6), TARGET)
    assert {k: str(v) for k, v in pol.precisions.items()} == {"conv": "f32", "fc": "w8a8"}
    assert pol.predicted["size_bytes"] <= 6 * 1024 and pol.solver_status == "optimal" and pol.model_hash == "h"
    pol.check_layers(layers)
    assert pol.quantizer is None  # a proxy method quantized nothing
    measured = Sensitivity("measured", sens.penalties, params={"samples": 8, "ptq": "gptq", "ptq_params": "",
                                                               "bias_correction": True, "act_range": "mse"})
    assert solve(layers, measured, None, Budget(size_kb=6), TARGET).quantizer == {
        "ptq": "gptq", "ptq_params": "", "bias_correction": True, "act_range": "mse"}
    with pytest.raises(ConfigError, match="latency budget needs the device profile"):
        solve(layers, sens, None, Budget(latency_ms=1), TARGET)
    with pytest.raises(ConfigError, match="no score for layer conv at w8a8"):
        solve(layers, Sensitivity("toy", {("conv", "f32"): 0.0, ("fc", "f32"): 0.0}), None, Budget(size_kb=6), TARGET)


def test_sweep_gives_a_front_with_infeasible_points_marked(two_layer):
    from edgempq.layers import trace

    layers = trace(two_layer, (3, 10, 10))
    sens = Sensitivity("toy", {("conv", p): v for p, v in (("w8a8", 1.0), ("w4a8", 3.0), ("f32", 0.0))}
                       | {("fc", "w8a8"): 0.5, ("fc", "f32"): 0.0})
    pts = sweep(layers, sens, None, Sweep.parse("size_kb=1:20:5"), TARGET)
    assert [p["feasible"] for p in pts] == [False, True, True, True, True]
    objs = [p["objective"] for p in pts if p["feasible"]]
    assert objs == sorted(objs, reverse=True)
    with pytest.raises(ConfigError, match="must look like"):
        Sweep.parse("size_kb=1-2")


def test_ties_in_penalty_go_to_the_faster_choice():
    sol = solve_problem(two_way({"a": 0.0, "b": 0.0, "c": 2.0}), Budget(latency_ms=100))
    assert sol.precisions == {"a": "w4a8", "b": "w4a8", "c": "w8a8"} and sol.objective == 0.0


def test_layers_reading_the_same_activation_form_a_group():
    from edgempq.schema import CostTable

    edges = (("stem", "b1", 10), ("stem", "down", 10), ("b1", "b2", 5), ("b2", "c", 5), ("down", "c", 5))
    table = CostTable(TARGET, {}, "h", (), (), edges=edges)
    assert shared_input_groups(table) == (("b1", "down"),)


def test_a_sensitivity_of_another_model_or_an_empty_group_is_a_clear_error(two_layer):
    from edgempq.layers import trace

    layers = trace(two_layer, (3, 10, 10))
    other = Sensitivity("toy", {("conv", "f32"): 0.0, ("head", "f32"): 0.0})
    with pytest.raises(ConfigError, match="scores layer.* head that the profiled model does not have"):
        solve(layers, other, None, Budget(size_kb=6), TARGET)
    with pytest.raises(ConfigError, match="does not score layer.* fc"):
        solve(layers, Sensitivity("toy", {("conv", "f32"): 0.0}), None, Budget(size_kb=6), TARGET)
    with pytest.raises(ConfigError, match="group of layers is empty"):
        merge_groups(((),))


def test_the_largest_fixed_layer_counts_against_the_ram_budget():
    p = Problem({"a": [Choice("a", "w8a8", 0.0, ram_bytes=512)]}, constant={"ram_bytes": 4096})
    with pytest.raises(InfeasibleError, match="ram_kb=2 .* at least 4"):
        solve_problem(p, Budget(ram_kb=2))
    assert solve_problem(p, Budget(ram_kb=4)).totals["ram_bytes"] == 4096


def test_the_solver_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, edgempq.solve; print('torch' in sys.modules)"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert p.stdout.strip() == "False"


def test_solving_leaves_torchs_thread_count_as_it_was():
    """CBC sets OpenMP's thread count to 1; in a process that has torch loaded (the demo), every
    later torch op would then run on one thread and round differently than in a fresh process."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        solve_problem(two_way(PEN), Budget(latency_ms=7.0))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_fixed_layer_keeps_its_precision_and_the_rest_is_searched_around_it(two_layer):
    from edgempq.layers import trace
    from edgempq.solve import SolveOptions

    layers = trace(two_layer, (3, 10, 10))
    sens = Sensitivity("toy", {("conv", "w8a8"): 1.0, ("conv", "w4a8"): 3.0, ("conv", "f32"): 0.0,
                               ("fc", "w8a8"): 0.5, ("fc", "f32"): 0.0}, model_hash="h")
    free = solve(layers, sens, None, Budget(size_kb=6), TARGET)
    assert str(free.precisions["conv"]) == "f32"

    def pick(*fixed: tuple[str, str], kb: float = 6, scores: Sensitivity = sens) -> dict[str, str]:
        pol = solve(layers, scores, None, Budget(size_kb=kb), TARGET, SolveOptions(fixed=fixed))
        return {k: str(v) for k, v in pol.precisions.items()}

    assert pick(("conv", "w4a8")) == {"conv": "w4a8", "fc": "w8a8"}  # against the free search's f32
    assert pick(("conv", "w4a8"), kb=40) == {"conv": "w4a8", "fc": "f32"}
    odd = Sensitivity("toy", {**sens.penalties, ("fc", "f32"): 2.0}, model_hash="h")  # float fc scored worse
    assert pick(kb=40, scores=odd) == {"conv": "f32", "fc": "w8a8"}
    assert pick(("fc", ""), kb=40, scores=odd) == {"conv": "f32", "fc": "f32"}  # the widest the target offers
    with pytest.raises(InfeasibleError):
        pick(("fc", "f32"), ("conv", "f32"))  # both float does not fit 6 KB: the budget names it
    with pytest.raises(ConfigError, match=r"--pin fc=w4a8: t does not offer w4a8 for that layer; choose from "
                                          r"w8a8, f32"):
        pick(("fc", "w4a8"))
    with pytest.raises(ConfigError, match="--pin nope: the model has no searchable layer of that name; "
                                          "choose from conv, fc"):
        pick(("nope", ""))


def test_the_arena_loop_s_solves_share_one_time_limit():
    import time

    from edgempq.errors import SolverTimeoutError
    from edgempq.solve import _Timed

    solver = _Timed(0.05, 0.0)
    problem = two_way({"a": 1.0})
    assert solver(problem, Budget()).precisions  # the first solve gets what is left of the limit
    time.sleep(0.06)
    with pytest.raises(SolverTimeoutError, match=r"the RAM search used its whole time limit \(0.05 s, 1 solves\)"):
        solver(problem, Budget())
