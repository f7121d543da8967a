"""The latency model on a policy's quantized graph: where the quantizer converts tensors and in
which domain the ops between layers run (`qgraph`), and the integer program's terms per case of
the common bits (`latency_program`), which must cost every policy exactly as the predictor does
and let the solver find the true optimum under a latency budget."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
from torch import nn

from edgempq.latency import LatencyFit, layer_cost_ms, predict_latency
from edgempq.latency_program import latency_cases
from edgempq.layers import trace
from edgempq.program import AnyOf, Choice, Problem, solve_problem, totals, with_case
from edgempq.qgraph import common_bits, derive
from edgempq.schema import Budget, CostRow, CostTable, Precision, Target
from edgempq.schema.graph import Graph, GraphOp

PRECISIONS = ["f32", "w8a8", "w8a16"]
TARGET = Target.from_dict({"name": "t", "backend": "litert",
                           "precisions": {"conv": PRECISIONS, "dwconv": ["f32"], "linear": PRECISIONS}})
P = {p: Precision.parse(p) for p in PRECISIONS}


class Branchy(nn.Module):
    """A pad before a strided conv, two convs reading one tensor, their sum, a pool, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 4, 3, stride=2)
        self.b, self.c = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)
        self.d = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.a(nn.functional.pad(x, (1, 1, 1, 1)))
        return self.d((self.b(x) + self.c(x)).mean((2, 3)))


# the float graph as onnx2tf writes it: tensors 0 (input, 2x8x8) -> PAD 1 (2x10x10) -> a 2 (4x4x4)
# -> b 3, c 4 -> ADD 5 -> MEAN 6 (4) -> d 7 (3)
GRAPH = Graph((GraphOp("PAD", "", (0,), (1,)), GraphOp("CONV_2D", "a", (1,), (2,)),
               GraphOp("CONV_2D", "b", (2,), (3,)), GraphOp("CONV_2D", "c", (2,), (4,)),
               GraphOp("ADD", "", (3, 4), (5,)), GraphOp("MEAN", "", (5,), (6,)),
               GraphOp("FULLY_CONNECTED", "d", (6,), (7,))),
              {0: 128, 1: 200, 2: 64, 3: 64, 4: 64, 5: 64, 6: 4, 7: 3}, (0,), (7,), 20)

# a device where every direction of conversion costs something else, and the ops between layers
# cost most at 16 bits
FIT = LatencyFit({"f32": 1.2, "w8a8": 0.7, "w8a16": 1.5},
                 {"f>a8": 0.001, "a8>f": 0.002, "f>a16": 0.003, "a16>f": 0.004, "a8>a16": 0.005, "a16>a8": 0.006},
                 {"f": 0.0001, "a8": 0.0002, "a16": 0.0007}, {"a8": -0.0005, "a16": -0.0004},
                 {"a8": -0.01, "a16": 0.02})


@pytest.fixture(scope="module")
def table() -> CostTable:
    layers = trace(Branchy(), (2, 8, 8))
    assert [la.name for la in layers] == ["a", "b", "c", "d"]
    ms = {"f32": 1.0, "w8a8": 0.4, "w8a16": 2.0}
    rows = tuple(CostRow(la.signature, p, ms[p] * (i + 1), 0, 0, 5, 0, 0) for i, la in enumerate(layers)
                 for p in PRECISIONS)
    return CostTable(TARGET, {}, "h", tuple(layers), rows, {}, {}, graph=GRAPH)


def _policies(table: CostTable) -> list[dict[str, Precision]]:
    names = [la.name for la in table.layers]
    return [dict(zip(names, (P[p] for p in combo), strict=True))
            for combo in itertools.product(PRECISIONS, repeat=len(names))]


def test_the_quantizer_converts_each_tensor_once_per_width_its_readers_need():
    policy = {"a": P["w8a16"], "b": P["w8a8"], "c": P["f32"], "d": P["w8a8"]}
    q = derive(GRAPH, policy)
    assert q.common == 8  # two layers at 8 bits, one at 16
    conversions = [(s.from_bits, s.bits, q.elements[s.reads[0]]) for s in q.steps if s.op is None]
    # the pad (at 8 bits) to a's 16; a's output to b's 8 and c's float; c's output back to the add's 8
    assert conversions == [(8, 16, 200), (16, 8, 64), (16, 32, 64), (32, 8, 64)]
    assert [s.bits for s in q.steps if s.op is not None and not s.op.layer] == [8, 8, 8]  # pad, add, mean


def test_the_common_bits_are_the_narrower_on_a_tie_and_float_when_no_layer_is_integer():
    assert common_bits({"a": P["w8a16"], "b": P["w8a8"], "c": P["f32"]}) == 8
    assert common_bits({"a": P["w8a16"], "b": P["w8a16"], "c": P["w8a8"]}) == 16
    assert common_bits({"a": P["f32"]}) == 32
    floats = derive(GRAPH, {"a": P["f32"], "b": P["f32"], "c": P["f32"], "d": P["w8a16"]})
    # the input stays float beside float "a"; the pad, add and mean run at the head's 16 bits
    assert [(s.from_bits, s.bits) for s in floats.steps if s.op is None] == [(32, 16), (16, 32), (32, 16), (32, 16)]


def _problem(table: CostTable, penalty: dict) -> Problem:
    choices = {la.name: [Choice(la.name, p, penalty[(la.name, p)], layer_cost_ms(table, la, P[p], FIT))
                         for p in PRECISIONS] for la in table.layers}
    return Problem(choices, cases=latency_cases(table, FIT, {n: list(PRECISIONS) for n in choices}))


def test_the_programs_cases_cost_every_policy_as_the_predictor_does(table):
    problem = _problem(table, {(la.name, p): 0.0 for la in table.layers for p in PRECISIONS})
    for policy in _policies(table):
        pick = {n: str(p) for n, p in policy.items()}
        holding = [c for c in problem.cases if all(sum(v for (n, p), v in r.coefficients.items() if pick[n] == p)
                                                   <= r.limit for r in c.rows)]
        assert [c.label for c in holding] == [str(common_bits(policy))]  # exactly its own case holds
        assert totals(with_case(problem, holding[0]), pick)["latency_ms"] == pytest.approx(
            predict_latency(table, policy, FIT), rel=1e-12)


def test_the_solver_finds_the_least_penalty_under_a_latency_budget_as_brute_force_does(table):
    rng = random.Random(0)
    for _ in range(6):
        penalty = {(la.name, p): rng.uniform(0, 1) * (p != "w8a16") for la in table.layers for p in PRECISIONS}
        problem = _problem(table, penalty)
        costed = [(sum(penalty[(n, str(p))] for n, p in pol.items()), predict_latency(table, pol, FIT), pol)
                  for pol in _policies(table)]
        limit = sorted(ms for _, ms, _ in costed)[len(costed) // 4]
        best = min(pen for pen, ms, _ in costed if ms <= limit)
        sol = solve_problem(problem, Budget(latency_ms=limit))
        assert sol.objective == pytest.approx(best, abs=1e-9)
        picked = predict_latency(table, {n: P[p] for n, p in sol.precisions.items()}, FIT)
        assert sol.totals["latency_ms"] == pytest.approx(picked) and picked <= limit * (1 + 1e-9)


def test_an_infeasible_latency_budget_names_the_least_latency_over_all_cases(table):
    problem = _problem(table, {(la.name, p): 0.0 for la in table.layers for p in PRECISIONS})
    least = min(predict_latency(table, pol, FIT) for pol in _policies(table))
    with pytest.raises(Exception, match=f"needs {least:.6g} ms"):
        solve_problem(problem, Budget(latency_ms=least * 0.99))


def test_an_any_of_term_is_paid_once_whichever_readers_need_it():
    # the readers prefer y, the producer x; 5 ms when the producer takes x and some reader y
    choices = {n: [Choice(n, "x", 1.0), Choice(n, "y", 0.0)] for n in ("r1", "r2")}
    choices["p"] = [Choice("p", "x", 0.0), Choice("p", "y", 0.5)]
    problem = Problem(choices, latency_any=(AnyOf(5.0, (("p", "x"),), (("r1", "y"), ("r2", "y"))),))
    assert totals(problem, {"p": "x", "r1": "y", "r2": "y"})["latency_ms"] == 5.0  # one conversion for both
    assert totals(problem, {"p": "x", "r1": "x", "r2": "y"})["latency_ms"] == 5.0
    assert totals(problem, {"p": "y", "r1": "y", "r2": "y"})["latency_ms"] == 0.0
    assert solve_problem(problem, Budget(latency_ms=6.0)).precisions == {"r1": "y", "r2": "y", "p": "x"}
    assert solve_problem(problem, Budget(latency_ms=4.0)).precisions == {"r1": "y", "r2": "y", "p": "y"}
