"""The search around the solver on hand-made profiles: the target's own limits, pins and
allowed precisions, the policy held against all-int8 and all-float, sweeps that collapse,
profiles reused across weights and renamed targets, and microcontroller targets without float."""

from __future__ import annotations

from dataclasses import replace

import pytest
from torch import nn

from edgempq.errors import ConfigError
from edgempq.latency import ModelKey, predicted_latency
from edgempq.layers import layer_edges, trace
from edgempq.memory import flash_offset, predicted_flash
from edgempq.models import arch_hash, model_hash
from edgempq.qgraph import layer_graph
from edgempq.schema import Budget, CostRow, CostTable, Policy, Precision, Sensitivity, Target
from edgempq.search import SearchRequest, search, sweep_search

PRECISIONS = ("f32", "w8a8", "w8a16")
MS = {"f32": 1.0, "w8a8": 0.1, "w8a16": 6.0}  # per layer: int16 activations 60x int8, as XNNPACK has no int16 kernels
FLASH = {"f32": 4000, "w8a8": 1200, "w8a16": 1300}  # each single-layer model's bytes


def chain():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 2, 3, padding=1))


def target(**kw):
    d = {"name": "dev", "backend": "litert", "precisions": {k: list(PRECISIONS) for k in ("conv", "dwconv", "linear")}}
    return Target.from_dict(d | kw)


def profile_of(tg, model=None):
    model = model or chain()
    layers = trace(model, (1, 6, 6))
    rows = tuple(CostRow(la.signature, p, MS[p], 0, 0, 5, 0, FLASH[p]) for la in layers for p in PRECISIONS)
    whole = {p: 3 * MS[p] for p in PRECISIONS}  # the rows add up to the whole model: scale 1
    edges = tuple(layer_edges(model, layers))
    return CostTable(tg, {}, model_hash(model), tuple(layers), rows, whole, {}, edges,
                     whole_bytes={p: 3 * FLASH[p] + 500 for p in PRECISIONS}, arch_hash=arch_hash(model, (1, 6, 6)),
                     graph=layer_graph(layers, edges))  # a chain of convs: its layers are its graph


def sens_of(table, penalty=None):
    penalty = penalty or {"f32": 0.0, "w8a16": 0.001, "w8a8": 0.01}  # int16 a hair better than int8
    return Sensitivity("toy", {(la.name, p): penalty[p] for la in table.layers for p in PRECISIONS})


def test_a_size_only_policy_far_slower_than_int8_is_held_against_it_and_warned():
    table = profile_of(target())
    integer = ("w8a8", "w8a16")
    res = search(table, sens_of(table), SearchRequest(Budget(size_kb=1.0), allow=integer))
    assert {str(p) for p in res.policy.precisions.values()} == {"w8a16"}  # the least penalty under the size
    refs = {r.label: r for r in res.references}
    assert refs["all-int8"].latency_ms == pytest.approx(0.3) and refs["all-int8"].measured
    assert refs["all-float"].latency_ms == pytest.approx(3.0)
    (warning,) = res.warnings
    assert "60.0x all-int8's 0.3 ms" in warning and "--exclude w8a16" in warning
    # with a latency budget the user says what speed is worth: no warning then
    res = search(table, sens_of(table), SearchRequest(Budget(size_kb=1.0, latency_ms=0.5), allow=integer))
    assert {str(p) for p in res.policy.precisions.values()} == {"w8a8"} and not res.warnings


def test_near_ties_go_to_the_faster_policy_without_a_latency_budget():
    table = profile_of(target())
    sens = sens_of(table, {"f32": 0.0, "w8a16": 0.0100, "w8a8": 0.0101})  # int16 0.99 % better: noise
    ask = SearchRequest(Budget(size_kb=1.0), allow=("w8a8", "w8a16"))
    assert {str(p) for p in search(table, sens, ask).policy.precisions.values()} == {"w8a8"}
    exact = replace(ask, near_tie=0.0)
    assert {str(p) for p in search(table, sens, exact).policy.precisions.values()} == {"w8a16"}
    wide = sens_of(table, {"f32": 0.0, "w8a16": 0.0100, "w8a8": 0.0110})  # one layer alone: 3 % of the total
    assert {str(p) for p in search(table, wide, ask).policy.precisions.values()} == {"w8a16"}


def test_allow_exclude_and_pins_cut_the_choices():
    table = profile_of(target())
    sens = sens_of(table)
    got = search(table, sens, SearchRequest(Budget(size_kb=100), allow=("w8a8", "w8a16"))).policy.precisions
    assert {str(p) for p in got.values()} == {"w8a16"}
    got = search(table, sens, SearchRequest(Budget(size_kb=100), exclude=("f32", "w8a16"), pins=("2=w8a16",)))
    assert {k: str(v) for k, v in got.policy.precisions.items()} == {"0": "w8a8", "2": "w8a16", "4": "w8a8"}
    assert got.kept == (("2", "w8a16", "pinned"),)
    with pytest.raises(ConfigError, match="layer 0 takes f32, w8a8, w8a16 on dev, and --allow/--exclude leave it none"):
        search(table, sens, SearchRequest(Budget(size_kb=100), exclude=PRECISIONS))
    with pytest.raises(ConfigError, match="--allow w4a8: the target offers no layer w4a8; choose from f32, w8a16"):
        search(table, sens, SearchRequest(Budget(size_kb=100), allow=("w4a8",)))


def test_the_targets_flash_and_ram_apply_unless_lifted():
    table = profile_of(target(flash_kb=4.5, ram_kb=512))
    # flash: each layer's single-layer model plus what the whole models hold beyond them (500 bytes)
    assert flash_offset(table, list(table.layers)) == (500.0, True)
    res = search(table, sens_of(table), SearchRequest(Budget()))
    assert res.from_target == ("ram_kb", "flash_kb") and res.budget.flash_kb == 4.5
    assert res.policy.predicted["flash_bytes"] <= 4.5 * 1024  # one f32 layer (6.7 KB) does not fit
    assert res.policy.predicted["flash_bytes"] == predicted_flash(table, list(table.layers), res.policy.precisions)
    assert {str(p) for p in res.policy.precisions.values()} == {"w8a16"}
    res = search(table, sens_of(table), SearchRequest(Budget(flash_kb=20)))  # the user's own flash budget wins
    assert res.from_target == ("ram_kb",) and all(p.is_float for p in res.policy.precisions.values())
    with pytest.raises(ConfigError, match="give at least one budget"):
        search(table, sens_of(table), SearchRequest(Budget(), target_limits=False))


def test_a_sweep_whose_points_are_one_policy_says_so():
    table = profile_of(target())
    front = sweep_search(table, sens_of(table), "latency_ms=4:20:3", SearchRequest(Budget()))
    assert "all 3 feasible budgets of the sweep give the same policy (all f32)" in front.note
    assert front.to_dict()["note"] == front.note
    front = sweep_search(table, sens_of(table), "latency_ms=0.3:3:4", SearchRequest(Budget()))
    assert front.note is None


def test_a_profile_holds_for_other_weights_and_a_renamed_or_relimited_copy_of_its_target():
    tg = target()
    table = profile_of(tg)
    policy = Policy({la.name: Precision.parse("w8a8") for la in table.layers})
    other_weights = chain()  # new random weights: another model_hash, the same architecture
    key = ModelKey(arch_hash(other_weights, (1, 6, 6)), model_hash(other_weights))
    copy = replace(tg, name="my-copy", ram_kb=64.0)
    assert predicted_latency(policy, table, copy, key).predicted_ms == pytest.approx(0.3)
    wider = nn.Sequential(nn.Conv2d(1, 5, 3, padding=1), nn.ReLU(), nn.Conv2d(5, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 2, 3, padding=1))
    with pytest.raises(ConfigError, match="the profile is of another architecture or input shape"):
        predicted_latency(policy, table, tg, ModelKey(arch_hash(wider, (1, 6, 6))))
    with pytest.raises(ConfigError, match="the profile is of another architecture or input shape"):
        predicted_latency(policy, table, tg, ModelKey(arch_hash(other_weights, (1, 8, 8))))
    with pytest.raises(ConfigError, match=r"measured on dev \(backend litert, 1 thread\(s\)\), not on four's device"):
        predicted_latency(policy, table, replace(tg, name="four", threads=4), key)
    old = replace(table, arch_hash=None)  # a profile from before the architecture fingerprint: weights checked
    with pytest.raises(ConfigError, match="the profile was made for another model or other weights"):
        predicted_latency(policy, old, tg, key)


def test_the_profile_cache_is_keyed_by_the_device_not_the_targets_name_or_limits():
    from edgempq.profile_cache import device_key

    tg = target()
    fp = {"backend": "litert", "cpu": "x", "cores": 2}
    assert device_key(tg, fp) == device_key(replace(tg, name="copy", ram_kb=8.0, flash_kb=64.0), fp)
    assert device_key(tg, fp) != device_key(replace(tg, threads=2), fp)


def test_microcontroller_targets_offer_no_float_unless_their_file_says_so():
    mcu = {"name": "m", "backend": "tflm", "precisions": {"conv": ["w8a8", "f32"], "dwconv": ["w8a8"],
                                                            "linear": ["w8a8"]}}
    with pytest.raises(ConfigError, match=r"target m: backend tflm is a microcontroller's, .* lists conv f32; "
                                          "remove them, or set allow_float = true"):
        Target.from_dict(mcu)
    ok = Target.from_dict(mcu | {"allow_float": True})
    assert ok.microcontroller and Precision.parse("f32") in ok.allowed("conv")
    assert Target.from_dict(ok.to_dict()) == ok and ok.to_dict()["allow_float"] is True
    assert not target().microcontroller


def test_a_microcontroller_profile_without_whole_models_says_its_ram_is_per_layer():
    mcu = Target.from_dict({"name": "mcu", "backend": "tflm", "ram_kb": 64,
                            "precisions": {k: ["w8a8", "w8a16"] for k in ("conv", "dwconv", "linear")}})
    table = replace(profile_of(target()), target=mcu, whole_ms={}, whole_bytes={})
    table = replace(table, rows=tuple(replace(r, ram_bytes=1000) for r in table.rows if r.precision != "f32"))
    res = search(table, sens_of(table), SearchRequest(Budget(size_kb=1.0)))
    assert res.from_target == ("ram_kb",) and "arena_bytes" not in res.policy.predicted
    assert any("no whole-model measurements" in w for w in res.warnings)


def test_a_sweep_of_ram_does_not_hold_the_targets_ram_and_lifting_the_limits_is_said():
    table = profile_of(target(flash_kb=100.0, ram_kb=4.0))
    front = sweep_search(table, sens_of(table), "ram_kb=1:8:2", SearchRequest(Budget()))
    assert front.from_target == ("flash_kb",) and "ram_kb" not in front.held.to_dict()
    with pytest.raises(ConfigError, match="--no-target-limits lifted the target's own"):
        search(table, sens_of(table), SearchRequest(Budget(), target_limits=False))
    res = search(table, sens_of(table), SearchRequest(Budget(ram_kb=8.0)))
    assert any("--ram-kb 8 is above target dev's ram_kb = 4" in w for w in res.warnings)


def test_a_profile_without_the_graphs_skeleton_says_its_latency_counts_the_layers_alone():
    from dataclasses import replace

    table = replace(profile_of(target()), graph=None)  # as an older edgempq profiled
    res = search(table, sens_of(table), SearchRequest(Budget(size_kb=100.0)))
    assert any("predates the float graph's skeleton" in w for w in res.warnings)


def test_search_warns_when_the_sensitivity_came_from_a_method_that_lost_to_random():
    table = profile_of(target())
    lost = replace(sens_of(table), method="bad",
                   info={"below_random": ["net size 0.5: 90.0 % against the random median 95.0 %"]})
    res = search(table, lost, SearchRequest(Budget(latency_ms=10)))
    assert [w for w in res.warnings if "median of random" in w] == [
        "bad's policies were below the median of random policies in the benchmark at 1 budget(s) (net size 0.5: "
        "90.0 % against the random median 95.0 %): see the README's method table for when to use it"]
    assert not any("median of random" in w for w in search(table, sens_of(table),
                                                           SearchRequest(Budget(latency_ms=10))).warnings)
