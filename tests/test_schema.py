import contextlib
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgempq.errors import ConfigError
from edgempq.schema import Budget, Layer, Policy, Precision


@pytest.mark.parametrize("text,w,a,fl", [("w8a8", 8, 8, False), ("w4a8", 4, 8, False),
                                          ("w8a16", 8, 16, False), ("W4A16", 4, 16, False),
                                          ("w2a4", 2, 4, False), ("f16", 16, 32, True), ("f32", 32, 32, True)])
def test_precision_parses_and_prints_back(text, w, a, fl):
    p = Precision.parse(text)
    assert (p.weight_bits, p.act_bits, p.is_float) == (w, a, fl)
    assert str(p) == text.lower()
    assert Precision.parse(str(p)) == p


@pytest.mark.parametrize("text", ["w1a8", "w8a17", "int8", "w8", "f8", "", "w4a8x"])
def test_precision_rejects_malformed_or_out_of_range(text):
    with pytest.raises(ConfigError):
        Precision.parse(text)


def test_only_tflite_precisions_are_deployable():
    assert {p for p in ("w8a8", "w4a8", "w8a16", "w4a16", "f16", "f32") if Precision.parse(p).deployable} == \
        {"w8a8", "w4a8", "w8a16", "w4a16", "f16", "f32"}
    assert not Precision.parse("w2a8").deployable and not Precision.parse("w3a8").deployable


def _policy() -> Policy:
    return Policy({"conv1": Precision.parse("w4a8"), "fc": Precision.parse("f16")},
                  Budget(latency_ms=2.5, size_kb=40), method="csmpq", target="host", model_hash="abc",
                  predicted={"latency_ms": 2.1, "size_bytes": 30000.0}, solver_status="OPTIMAL", gap=0.0,
                  quantizer={"ptq": "adaround", "ptq_params": "iters=200", "bias_correction": True,
                             "act_range": "minmax"})


def test_policy_json_round_trip(tmp_path):
    p = _policy()
    assert Policy.from_json(p.to_json()) == p
    assert Policy.load(p.save(tmp_path / "policy.json")) == p


@pytest.mark.parametrize("edit,needle", [
    (lambda d: d.update(extra=1), "unknown key"),
    (lambda d: d["layers"][0].update(bits=4), "unknown key"),
    (lambda d: d["budget"].update(flops=3), "unknown key"),
    (lambda d: d.update(schema_version=99), "schema_version"),
    (lambda d: d["layers"].append(dict(d["layers"][0])), "twice"),
    (lambda d: d["layers"][0].update(precision="int4"), "unknown precision"),
    (lambda d: d["budget"].update(latency_ms=-1), "positive"),
    (lambda d: d["quantizer"].update(grid="mse"), "unknown key"),
    (lambda d: d["quantizer"].update(bias_correction="yes"), "wrong type"),
])
def test_policy_from_json_rejects_bad_documents(edit, needle):
    d = _policy().to_dict()
    edit(d)
    with pytest.raises(ConfigError, match=needle):
        Policy.from_json(json.dumps(d))


@pytest.mark.parametrize("value", [0, -1.5, math.nan, math.inf, True, "3"])
def test_budget_rejects_non_positive_or_non_numbers(value):
    with pytest.raises(ConfigError, match="positive number"):
        Budget(latency_ms=value)


def test_budget_items_lists_only_set_limits():
    assert Budget(size_kb=10, bops=5e9).items() == [("size_kb", 10), ("bops", 5e9)]


def test_layer_round_trip():
    la = Layer("layer1.0.conv1", "conv", (16, 28, 28), (16, 28, 28), 16, 16, (3, 3), (1, 1), (1, 1), (1, 1),
               1, False, 2304, 1806336, "conv in16x28x28 ...", None)
    assert Layer.from_json(la.to_json()) == la
    with pytest.raises(ConfigError, match="unknown key"):
        Layer.from_dict({**la.to_dict(), "speed": 1})


def test_policy_load_names_the_file_on_error(tmp_path):
    bad = tmp_path / "p.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="p.json"):
        Policy.load(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        Policy.load(tmp_path / "missing.json")


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                     lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
                     max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(doc=_json | st.fixed_dictionaries({"schema_version": st.just(1), "layers": _json}, optional={"budget": _json}))
def test_random_json_never_crashes_policy_reader(doc):
    with contextlib.suppress(ConfigError):
        Policy.from_json(json.dumps(doc))


@settings(max_examples=100, deadline=None)
@given(rows=st.dictionaries(st.from_regex(r"[a-z][a-z0-9_.]{0,12}", fullmatch=True),
                            st.sampled_from(["w8a8", "w4a8", "w8a16", "w4a16", "f16", "f32", "w2a4", "w3a8"]),
                            min_size=1, max_size=6))
def test_any_policy_round_trips(rows):
    p = Policy({k: Precision.parse(v) for k, v in rows.items()})
    assert Policy.from_json(p.to_json()) == p


def test_saved_files_are_readable_by_others_and_unwritable_places_are_clear(tmp_path):
    path = _policy().save(tmp_path / "p.json")
    assert path.stat().st_mode & 0o044 == 0o044  # not the 0600 of a temp file
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="cannot write"):
        _policy().save(tmp_path / "file" / "p.json")


def _validation_doc(**fields):
    doc = {"schema_version": 1, "artifact": "a/model.tflite", "target": "host", "data": "mnist", "data_id": "abc",
           "samples": 3, "device": {"backend": "litert"}, "artifact_top1": 0.5, "eval_seconds": 1,
           "latency": {"median_ms": 1.0, "p10_ms": 0.9, "p90_ms": 1.2, "runs": 5,
                       "points": [{"label": "w8a8", "predicted_ms": 1.0, "measured_ms": 1.1}]},
           "size": {"tflite_bytes": 1000}, "predictions": [1, 2, 0],
           "divergence": {"layer": None, "layers": [{"layer": "c", "precision": "w8a8", "op_index": 2,
                                                      "relative_error": None, "parts": False}]}}
    return {**doc, **fields}


def test_validation_reports_round_trip_and_refuse_what_they_do_not_describe():
    from edgempq.schema.results import LatencyPoint, ValidationReport

    v = ValidationReport.from_dict(_validation_doc())
    assert v.eval_seconds == 1.0 and isinstance(v.eval_seconds, float)  # a JSON integer is a number
    assert v.predictions == (1, 2, 0) and v.latency.points == (LatencyPoint("w8a8", 1.0, 1.1),)
    assert v.divergence.layers[0].relative_error is None and v.agreement is None
    assert ValidationReport.from_json(v.to_json()) == v and v.to_dict()["schema_version"] == 1
    legacy = _validation_doc()
    del legacy["schema_version"]  # written before the reports were versioned
    assert ValidationReport.from_dict(legacy) == v
    bad = [(_validation_doc(extra=1), "unknown key.*extra"),
           (_validation_doc(schema_version=2), "schema_version 2"),
           (_validation_doc(samples="3"), "validation report's samples must be an integer, not str"),
           (_validation_doc(samples=True), "samples must be an integer, not bool"),
           (_validation_doc(latency=[1, 2]), "validation report's latency must be a JSON object, not list"),
           (_validation_doc(size={}), "validation report's size lacks the key tflite_bytes"),
           (_validation_doc(predictions=[1, "x"]), r"predictions\[1\] must be an integer"),
           (_validation_doc(device=[]), "device must be a JSON object"),
           (_validation_doc(divergence={"layer": None, "layers": [{"layer": "c"}]}), r"divergence's layers\[0\] lacks")]
    for doc, message in bad:
        with pytest.raises(ConfigError, match=message):
            ValidationReport.from_dict(doc)


def test_a_deploy_report_reads_its_nested_values_typed():
    from edgempq.schema.results import DeployResult

    io = {"name": "x", "shape": [1, 8, 8, 1], "dtype": "int8", "scale": 0.1, "zero_point": 0}
    doc = {"model": "zoo:m", "model_hash": "h", "data": "mnist", "data_id": "i", "target": "host",
           "quant_config": {"weights": "gptq"}, "simulated_top1": 0.9, "tflite_bytes": 10, "input": io, "output": io,
           "weight_bytes": {"predicted": 5, "artifact": 6},
           "policy": {"method": "csmpq", "budget": {"size_kb": 1.0}, "predicted": {"objective": 2}},
           "layers": [{"layer": "c", "precision": "w4a8", "op_index": 0, "op_output": "t", "op": "CONV_2D",
                       "weight_type": "int4", "activation_type": "int8", "weight_bytes": 5}],
           "latency": {"predicted_ms": 1.5, "target": "host", "layers_ms": {"c": 1.5}}}
    d = DeployResult.from_dict(doc)
    assert d.layers[0].weight_type == "int4" and d.latency.layers_ms == {"c": 1.5} and d.ptq is None
    assert d.policy.predicted == {"objective": 2.0} and d.as_json() == d
    with pytest.raises(ConfigError, match=r"deploy report's layers\[0\]'s op_index must be an integer"):
        DeployResult.from_dict({**doc, "layers": [{**doc["layers"][0], "op_index": "0"}]})
    with pytest.raises(ConfigError, match="deploy report's weight_bytes lacks the key artifact"):
        DeployResult.from_dict({**doc, "weight_bytes": {"predicted": 5}})
    with pytest.raises(ConfigError, match="deploy report's quant_config must be a JSON object, not str"):
        DeployResult.from_dict({**doc, "quant_config": "gptq"})
    sizes = [({"tflite_bytes": -5}, "tflite_bytes must be a finite number of at least 0, not -5"),
             ({"input": {**io, "shape": [1, -8]}}, r"input's shape\[1\] must be a finite number of at least 0"),
             ({"latency": {**doc["latency"], "predicted_ms": float("nan")}}, "predicted_ms must be a finite number"),
             ({"weight_bytes": {"predicted": 5, "artifact": -1}}, "artifact must be a finite number of at least 0")]
    sizes.append(({"latency": {**doc["latency"], "predicted_ms": 0}}, "predicted_ms must be a finite number above 0"))
    sizes.append(({"task": "evil"}, "deploy report's task must be one of classify, dense, regress, reconstruct"))
    for change, message in sizes:  # a size, a time or a count below 0 is no measurement
        with pytest.raises(ConfigError, match=message):
            DeployResult.from_dict({**doc, **change})


def test_deploy_jsons_quantization_settings_are_checked_field_by_field():
    from edgempq.quant import QuantConfig

    what = "deploy.json's quant_config"
    bad = [({"percentile": "x"}, "quant_config's percentile must be float, not str 'x'"),
           ({"fold_bn": "yes"}, "fold_bn must be bool"), ({"weight_params": [1]}, "weight_params must be dict"),
           ({"act_method": "zz"}, r"quant_config is not valid \(act_method must be one of"),
           ({"extra": 1}, "quant_config has unknown key.*extra")]
    for doc, message in bad:
        with pytest.raises(ConfigError, match=message):
            QuantConfig.from_dict(doc, what)
    assert QuantConfig.from_dict({"percentile": 99}, what).percentile == 99  # an integer is a number
