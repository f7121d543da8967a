"""The benchmark suite's own logic (tools/bench_*.py): how budgets of equal tightness are set,
how policies are compared at equal measured latency, the random baseline, and that
BENCHMARKS.md renders every part. The benchmarks themselves are reports, not tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parent.parent / "tools"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(TOOLS))
    import bench_all
    import bench_device
    import bench_fidelity
    import bench_methods

    yield {"all": bench_all, "device": bench_device, "methods": bench_methods, "fidelity": bench_fidelity}
    sys.path.remove(str(TOOLS))


def test_budgets_between_the_uniform_latencies_either_way_round(bench):
    d = bench["device"]
    # int8 slower than float (small models on this CPU): budgets still go from the faster up
    assert d.latency_budgets(0.30, 0.26, (0.25, 0.5)) == pytest.approx([0.27, 0.28])
    assert d.latency_budgets(50.0, 90.0, (0.5,)) == pytest.approx([70.0])
    b = d.proxy_budgets(0.27, {"latency_ms": 0.30, "bops": 1000.0, "size_bytes": 2048})
    assert b["share_of_int8"] == pytest.approx(0.9)
    assert b["bops"] == {"bops": pytest.approx(900.0)}
    assert b["size"] == {"size_kb": pytest.approx(1.8)}
    assert b["latency"] == {"latency_ms": 0.27}


def _row(kind, idx, budget, measured, top1=None, key=None, match=None):
    return {"kind": kind, "budget_index": idx, "latency_budget_ms": budget, "feasible": True,
            "measured_ms": measured, "top1": top1, "key": key or f"{kind}{idx}", "match": match}


def test_summary_counts_breaks_and_checks_the_profile_error(bench):
    d = bench["device"]
    rows = [_row("latency", 0, 1.0, 1.04), _row("latency", 1, 2.0, 1.9),
            _row("bops", 0, 1.0, 1.5), _row("bops", 1, 2.0, 1.8),
            _row("size", 0, 1.0, 1.2), {"kind": "size", "budget_index": 1, "feasible": False},
            _row("match", None, 1.5, 1.6)]  # matched policies are not one of the budgets
    s = d.summary(rows, prof_err=0.05)
    assert s["latency"]["policies"] == 2 and s["latency"]["over_budget"] == 1
    assert s["latency"]["max_over"] == pytest.approx(0.04) and s["latency"]["within_profile_error"]
    assert s["bops"]["over_budget"] == 1 and s["bops"]["max_over"] == pytest.approx(0.5)
    assert s["size"]["policies"] == 1
    assert not d.summary(rows, prof_err=0.01)["latency"]["within_profile_error"]


def test_equal_latency_pairs_each_proxy_with_its_match(bench):
    d = bench["device"]
    rows = [_row("bops", 0, 1.0, 1.5, top1=0.90, match="m1"), _row("size", 0, 1.0, 1.2, top1=0.95, match="m2"),
            _row("match", None, 1.5, 1.45, top1=0.97, key="m1"), _row("match", None, 1.2, 1.22, top1=0.94, key="m2"),
            _row("latency", 0, 1.0, 1.0, top1=0.99),
            {"kind": "size-a8", "budget_index": 1, "feasible": False, "reason": "cannot be met"}]
    eq = d.equal_latency(rows)
    assert [(e["proxy"], round(e["top1_gain"], 6)) for e in eq] == [("bops", 0.07), ("size", -0.01)]
    assert eq[0]["latency_ms"] == 1.45 and eq[0]["proxy_ms"] == 1.5


def test_random_baseline_and_research_widths_solve_within_budget(bench, two_layer):
    from edgempq.layers import policy_weight_bytes, trace
    from edgempq.schema import Budget, Policy
    from edgempq.solve import solve

    m = bench["methods"]
    layers = trace(two_layer, two_layer.input_shape)
    target = m.ResearchWidths(m.WIDTHS)
    int8 = {"size_bytes": policy_weight_bytes(layers, Policy.uniform(layers, "w8a8")), "bops": 1}
    budget = m.budget_for("size", 0.5, int8)
    picks = set()
    for seed in range(4):
        sens = m.random_sensitivity(layers, m.WIDTHS, seed)
        pol = solve(layers, sens, None, Budget(**budget), target)
        assert policy_weight_bytes(layers, pol) <= budget["size_kb"] * 1024
        assert {str(p) for p in pol.precisions.values()} <= set(m.WIDTHS)
        picks.add(tuple(str(p) for p in pol.precisions.values()))
    assert len(picks) > 1  # different seeds, different policies


def _device_result():
    rows = [{**_row(k, i, b, b * f, top1=t), "predicted_ms": b * 0.98, "size_bytes": 3000, "bops": 5e5,
             "precisions": {"a": "f16", "b": "w4a8", "c": "f16"}}
            for i, b in enumerate((0.3, 0.4)) for k, f, t in (("latency", 0.97, 0.98), ("bops", 1.3, 0.95),
                                                            ("size", 1.6, 0.96))]
    rows += [{**_row("uniform w8a8", None, None, 0.3, top1=0.97), "predicted_ms": 0.3}]
    return {"part": "device", "quick": True, "target": "host", "machine": _machine(), "models": [{
        "model": "mnist_resnet8", "trained": True, "method": "measured", "input_shape": [1, 1, 28, 28],
        "int8": {"latency_ms": 0.3, "f32_ms": 0.5, "bops": 1e6, "size_bytes": 4096}, "latency_budgets_ms": [0.3, 0.4],
        "profile_error": {"max_abs": 0.05, "policies": 2, "errors": [-0.05, 0.02]}, "rows": rows, "rounds": 2,
        "summary": {k: {"policies": 2, "over_budget": 0 if k == "latency" else 2, "max_over": 0.3,
                        "median_over": 0.3, "within_profile_error": True} for k in ("latency", "bops", "size")},
        "equal_latency": [{"budget": 0, "proxy": "bops", "proxy_ms": 0.39, "proxy_top1": 0.95, "latency_ms": 0.38,
                           "latency_top1": 0.98, "top1_gain": 0.03}]}]}


def _machine():
    return {"cpu": "test CPU", "cores": 2, "memory_gb": 24, "os": "Linux", "python": "3.11", "packages": {},
            "date": "2026-11-26"}


def _methods_result():
    rows = [{"method": meth, "metric": metric, "share": s, "feasible": True, "ptq_top1": 0.9, "qat_top1": 0.95,
             "size_bytes": 1000, "bops": 10}
            for meth in ("ompq", "csmpq", "random0") for metric in ("size", "bops") for s in (0.5, 0.75)]
    rows[7]["ptq_top1"] = 0.85  # csmpq at bops 0.75: below the random one, and down 5 points from bops 0.5
    rows += [{"method": "uniform w4a8", "metric": None, "share": None, "feasible": True, "ptq_top1": 0.9,
              "qat_top1": 0.96, "size_bytes": 2048, "bops": 50}]
    return {"part": "methods", "quick": True, "widths": ["w2a8", "w3a8", "w4a8", "w8a8"],
            "qat": {"samples": 1000, "epochs": 1}, "machine": _machine(), "models": [{
                "model": "mnist_resnet8", "int8": {"size_bytes": 4096, "bops": 100}, "float_top1": 0.977,
                "shares": [0.5, 0.75], "methods": ["ompq", "csmpq"], "rows": rows,
                "search": {m: {"sensitivity_s": 0.1, "solve_s": 0.05, "search_s": 0.15,
                               "unconstrained": {"widest": "w8a8", "layers": 10, "narrower": n}}
                           for m, n in (("ompq", {}), ("csmpq", {"fc": "w2a8"}))}}]}


def test_benchmarks_md_renders_every_part(bench, tmp_path):
    from edgempq.files import write_json

    write_json(tmp_path / "device.json", _device_result())
    write_json(tmp_path / "methods.json", _methods_result())
    write_json(tmp_path / "costs.json", {"part": "costs", "quick": True, "machine": _machine(), "models": [{
        "model": "mnist_resnet8", "layers": 10, "profile_cold_s": 25.0, "profile_warm_s": 0.5,
        "sensitivity": {"ompq": {"seconds": 0.1, "from": "here"}}, "solve_s": 0.04, "deploy_s": 13.0,
        "validate_s": 6.0, "validate_samples": 1000}]})
    write_json(tmp_path / "fidelity.json", {"part": "fidelity", "quick": True, "machine": _machine(), "models": [{
        "model": "mnist_resnet8", "trained": True, "artifacts": [{
            "key": "k", "label": "latency #1", "validate_s": 6.0, "samples": 1000, "float_top1": 0.977,
            "simulated_top1": 0.97, "artifact_top1": 0.971, "agreement": 0.998, "max_logit_error": 0.3,
            "mean_logit_error": 0.01, "interleaved_ms": 0.30, "interleaved_error": 0.0,
            "logit_range": 30.0, "predicted_ms": 0.3, "measured_ms": 0.31, "latency_error": 0.033,
            "tflite_bytes": 90000, "predicted_weight_bytes": 5000, "stored_weight_bytes": 5000}]}]})
    policies = [{"policy": f"random {i}", "error": e, "same_session_error": e, "mix": {"w8a8": 2}}
                for i, e in enumerate((0.02, -0.04, 0.08, 0.12))]
    write_json(tmp_path / "latency.json", {"part": "latency", "quick": True, "machine": _machine(), "rounds": 5,
                                           "models": [{"model": "ds_cnn", "target": "host", "policies": policies,
                                                       "probes": 24, "drift": 1.01}]})
    summary = {"budget": 0, "limits": {"flash_kb": 1024, "ram_kb": 256}, "size_ms": 2.0, "size_top1": 0.98,
               "aware_ms": 1.0, "aware_top1": 0.981, "speedup": 0.5, "match_ms": 1.9, "match_top1": 0.98,
               "size_mix": {"a": "w8a16"}, "aware_mix": {"a": "w8a8"}}
    write_json(tmp_path / "proof.json", {"part": "proof", "quick": True, "machine": _machine(), "models": [
        {"model": "mnist_mlp", "target": "tflm-host", "summary": [summary], "rows": []}]})
    a = bench["all"]
    md = a.render(tmp_path, tmp_path / "BENCHMARKS.md", tmp_path / "plots")
    text = md.read_text()
    for heading in ("## Targets", "## 1. Device-aware", "## 2. Sensitivity methods", "## 3. Costs",
                    "## 4. Fidelity", "## 8. The latency model", "## 9. The proof", "--quick"):
        assert heading in text
    assert "| search (ompq sensitivity + solve) under 30 s (mnist_resnet8) | 0.15 s | met |" in text
    assert "comparisons" not in text  # part 1's equal-latency target was retired for part 9's
    assert ("| every method's PTQ top-1 ≥ the random policies' median at each feasible budget (mnist_resnet8) | "
            "7 of 8; below: csmpq bops 0.75 (85.0 vs 90.0) | **not met** |") in text
    assert "every method (mnist_resnet8) | csmpq bops 0.5 → 0.75: 90.0 → 85.0 | **not met** |" in text
    assert "| with no budget every layer at the widest width, every method (mnist_resnet8) | csmpq: 1 of 10 " \
           "narrower | **not met** |" in text
    assert ("| latency predicted within ±10 % for ≥ 90 % of random mixed policies (ds_cnn, host) | 3/4 "
            "(±5 %: 2/4) | **not met** |") in text
    assert "| at equal budget and top-1 (±0.3 point), latency-aware ≥ 20 % faster on 3 of 4 models (tflm-host) | " \
           "1 of 1: mnist_mlp | met |" in text
    assert "| mnist_mlp | tflm-host | flash 1024 KB, RAM 256 KB | 2.000 |" in text
    assert (tmp_path / "plots" / "device_mnist_resnet8.png").stat().st_size > 1000
    assert (tmp_path / "plots" / "methods_mnist_resnet8.png").stat().st_size > 1000
    assert "Weight bytes: 1/1 exact" in text
    assert "| #1 | 1.00 | bops | 0.300 | 0.294 | 0.390 | +30.0 % | 2.9 | 0 | 95.0 % | 2×f16, 1×w4a8 |" in text


def test_fidelity_labels_name_every_kind_that_chose_an_artifact(bench):
    rows = [_row("latency", 0, 1.0, 1.0, key="a"), _row("bops", 0, 1.0, 1.0, key="a"),
            _row("uniform f32", None, None, 1.0, key="b"),
            {**_row("match", None, 1.0, 1.0, key="c"), "for_kind": "size-a8", "for_budget": 2}]
    assert bench["fidelity"].kinds_by_key({"rows": rows}) == {"a": "latency #1, bops #1", "b": "uniform f32",
                                                              "c": "match of size-a8 #3"}


def _ptq_result():
    def row(prec, ptq, sim, art=None):
        r = {"precision": prec, "ptq": ptq, "sim_top1": sim, "ptq_s": 2.0}
        if art is not None:
            r.update(artifact_top1=art, agreement=0.997, exact_layers=6, max_logit_error=0.02, deploy_s=12.0)
        return r

    return {"part": "ptq", "quick": True, "default": "gptq+bc", "machine": _machine(),
            "train": {"epochs": 4, "lr": 2e-3, "batch_size": 64},
            "configs": {"minmax": {}, "gptq+bc": {}},
            "models": [{"model": "mnist_cnn", "seed": s, "float_top1": 0.95,
                        "rows": [row("w4a8", "minmax", 0.90, 0.895), row("w4a8", "gptq+bc", 0.948, 0.946 - 0.02 * s),
                                 row("w2a8", "minmax", 0.30), row("w2a8", "gptq+bc", 0.80)]} for s in (0, 1)],
            "resnet18": {"calibration": 256, "precision": "w4a8", "seconds": {"minmax": 12.0, "gptq+bc": 170.0}},
            "mixed": {"policies": 2, "rows": [
                {"model": "mnist_resnet8", "precisions": {"a": "w4a8", "b": "w8a8"}, "minmax_top1": 0.95,
                 "default_top1": 0.96},
                {"model": "mnist_resnet8", "precisions": {"a": "w8a8", "b": "w4a8"}, "minmax_top1": 0.97,
                 "default_top1": 0.969},
                {"model": "mnist_resnet8", "precisions": {"a": "w8a8", "b": "w2a8"}, "minmax_top1": 0.97,
                 "default_top1": 0.969}]}}  # two equal losses: sorted by the loss alone


def test_the_ptq_part_renders_its_tables_and_judges_its_targets(bench, tmp_path):
    from edgempq.files import write_json

    write_json(tmp_path / "ptq.json", _ptq_result())
    text = bench["all"].render(tmp_path, tmp_path / "BENCHMARKS.md", tmp_path / "plots").read_text()
    assert "## 5. Low-bit PTQ" in text and "### w4a8" in text and "### w2a8" in text
    assert "| mnist_cnn #0 | 95.0 % | -5.0 [-5.5] | -0.2 [-0.4] |" in text
    assert ("| default PTQ (gptq+bc): uniform w4a8 deployed within 1.0 point of float (mnist_cnn, Adam-trained) "
            "| seed 0: -0.4, seed 1: -2.4 | **not met** |") in text
    assert "| PTQ of ResNet-18 at 224 (256 calibration images) with the default under 5 min | 170 s | met |" in text
    assert "| no mixed policy of parts 1 and 2 loses accuracy against the first round's min-max PTQ | 1/3 policies" \
           " as good or better | **not met** |" in text
    assert "mnist_resnet8 -0.1 (0.970 → 0.969)" in text
    assert "| gptq+bc | 2 | 99.7 % | 99.7 % | 12 | 0.02 |" in text


def test_splice_rewrites_one_part_and_keeps_the_others_as_measured(bench, tmp_path):
    from edgempq.files import write_json

    a = bench["all"]
    old = tmp_path / "old"
    old.mkdir()
    write_json(old / "methods.json", _methods_result())
    md = a.render(old, tmp_path / "BENCHMARKS.md", tmp_path / "plots")
    before = md.read_text()
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    write_json(fresh / "ptq.json", _ptq_result())
    text = a.splice(["ptq"], fresh, md, note="Part 5 measured again.").read_text()
    methods = before[before.index("## 2."):].rstrip("\n") + "\n"
    assert methods in text  # part 2 kept word for word
    assert text.index("## Targets") < text.index("## 2.") < text.index("## 5. Low-bit PTQ")
    assert "| search (ompq sensitivity + solve) under 30 s (mnist_resnet8) | 0.15 s | met |" in text
    assert "| PTQ of ResNet-18 at 224 (256 calibration images) with the default under 5 min | 170 s | met |" in text
    assert text.count("| target |") == 1 and "Part 5 measured again." in text
    again = a.splice(["ptq"], fresh, md).read_text()
    assert again.count("## 5. Low-bit PTQ") == 1 and again.count("with the default under 5 min") == 1
    md.write_text(again.replace("## 5. Low-bit PTQ", "## 5. An older title of part 5"))
    renamed = a.splice(["ptq"], fresh, md).read_text()  # a part is its number: the old title goes
    assert renamed.count("## 5.") == 1 and "older title" not in renamed
    with pytest.raises(SystemExit, match="no results for part"):
        a.splice(["device"], fresh, md)


def test_the_models_part_renders_each_step_and_the_refusal_it_met(bench):
    sys.path.insert(0, str(TOOLS))
    import bench_models

    ok = {s: {"ok": True, "seconds": 1.0} for s in bench_models.STEPS}
    res = {"target": "host", "method": "csmpq", "size_share": 0.6, "epochs": 10, "samples": 600, "models": [
        {"model": "ds_cnn", "task": "classify", "layers": 10, "searchable": 10, "steps": ok, "agreement": 0.995},
        {"model": "seg", "task": "dense", "layers": 5, "searchable": 3, "steps": ok, "agreement": 1.0, "snr_db": 45.94},
        {"model": "ae", "target": "tflm-host", "task": "reconstruct", "layers": 2, "searchable": 2, "steps": ok,
         "agreement": None, "snr_db": 200.0},
        {"model": "tiny_vit", "task": "classify", "layers": 9, "searchable": 5, "fixed": {"b.attn.in_proj": "why"},
         "steps": {"layers": ok["layers"], "preflight": {"ok": False, "seconds": 9.0,
                                                         "error": "onnx2tf cannot convert the Mul in module 'a'"}}}]}
    text = bench_models.section(res, bench["all"].table)
    assert "| ds_cnn | host | classify | 10/10 | ✔ 1.0 s |" in text and "| 99.5 % |" in text
    assert "| 100.0 %, SNR 45.9 dB |" in text and "| ae | tflm-host | reconstruct |" in text
    assert "| outputs identical |" in text
    assert "| tiny_vit | host | classify | 5/9 | ✔ 1.0 s | ✘ | – |" in text
    assert "- **tiny_vit** on host, preflight: onnx2tf cannot convert the Mul in module 'a'" in text
    assert "- tiny_vit: 1 layer(s) kept float — why" in text


def test_the_proof_sets_budgets_as_each_device_s_user_would_and_counts_its_wins(bench):
    sys.path.insert(0, str(TOOLS))
    import bench_proof as p

    from edgempq.targets import load_target

    host, mcu = load_target("host"), load_target("tflm-host")
    assert p.budgets(host, 10240, 20000, False) == [{"size_kb": 6.0}, {"size_kb": 8.0}]
    assert p.budgets(mcu, 10240, 20480, False) == [{"flash_kb": 1024, "ram_kb": 256},
                                                   {"flash_kb": 17.0, "ram_kb": 256}]
    assert p.limits_text({"flash_kb": 17.0, "ram_kb": 256}) == "flash 17 KB, RAM 256 KB"
    size = {"kind": "size", "budget_index": 0, "budget": {"size_kb": 6.0}, "measured_ms": 1.0, "top1": 0.98,
            "key": "a", "precisions": {"x": "w8a16"}}
    fast = {"kind": "latency", "budget_index": 0, "measured_ms": 0.5, "top1": 0.979, "precisions": {"x": "w8a8"}}
    worse = {"kind": "latency", "budget_index": 0, "measured_ms": 0.1, "top1": 0.95, "precisions": {"x": "w4a8"}}
    s = p.summary([size, fast, worse])[0]
    assert s["aware_ms"] == 0.5 and s["speedup"] == pytest.approx(0.5)  # the faster one loses 3 points: not equal
    text = p.section({"models": [{"model": "m", "target": "host", "summary": [s]}]}, bench["all"].table)
    assert "1 of 1 on `host`" in text and "| m | host | size 6 KB |" in text
