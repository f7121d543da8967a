"""Deploy: a user model (not in the zoo) built into a mixed-precision .tflite on each built-in
target, every layer checked in the flatbuffer, run against the simulation; refusals and errors."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch

from edgempq.errors import ConfigError, DeviceError
from edgempq.schema import Policy, Precision

from .usernet import trained_user_model

# every precision each built-in target runs, for conv and depthwise layers, in one policy each
POLICIES = {
    "host": {"stem.0": "f32", "a.0": "f32", "a.3": "f16", "b.0": "f16", "b.3": "w8a8", "down": "w4a8",
             "c.0": "w8a8", "c.3": "w8a16", "d.0": "w8a16", "d.3": "w4a16", "fc": "w4a8"},
    "tflm-host": {"stem.0": "w8a8", "a.0": "w8a8", "a.3": "w4a8", "b.0": "w8a16", "b.3": "w8a16", "down": "w8a8",
                  "c.0": "w8a16", "c.3": "w4a8", "d.0": "w8a8", "d.3": "w8a8", "fc": "w8a16"},
}
EXPECT = {"f32": ("float32", "float32"), "f16": ("float16", "float32"), "w8a8": ("int8", "int8"),
          "w4a8": ("int4", "int8"), "w8a16": ("int8", "int16"), "w4a16": ("int4", "int16")}


@pytest.fixture(scope="module")
def user_model(tmp_path_factory):
    model, ds, _ = trained_user_model(tmp_path_factory.mktemp("user"))
    return model, ds


def run_artifact(path, x: np.ndarray, io: dict) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path)).get_signature_runner()
    inp, out = io["input"], io["output"]
    logits = []
    for s in x:
        v = s.transpose(1, 2, 0)[None].astype(np.float32)
        if inp["dtype"] != "float32":
            info = np.iinfo(inp["dtype"])
            v = np.clip(np.round(v / inp["scale"] + inp["zero_point"]), info.min, info.max).astype(inp["dtype"])
        o = runner(**{inp["name"]: v})[out["name"]][0].astype(np.float32)
        logits.append(o if out["dtype"] == "float32" else (o - out["zero_point"]) * out["scale"])
    return np.array(logits)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["host", "tflm-host"])
def test_deploy_gives_every_layer_its_precision_and_agrees_with_the_simulation(user_model, target, tmp_path):
    from edgempq.pipeline import deploy, simulate
    from edgempq.schema.results import DeployResult

    model, ds = user_model
    policy = Policy({k: Precision.parse(v) for k, v in POLICIES[target].items()})
    out = tmp_path / "build"
    result = deploy(model, ds, policy, target, out)
    report = result.to_dict()  # as deploy.json holds it
    found = {r.layer: (r.weight_type, r.activation_type) for r in result.layers}
    assert found == {k: EXPECT[v] for k, v in POLICIES[target].items()}
    written = json.loads((out / "deploy.json").read_text())
    assert written["layers"] == report["layers"] and written["target"] == target
    assert DeployResult.from_dict(written) == result  # deploy.json reads back as what deploy returned
    assert 0.5 < result.float_top1 <= 1 and result.simulated_top1 > result.float_top1 - 0.1  # no warning due
    assert Policy.load(out / "policy.json").precisions == policy.precisions
    rules = json.loads((out / "recipe.json").read_text())["rules"]
    assert {r["layer"] for r in rules} >= {f"layer {k}" for k in POLICIES[target]}
    # the artifact behaves like the simulation
    q, _ = simulate(model, ds, policy)
    x, y = ds.split("test")
    with torch.no_grad():
        sim = q(torch.from_numpy(x)).argmax(1).numpy()
    art = run_artifact(out / "model.tflite", x, report).argmax(1)
    assert (sim == art).mean() >= 0.9, f"top-1 agreement {(sim == art).mean():.2f}"
    assert report["tflite_bytes"] == (out / "model.tflite").stat().st_size
    wb = report["weight_bytes"]  # what the solver predicts for size_kb vs what the flatbuffer stores
    assert abs(wb["artifact"] - wb["predicted"]) <= 0.02 * wb["predicted"], wb
    if target == "tflm-host":
        cc = (out / "model_data.cc").read_text()
        assert "alignas(16) const unsigned char g_model[]" in cc and f"g_model_len = {report['tflite_bytes']};" in cc
        assert '#include "model_data.h"' in cc and (out / "model_data.h").exists()
        assert 0 < report["arena_bytes"] < 256 * 1024
    else:
        assert not (out / "model_data.cc").exists()


def test_a_precision_the_target_cannot_run_is_refused_before_conversion(user_model, tmp_path):
    from edgempq.pipeline import deploy

    model, ds = user_model
    bad = dict(POLICIES["host"], **{"a.0": "w4a8"})  # int4 depthwise: the quantizer cannot
    with pytest.raises(ConfigError, match=r"layer a.0 \(dwconv\) is set to w4a8, .* allowed: f32, f16, w8a8, w8a16"):
        deploy(model, ds, Policy({k: Precision.parse(v) for k, v in bad.items()}), "host", tmp_path / "b")
    with pytest.raises(ConfigError, match="names layer 'nope'"):
        deploy(model, ds, Policy({"nope": Precision.parse("w8a8")}), "host", tmp_path / "b")
    tflm = dict(POLICIES["tflm-host"], fc="w4a8")  # TFLite Micro has no int4 fully-connected kernel
    with pytest.raises(ConfigError, match="layer fc .* target tflm-host cannot run"):
        deploy(model, ds, Policy({k: Precision.parse(v) for k, v in tflm.items()}), "tflm-host", tmp_path / "b")
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_a_model_over_the_microcontrollers_ram_is_refused_and_nothing_is_written(user_model, tmp_path):
    from edgempq.pipeline import deploy

    model, ds = user_model
    toml = (tmp_path / "tiny.toml")
    toml.write_text(textwrap.dedent("""
        name = "tiny-mcu"
        backend = "tflm"
        ram_kb = 1
        [precisions]
        conv = ["w8a8"]
        dwconv = ["w8a8"]
        linear = ["w8a8"]
    """))
    policy = Policy({k: Precision.parse("w8a8") for k in POLICIES["host"]})
    with pytest.raises(DeviceError, match=r"KB of TFLite Micro arena but target tiny-mcu has ram_kb = 1"):
        deploy(model, ds, policy, str(toml), tmp_path / "b")
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_deploy_after_qat_exports_the_finetuned_weights(user_model, tmp_path):
    from edgempq.export.stage import DeployConfig
    from edgempq.pipeline import deploy

    model, ds = user_model
    policy = Policy({k: Precision.parse("w4a8" if k not in ("a.0", "b.0", "c.0", "d.0") else "w8a8")
                     for k in POLICIES["host"]})
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    report = deploy(model, ds, policy, "host", tmp_path / "qat", DeployConfig(qat_epochs=1)).to_dict()
    assert report["qat_epochs"] == 1 and all(r["weight_type"] in ("int4", "int8") for r in report["layers"])
    assert all(torch.equal(before[k], v) for k, v in model.module.state_dict().items())  # the user's model untouched
    x, y = ds.split("test")
    art = run_artifact(tmp_path / "qat" / "model.tflite", x, report).argmax(1)
    assert (art == y).mean() >= report["simulated_top1"] - 0.1


def test_an_artifact_litert_cannot_load_is_refused_not_written():
    from edgempq.errors import ConversionError
    from edgempq.export.deploy import check_loads

    with pytest.raises(ConversionError, match="does not load in LiteRT"):
        check_loads(b"\0\0\0\0TFL3" + bytes(64))
