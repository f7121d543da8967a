"""Latency prediction from a profile, on hand-made tables: scales, conversions (per direction),
the ops between layers at the policy's common bits, and the integer program's terms, which must
cost every policy exactly as the predictor does."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgempq.errors import ConfigError
from edgempq.latency import predict_latency
from edgempq.latency_fit import conversion_ms_per_element, scales
from edgempq.layers import layer_edges, trace
from edgempq.program import solve_problem
from edgempq.schema import CostRow, CostTable, Precision, Target
from edgempq.solve import build_problem

TARGET = Target.from_dict({"name": "t", "backend": "litert",
                           "precisions": {"conv": ["f32", "w8a8"], "dwconv": ["f32"], "linear": ["f32"]}})
F32, W8 = Precision.parse("f32"), Precision.parse("w8a8")


def chain():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 2, 3, padding=1))


@pytest.fixture
def table():
    model = chain()
    layers = trace(model, (1, 6, 6))
    ms = {"0": (1.0, 0.5), "2": (2.0, 1.0), "4": (3.0, 1.5)}  # (f32, w8a8) rows per layer
    rows = tuple(CostRow(la.signature, str(p), ms[la.name][i], 0, 0, 5, 0, 0)
                 for la in layers for i, p in enumerate((F32, W8)))
    edges = tuple(layer_edges(model, layers))
    # uniform f32 measures twice its rows (scale 2), w8a8 exactly its rows (scale 1); the policy
    # alternating w8a8, f32, w8a8 measures its scaled rows (0.5 + 4 + 1.5) plus 0.01 ms per element crossing
    crossing = sum(n for _, _, n in edges)
    return CostTable(TARGET, {}, "h", tuple(layers), rows, {"f32": 12.0, "w8a8": 3.0}, {}, edges,
                     {"w8a8~f32": 6.0 + 0.01 * crossing})


def test_edges_follow_the_graph_with_the_consumers_input_size(table):
    assert table.edges == (("0", "2", 4 * 36), ("2", "4", 8 * 36))


def test_residual_sums_give_each_reader_its_nearest_producers():
    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c, self.d = (nn.Conv2d(2, 2, 1) for _ in range(4))

        def forward(self, x):
            x = self.a(x)
            y = x + self.b(torch.relu(x))
            z = y + self.c(y)
            return self.d(z)

    layers = trace(Res(), (2, 3, 3))
    assert layer_edges(Res(), layers) == [("a", "b", 18), ("a", "c", 18), ("b", "c", 18), ("c", "d", 18)]


def test_scales_make_uniform_policies_exact_and_conversions_are_fitted(table):
    assert scales(table) == pytest.approx({"f32": 2.0, "w8a8": 1.0})
    assert conversion_ms_per_element(table) == pytest.approx({"a8>f": 0.01, "f>a8": 0.01})
    names = [la.name for la in table.layers]
    assert predict_latency(table, dict.fromkeys(names, F32)) == pytest.approx(12.0)
    assert predict_latency(table, dict.fromkeys(names, W8)) == pytest.approx(3.0)
    # w8a8, f32, f32: rows 0.5 + 4 + 6, one conversion on the 144-element edge
    assert predict_latency(table, {"0": W8, "2": F32, "4": F32}) == pytest.approx(10.5 + 1.44)


def test_the_solver_pays_conversions_under_a_latency_budget(table):
    from edgempq.schema import Budget, Sensitivity

    names = [la.name for la in table.layers]
    sens = Sensitivity("toy", {(n, str(p)): (0.0 if p == F32 else 1.0) for n in names for p in (F32, W8)})
    problem = build_problem(list(table.layers), sens, table, TARGET)
    # one layer at w8a8 under 11.9 ms: the first gives 10.5 ms + 1.44 ms of conversion = 11.94 (over);
    # the middle one 9 + 1.44 + 2.88; the last one 7.5 + 2.88 = 10.38 (the only one that fits)
    sol = solve_problem(problem, Budget(latency_ms=11.9))
    assert sol.totals["latency_ms"] == pytest.approx(
        predict_latency(table, {n: Precision.parse(p) for n, p in sol.precisions.items()}))
    assert sol.totals["latency_ms"] <= 11.9 and sol.objective == pytest.approx(1.0)
    assert sol.precisions == {"0": "f32", "2": "f32", "4": "w8a8"} and sol.totals["latency_ms"] == pytest.approx(10.38)


def test_a_profile_without_edges_or_mixed_timings_still_predicts_by_rows(table):
    from dataclasses import replace

    bare = replace(table, edges=(), mixed_ms={})
    assert conversion_ms_per_element(bare) == {}
    assert predict_latency(bare, {"0": W8, "2": F32, "4": F32}) == pytest.approx(10.5)
    assert CostTable.from_json(table.to_json()) == table
    with pytest.raises(ConfigError, match="must name two precisions"):
        CostTable.from_dict(table.to_dict() | {"mixed_ms": {"w8a8": 1.0}})


def test_the_fit_rebuilds_exactly_the_alternating_policy_that_was_timed(table):
    from edgempq.assign import alternating_assignment, alternating_policies

    timed = alternating_policies(list(table.layers), TARGET)
    assert list(timed) == ["w8a8~f32"]
    for key, assign in timed.items():
        assert alternating_assignment(list(table.layers), TARGET, *key.split("~")) == assign
        assert str(assign["0"]) == key.split("~")[0]


def _probed(table, truth, n=12):
    """`table` with `n` random probes whose latencies follow the coefficients `truth` exactly."""
    from dataclasses import replace

    from edgempq.assign import probe_assignments
    from edgempq.schema import Probe

    layers = list(table.layers)
    probes = tuple(Probe({k: str(v) for k, v in a.items()}, predict_latency(table, a, truth))
                   for a in probe_assignments(layers, table.target, n, seed=3))
    return replace(table, probes=probes)


def test_the_joint_fit_predicts_held_out_policies_of_the_device_its_probes_came_from(table):
    from edgempq.assign import probe_assignments, uniform_assignment
    from edgempq.latency import LatencyFit, latency_fit

    layers = list(table.layers)
    # a device where a quantized layer alone pays 0.002 ms per element of its input and output
    # and 0.05 ms per layer that it does not inside the model
    truth = LatencyFit({"f32": 2.0, "w8a8": 1.5}, {"a8>f": 0.01, "f>a8": 0.02}, alone_per_element={"a8": -0.002},
                       alone_per_layer={"a8": -0.05})
    timed = {p: predict_latency(table, uniform_assignment(layers, TARGET, p), truth) for p in ("f32", "w8a8")}
    probed = _probed(replace_whole(table, timed, truth), truth)
    fit = latency_fit(probed)
    assert fit.fitted_on == 2 + 1 + 12
    for held_out in probe_assignments(layers, TARGET, 5, seed=99):  # within the ridge's pull on 15 points
        assert predict_latency(probed, held_out) == pytest.approx(predict_latency(table, held_out, truth), rel=0.03)
    # without the probes' conversions and alone terms (rows scaled alone) the same policies miss by far more
    bare = LatencyFit(fit.scales, {})
    assert max(abs(predict_latency(probed, h, bare) / predict_latency(table, h, truth) - 1)
               for h in probe_assignments(layers, TARGET, 5, seed=99)) > 0.2


def replace_whole(table, uniform, truth):
    """`table` whose uniform and alternating timings follow `truth`."""
    from dataclasses import replace

    from edgempq.assign import alternating_assignment

    alt = alternating_assignment(list(table.layers), TARGET, "w8a8", "f32")
    return replace(table, whole_ms=uniform, mixed_ms={"w8a8~f32": predict_latency(table, alt, truth)})


def test_probes_survive_the_profile_file_and_one_of_other_layers_is_refused(table, tmp_path):
    import json

    from edgempq.latency import LatencyFit

    probed = _probed(table, LatencyFit({"f32": 1.0, "w8a8": 1.0}, {}), 3)
    path = tmp_path / "p.json"
    probed.save(path)
    back = CostTable.load(path)
    assert back.probes == probed.probes
    doc = json.loads(path.read_text())
    doc["probes"][0]["precisions"]["nope"] = "w8a8"
    from edgempq.schema.core import canonical_sha256 as _checksum

    doc["sha256"] = _checksum({k: v for k, v in doc.items() if k != "sha256"})
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="probe names layers the profile does not have: nope"):
        CostTable.load(path)
