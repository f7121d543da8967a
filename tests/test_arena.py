"""TFLite Micro's arena predicted from the profile's graph skeleton: the planner on hand-made
graphs, and on real models against the real TFLite Micro interpreter, in the search and in deploy."""

from __future__ import annotations

import math
import random
from dataclasses import replace

import pytest
from torch import nn

from edgempq.arena import ArenaModel, greedy, plan
from edgempq.errors import DeviceError, InfeasibleError
from edgempq.layers import trace
from edgempq.schema import Budget, CostTable, Layer, Policy, Precision, Sensitivity
from edgempq.schema.graph import Graph, GraphOp

W8, W16, W4 = Precision.parse("w8a8"), Precision.parse("w8a16"), Precision.parse("w4a8")


def test_the_planner_packs_largest_first_and_fragments_past_the_live_bytes():
    # sizes 32, 32, 48: a (ops 0-1) and b (1-2) overlap; c (2-3) overlaps b only. Largest first:
    # c at 0, then a (clear of c in time) at 0, then b must clear both: at 48 -> 80, while at most
    # 64 bytes are alive at once
    bufs = [(32, 0, 1, 0, "a"), (32, 1, 2, 1, "b"), (48, 2, 3, 2, "c")]
    top, alive = greedy(bufs)
    assert top == 80 and set(alive) == {"a", "b", "c"}  # the buffers alive with the one on top


def chain_graph() -> tuple[Graph, dict[str, Layer]]:
    module = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
    layers = {la.name: la for la in trace(module, (1, 8, 8))}
    # input 0 -> conv "0" -> 1 -> conv "2" -> 2; elements 64, 256, 256
    g = Graph((GraphOp("CONV_2D", "0", (0,), (1,)), GraphOp("CONV_2D", "2", (1,), (2,))),
              {0: 64, 1: 256, 2: 256}, (0,), (2,), 7)
    return g, layers


def test_conversions_appear_where_widths_change_and_cost_their_tail():
    g, layers = chain_graph()
    same = plan(g, layers, {"0": W8, "2": W8})
    mixed = plan(g, layers, {"0": W16, "2": W8})  # a tie: the narrower 8 bits are the common ones
    assert same.conversions == 0 and mixed.conversions == 2  # the input to 16 bits, "0"'s output back to 8
    assert [b[0] for b in same.buffers] == [64, 256, 256]
    assert sorted(b[0] for b in mixed.buffers) == [64, 128, 256, 256, 512]
    model = ArenaModel(g, layers, ({"0": W8, "2": W8}, 1000))  # measured 1000 bytes: head 512, tail 488
    assert model.anchor_tail() == 488
    assert model.predict({"0": W8, "2": W8}).total == 1000
    assert model.predict({"0": W16, "2": W8}).tail == 488 + 2 * 120
    int4 = plan(g, layers, {"0": W8, "2": W4})
    assert int4.int4_convs == 1 and (144, 1, 1) in {b[:3] for b in int4.buffers}  # 4x4x3x3 weights unpacked


def test_the_graph_round_trips_through_the_profile():
    g, _ = chain_graph()
    assert Graph.from_dict(g.to_dict()) == g
    with pytest.raises(Exception, match="profile graph names a tensor without an element count"):
        Graph.from_dict(g.to_dict() | {"elements": {"0": 64}})


def net():
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, stride=2, padding=1),
                         nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU(),
                         nn.Conv2d(16, 32, 1), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 16 * 16, 10))


@pytest.fixture(scope="module")
def mcu(tmp_path_factory):
    """A small net profiled on tflm-host, its whole models included."""
    import os

    from edgempq.models import arch_hash, model_hash
    from edgempq.profile import WholeModel, profile
    from edgempq.targets import load_target

    os.environ["EDGEMPQ_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    module = net().eval()
    layers = trace(module, (3, 32, 32))
    target = load_target("tflm-host")
    table = profile(layers, target, model_hash(module), whole=WholeModel(module, (3, 32, 32)))
    return module, layers, replace(table, arch_hash=arch_hash(module, (3, 32, 32)))


@pytest.mark.slow
def test_the_predicted_arena_is_what_tflite_micro_measures_for_mixed_policies(mcu):
    from edgempq.arena import arena_model
    from edgempq.backends import backend_for
    from edgempq.export.float_graph import float_tflite
    from edgempq.profile import WholeModel, whole_tflite

    module, layers, table = mcu
    assert table.graph is not None and set(table.whole_arena_bytes) == {"w8a8", "w4a8", "w8a16"}
    assert CostTable.from_dict(table.to_dict()) == table
    model = arena_model(table)
    timing = WholeModel(module, (3, 32, 32)).timing_copy()
    base = float_tflite(timing, (3, 32, 32))
    rng = random.Random(1)
    with backend_for(table.target) as backend:
        for _ in range(4):
            assign = {la.name: rng.choice(table.target.allowed(la.kind)) for la in layers if la.searchable}
            tflite = whole_tflite(layers, base, assign, timing)
            measured = backend.ram_bytes(tflite)
            assert model.predict(assign).total == pytest.approx(measured, rel=0.01), assign


@pytest.mark.slow
def test_search_holds_the_arena_under_ram_kb_and_deploy_refuses_an_arena_over_it_before_converting(mcu, tmp_path):
    from edgempq.arena import arena_model
    from edgempq.export.stage import predicted_arena
    from edgempq.search import SearchRequest, search

    _, layers, table = mcu
    penalty = {"w8a16": 0.0, "w8a8": 0.01, "w4a8": 0.05}  # 16-bit activations are the most accurate
    sens = Sensitivity("toy", {(la.name, str(p)): penalty[str(p)] for la in layers if la.searchable
                               for p in table.target.allowed(la.kind)})
    model = arena_model(table)
    wide = model.predict({la.name: W16 for la in layers if la.searchable}).total
    narrow = model.predict({la.name: W8 for la in layers if la.searchable}).total
    budget = (wide + narrow) / 2 / 1024
    res = search(table, sens, SearchRequest(Budget(ram_kb=budget)))
    got = res.policy.predicted["arena_bytes"]
    assert got <= budget * 1024 and got == model.predict(dict(res.policy.precisions)).total
    assert any(p == W16 for p in res.policy.precisions.values())  # as much int16 as the RAM allows
    with pytest.raises(InfeasibleError, match=r"ram_kb=1 cannot be met on TFLite Micro: .* need \d+\.\d KB"):
        search(table, sens, SearchRequest(Budget(ram_kb=1)))
    small = replace(table.target, name="small", ram_kb=budget)
    wide_policy = Policy({la.name: W16 for la in layers if la.searchable})
    with pytest.raises(DeviceError, match=r"needs \d+\.\d KB of TFLite Micro arena \(predicted from the profile\) "
                                          "but target small has ram_kb"):
        predicted_arena(wide_policy, table, small)


@pytest.mark.slow
def test_the_arena_search_fits_whatever_the_latencies_break_its_ties_with(mcu):
    # the latencies (noisy on a shared machine) decide which of the equal-penalty policies the
    # solver visits; a policy that the planner's packing puts over the budget is cut, so the
    # search still ends at one that fits
    from edgempq.arena import arena_model
    from edgempq.search import SearchRequest, search

    _, layers, table = mcu
    penalty = {"w8a16": 0.0, "w8a8": 0.01, "w4a8": 0.05}
    sens = Sensitivity("toy", {(la.name, str(p)): penalty[str(p)] for la in layers if la.searchable
                               for p in table.target.allowed(la.kind)})
    model = arena_model(table)
    wide = model.predict({la.name: W16 for la in layers if la.searchable}).total
    narrow = model.predict({la.name: W8 for la in layers if la.searchable}).total
    for seed in range(12):
        rng = random.Random(seed)
        noisy = replace(table, rows=tuple(replace(r, latency_ms=r.latency_ms * rng.uniform(0.7, 1.4))
                                          for r in table.rows),
                        whole_ms={k: v * rng.uniform(0.8, 1.25) for k, v in table.whole_ms.items()},
                        probes=tuple(replace(p, median_ms=p.median_ms * rng.uniform(0.8, 1.25))
                                     for p in table.probes))
        res = search(noisy, sens, SearchRequest(Budget(ram_kb=(wide + narrow) / 2 / 1024)))
        assert res.policy.predicted["arena_bytes"] <= (wide + narrow) / 2


def mcu_table(module, shape, anchor_bytes):
    """A hand-made tflm profile of `module`: its float graph a chain, rows of 1 ms, the uniform
    w8a8 arena `anchor_bytes` as if measured."""
    from edgempq.schema import CostRow, Target

    layers = trace(module, shape)
    target = Target.from_dict({"name": "mcu", "backend": "tflm", "ram_kb": 64,
                               "precisions": {k: ["w8a8", "w8a16"] for k in ("conv", "dwconv", "linear")}})
    names = [la.name for la in layers]
    elements = [math.prod(shape)] + [math.prod(la.out_shape) for la in layers]
    graph = Graph(tuple(GraphOp("CONV_2D", n, (i,), (i + 1,)) for i, n in enumerate(names)),
                  dict(enumerate(elements)), (0,), (len(names),), len(names) + 1)
    rows = tuple(CostRow(la.signature, p, 1.0, 1.0, 1.0, 5, 100, 1000, 1) for la in layers for p in ("w8a8", "w8a16"))
    return CostTable(target, {}, "h", tuple(layers), rows, {"w8a8": 3.0, "w8a16": 3.0}, {}, (),
                     whole_bytes={"w8a8": 3500, "w8a16": 3600}, whole_arena_bytes={"w8a8": anchor_bytes}, graph=graph)


def test_the_arena_search_backs_off_when_its_rows_rule_out_everything():
    """The rows are tightened by a mixed policy's excess; when that rules out the all-int8 policy
    that fits, the tightening is bisected back instead of giving up."""
    from edgempq.arena import arena_model
    from edgempq.search import SearchRequest, search

    module = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1))
    table = mcu_table(module, (1, 8, 8), 4000)
    model = arena_model(table)
    int8 = model.predict({la.name: W8 for la in table.layers}).total
    sens = Sensitivity("toy", {(la.name, p): (0.0 if p == "w8a16" and la.name == "1" else 1.0)
                               for la in table.layers for p in ("w8a8", "w8a16")})
    res = search(table, sens, SearchRequest(Budget(ram_kb=(int8 + 20) / 1024)))
    assert res.policy.predicted["arena_bytes"] <= int8 + 20
    with pytest.raises(InfeasibleError, match=r"the policies meeting the other budgets need 3\.\d KB of arena"):
        search(table, sens, SearchRequest(Budget(ram_kb=1)))


def test_an_older_profile_of_a_microcontroller_target_with_float_still_loads():
    module = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1))
    table = mcu_table(module, (1, 8, 8), 4000)
    d = table.to_dict()
    d["target"]["precisions"]["conv"] = ["f32", "w8a8", "w8a16"]  # as tflm-host listed it before allow_float
    del d["sha256"]
    from edgempq.schema.core import canonical_sha256 as _checksum

    old = CostTable.from_dict(d | {"sha256": _checksum(d)})
    assert old.target.allow_float and Precision.parse("f32") in old.target.allowed("conv")
