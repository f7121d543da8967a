"""The artifact carries the simulation's integers bit for bit: weights, per-channel scales and
zero points, bias; deploy refuses an artifact that does not, naming the layer."""

from __future__ import annotations

import json
import textwrap
from dataclasses import replace

import numpy as np
import pytest
import torch

from edgempq.errors import ConversionError
from edgempq.schema import Policy, Precision

from .usernet import trained_user_model

# w4 and w8 weights, 8- and 16-bit activations, float layers between them
MIXED = {"stem.0": "w8a8", "a.0": "w8a8", "a.3": "w4a8", "b.0": "w8a16", "b.3": "w4a16", "down": "w4a8",
         "c.0": "f32", "c.3": "w8a8", "d.0": "w8a8", "d.3": "f16", "fc": "w4a8"}
KINDS = {"a.0": "dwconv", "b.0": "dwconv", "c.0": "dwconv", "d.0": "dwconv", "fc": "linear"}


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    from edgempq.export.stage import DeployConfig
    from edgempq.pipeline import deploy
    from edgempq.quant import QuantConfig

    folder = tmp_path_factory.mktemp("exact")
    model, ds, _ = trained_user_model(folder)
    policy = Policy({k: Precision.parse(v) for k, v in MIXED.items()})
    cfg = DeployConfig(QuantConfig(weights="gptq", bias_correction=True))
    report = deploy(model, ds, policy, "host", folder / "build", cfg).to_dict()  # as deploy.json holds it
    return model, ds, policy, folder / "build", report


def _flatbuffer(path):
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    m = fu.read_model(bytearray(path.read_bytes()))
    return m, m.subgraphs[0]


def _ints(m, t) -> np.ndarray:
    raw = np.frombuffer(bytes(np.asarray(m.buffers[t.buffer].data, np.uint8)), np.uint8)
    if t.type == 17:  # int4, two a byte, low nibble first
        v = np.stack([raw & 15, raw >> 4], 1).reshape(-1)[: int(np.prod(t.shape))].astype(np.int64)
        return np.where(v > 7, v - 16, v).reshape(tuple(t.shape))
    dtype = {9: np.int8, 2: np.int32, 4: np.int64}[t.type]
    return np.frombuffer(raw.tobytes(), dtype).astype(np.int64).reshape(tuple(t.shape))


def _simulation(model, policy, folder):
    from edgempq.quant import QuantConfig
    from edgempq.simulation import simulated_model

    deploy = json.loads((folder / "deploy.json").read_text())
    state = torch.load(folder / "simulation.pt", weights_only=True)
    return simulated_model(model, policy, state, QuantConfig.from_dict(deploy["quant_config"]))


@pytest.mark.slow
def test_every_integer_layer_of_a_mixed_policy_stores_the_simulations_integers(deployed):
    model, _, policy, folder, report = deployed
    q = _simulation(model, policy, folder)
    m, sg = _flatbuffer(folder / "model.tflite")
    ops = {r["layer"]: r for r in report["layers"]}
    ints = [n for n, p in policy.precisions.items() if not p.is_float]
    assert report["exact"]["layers"] == len(ints) == 9
    by_output = {sg.tensors[op.outputs[0]].name.decode(): op for op in sg.operators}
    for name in ints:
        mod = q.get_submodule(name)
        op = by_output[ops[name]["op_output"]]
        x, w, b = (sg.tensors[i] for i in op.inputs[:3])
        codes = mod.weight_quant.codes(mod.weight).numpy()
        kind = KINDS.get(name, "conv")
        want = codes if kind == "linear" else codes.transpose((0, 2, 3, 1) if kind == "conv" else (1, 2, 3, 0))
        assert np.array_equal(_ints(m, w), want), name
        assert np.array_equal(np.asarray(w.quantization.scale, np.float32),
                              mod.weight_quant.step_value().reshape(-1).numpy()), name
        assert not np.any(np.asarray(w.quantization.zeroPoint)), name
        assert np.array_equal(_ints(m, b), mod.bias_codes().numpy()), name
        assert {9: 8, 17: 4}[w.type] == policy.precisions[name].weight_bits
        assert {2: 8, 4: 16}[b.type] == policy.precisions[name].act_bits  # int64 bias beside 16-bit inputs
        s_in, z_in = float(np.float32(x.quantization.scale[0])), int(x.quantization.zeroPoint[0])
        assert s_in == float(mod.act_quant.step_value()) and z_in == int(mod.act_quant.zero_point), name


@pytest.mark.slow
def test_the_artifact_computes_what_was_simulated(deployed):
    from ai_edge_litert.interpreter import Interpreter

    from edgempq.export.skips import wrap

    model, ds, policy, folder, report = deployed
    q = wrap(_simulation(model, policy, folder), report["skip_rounding"])
    x, _ = ds.split("test")
    with torch.no_grad():
        sim = q(torch.from_numpy(x)).numpy()
    runner = Interpreter(model_path=str(folder / "model.tflite")).get_signature_runner()
    inp, out = report["input"], report["output"]
    art = []
    for s in x:
        v = s.transpose(1, 2, 0)[None].astype(np.float32)
        if inp["dtype"] != "float32":
            v = np.clip(np.round(v / inp["scale"] + inp["zero_point"]), -128, 127).astype(np.int8)
        o = runner(**{inp["name"]: v})[out["name"]][0].astype(np.float32)
        art.append(o if out["dtype"] == "float32" else (o - out["zero_point"]) * out["scale"])
    art = np.array(art)
    from edgempq.export.deploy import output_levels

    sim = output_levels(sim, out)  # the simulation read as the artifact's output type
    if out["dtype"] != "float32":  # then every simulated logit lies on the artifact's output grid
        steps = sim / out["scale"] + out["zero_point"]
        assert np.abs(steps - np.round(steps)).max() < 1e-3
    assert (art.argmax(1) == sim.argmax(1)).all()
    # weights, biases, ranges, each layer's output rounding and the residual adds' grids agree
    # exactly; what is left is the ADD ops' own fixed-point rounding: a logit here and there a step off
    steps_off = np.abs(art - sim) / out["scale"]
    assert steps_off.max() <= 1.001 and np.mean(steps_off > 0.5) <= 0.02, (steps_off.max(), np.mean(steps_off > 0.5))
    assert report["simulated_top1"] == pytest.approx(float((sim.argmax(1) == ds.split("test")[1]).mean()))


@pytest.mark.slow
def test_values_carried_into_the_artifact_read_back_and_a_differing_one_is_refused_naming_the_layer(deployed):
    from edgempq.export.exact import LayerValues, carry, check, simulation_values

    model, _, policy, folder, report = deployed
    q = _simulation(model, policy, folder)
    data = (folder / "model.tflite").read_bytes()
    m, sg = _flatbuffer(folder / "model.tflite")
    by_output = {sg.tensors[op.outputs[0]].name.decode(): i for i, op in enumerate(sg.operators)}
    ops = {r["layer"]: by_output[r["op_output"]] for r in report["layers"] if r["layer"] in ("down", "a.0")}
    values = {n: simulation_values(q.get_submodule(n), KINDS.get(n, "conv")) for n in ops}
    assert all(v["exact"] for v in check(data, ops, values).values())
    # another set of integers written by carry is read back as written (int4 conv, int8 depthwise) ...
    other = {n: LayerValues(np.clip(-v.codes, -8 if n == "down" else -127, 7 if n == "down" else 127), v.scale * 2,
                            v.axis, v.bias + 3, v.bias_scale) for n, v in values.items()}
    rewritten = carry(data, ops, other)
    assert all(v["exact"] for v in check(rewritten, ops, other).values())
    m2 = _flatbuffer_bytes(rewritten)
    w = m2.subgraphs[0].tensors[m2.subgraphs[0].operators[ops["down"]].inputs[1]]
    assert w.type == 17 and np.array_equal(_ints(m2, w), other["down"].codes)
    # ... and against the simulation it is refused, naming the layer
    with pytest.raises(ConversionError, match=r"layer (down|a\.0): \d+ of \d+ integer weights differ from the "
                                              "simulation's"):
        check(rewritten, ops, values)
    one = {"down": LayerValues(values["down"].codes, values["down"].scale, 0, values["down"].bias + 1,
                               values["down"].bias_scale)}
    with pytest.raises(ConversionError, match="layer down: .* bias integers differ"):
        check(data, {"down": ops["down"]}, one)


def _flatbuffer_bytes(data: bytes):
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    return fu.read_model(bytearray(data))


POOLED = textwrap.dedent("""
    import torch.nn as nn

    def net():
        m = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                          nn.Linear(16 * 2 * 2, 3))
        return m
    net.input_shape = (1, 8, 8)
""")


@pytest.mark.slow
def test_pooling_between_layers_keeps_artifact_and_simulation_together(tmp_path):
    """Max pooling passes values on, so the next layer's range is set through it; average pooling
    takes its input's scale in the quantizer, so there the simulation takes the artifact's."""
    from edgempq.export.stage import DeployConfig
    from edgempq.pipeline import ValidateOptions, deploy, load_model_and_data, validate

    (tmp_path / "pooled.py").write_text(POOLED)
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 60)
    x = (rng.normal(size=(180, 1, 8, 8)) * 0.5 + y[:, None, None, None] * np.linspace(-1, 1, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    torch.manual_seed(0)
    spec, data = f"{tmp_path / 'pooled.py'}:net", str(tmp_path / "d.npz")
    model, ds = load_model_and_data(spec, data)
    opt = torch.optim.Adam(model.module.parameters(), 1e-2)
    xt, yt = (torch.from_numpy(a) for a in ds.split("train"))
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model.module.train()(xt), yt.long()).backward()
        opt.step()
    torch.save(model.module.eval().state_dict(), tmp_path / "w.pt")
    model, ds = load_model_and_data(spec, data, tmp_path / "w.pt")
    policy = Policy({"0": Precision.parse("w8a8"), "4": Precision.parse("w4a8"), "8": Precision.parse("w8a8")})
    cfg = DeployConfig(weights=tmp_path / "w.pt", data_spec=data)
    report = deploy(model, ds, policy, "host", tmp_path / "build", cfg)
    ranges = report.input_ranges
    assert ranges["0"]["from"] == "simulation" and ranges["4"]["from"] == "simulation"  # through MAX_POOL_2D
    assert ranges["8"]["from"] == "artifact" and ranges["8"]["scale_change"] > 0.01  # after AVERAGE_POOL_2D
    assert report.exact.layers == 3
    val = validate(tmp_path / "build", "host", ValidateOptions(runs=1))
    assert val.agreement.top1 >= 0.99, val.agreement


@pytest.mark.slow
def test_the_artifact_takes_the_simulations_activation_ranges_whatever_their_calibration(tmp_path):
    from edgempq.export.stage import DeployConfig
    from edgempq.pipeline import deploy
    from edgempq.quant import QuantConfig
    from edgempq.simulation import quantized

    model, ds, _ = trained_user_model(tmp_path)
    policy = Policy({k: Precision.parse(v) for k, v in MIXED.items()})
    cfg = QuantConfig(act_method="percentile", percentile=99.0)
    own, _ = quantized(model, ds, policy, cfg)  # the simulation's own ranges, before deploy
    report = deploy(model, ds, policy, "host", tmp_path / "build", DeployConfig(cfg))
    ranges = report.input_ranges
    assert set(ranges) == {n for n, p in policy.precisions.items() if not p.is_float}
    for name, r in ranges.items():
        aq = own.get_submodule(name).act_quant
        # the quantizer derived them from the simulation's clipped ranges (not its own min-max)
        assert r["scale"] == pytest.approx(float(aq.step_value()), rel=1e-5), name
        assert abs(r["zero_point_change"]) <= 1 and r["scale_change"] < 1e-5, name
    assert report.quant_config["act_method"] == "percentile"


def test_output_levels_round_to_the_artifacts_integer_output_and_leave_a_float_one():
    from edgempq.export.deploy import output_levels

    v = np.array([[-20.0, -0.25, 0.25, 0.74, 0.76, 80.0]], np.float32)
    q = output_levels(v, {"dtype": "int8", "scale": 0.5, "zero_point": -10})
    # ±0.5 steps round away from zero, as the kernels do; 80 is q=150, clamped to 127: (127 + 10) x 0.5
    assert q.tolist() == [[-20.0, -0.5, 0.5, 0.5, 1.0, 68.5]]
    assert output_levels(v, {"dtype": "float32", "scale": 0.0, "zero_point": 0}) is v


@pytest.mark.slow
def test_each_integer_ops_output_rounding_is_measured_and_reproduced(deployed):
    """LiteRT's kernels round their outputs in different ways (int4 convs twice, int8 ones to
    nearest, 16x8 ones with a 16-bit multiplier): deploy measures each op's rule, and with it the
    simulated layer's output is the artifact op's, value for value, from the op's own inputs."""
    from edgempq.divergence import artifact_outputs, simulated_outputs
    from edgempq.export.skips import wrap
    from edgempq.quant.requant import RULES

    model, ds, policy, folder, report = deployed
    rounding = report["output_rounding"]
    ints = [n for n, p in policy.precisions.items() if not p.is_float]
    assert sorted(rounding) == sorted(ints)
    for name in ints:
        r = rounding[name]
        assert r["matched"] == 1.0 and r["values"] > 0 and r["rule"] in RULES, (name, r)
    q = _simulation(model, policy, folder)
    assert all(q.get_submodule(n).out_quant.rule_name == rounding[n]["rule"] for n in ints)  # saved, loaded
    x = ds.split("test")[0][:16]
    m, sg = _flatbuffer(folder / "model.tflite")
    names = [t.name.decode() for t in sg.tensors]
    reader = {names[i]: names[op.outputs[0]] for op in sg.operators for i in op.inputs if i >= 0}
    rows = [r for r in report["layers"] if r["layer"] in ints]
    # a layer whose output a QUANTIZE op converts (16-bit to 8-bit here) is compared after it
    seen = {r["layer"]: reader[r["op_output"]] if rounding[r["layer"]]["output_grid"] else r["op_output"]
            for r in rows}
    assert sum(bool(rounding[n]["output_grid"]) for n in ints) == 1  # b.3, w4a16, read by an 8-bit add
    assert sum(bool(rounding[n]["input_grid"]) for n in ints) == 1  # b.0, w8a16, after an 8-bit add
    art = artifact_outputs((folder / "model.tflite").read_bytes(), x.transpose(0, 2, 3, 1), list(seen.values()))
    # With the residual adds rounded as the artifact's ADD ops write them, every value but a few
    # (the ADD and QUANTIZE ops' own fixed-point rounding) is the artifact's, layer after layer
    kinds = sorted(g["kind"] for g in report["skip_rounding"].values())
    assert kinds == ["add"] * 4 + ["float layer"] * 2 and not report["skip_notes"]  # blocks a-d; c.0, d.3
    sim = simulated_outputs(wrap(q, report["skip_rounding"]), x, [r["layer"] for r in rows])
    for r in rows:
        grid = rounding[r["layer"]]["output_grid"]
        step = grid[0] if grid else rounding[r["layer"]]["scale"]
        differ = np.abs(art[seen[r["layer"]]] - sim[r["layer"]]) > step / 2
        assert differ.mean() <= 0.01, (r["layer"], differ.mean())


@pytest.mark.slow
def test_a_simulation_saved_without_output_rounding_takes_it_from_the_artifact(deployed, tmp_path):
    """Deploy folders written before output rounding was measured still validate: validate
    measures it on the artifact and says so."""
    import shutil

    from edgempq.pipeline import ValidateOptions, validate

    _, _, _, folder, _ = deployed
    old = tmp_path / "old"
    shutil.copytree(folder, old)
    state = torch.load(old / "simulation.pt", weights_only=True)
    torch.save({k: v for k, v in state.items() if ".out_quant." not in k}, old / "simulation.pt")
    info = json.loads((old / "deploy.json").read_text())
    import hashlib

    from edgempq.schema.core import canonical_sha256

    info.pop("document_sha256")
    info["sha256"]["simulation.pt"] = hashlib.sha256((old / "simulation.pt").read_bytes()).hexdigest()
    (old / "deploy.json").write_text(json.dumps(info | {"document_sha256": canonical_sha256(info)}))
    given = ValidateOptions(model=f"{folder.parent / 'net.py'}:net", data=str(folder.parent / "d.npz"),
                            weights=folder.parent / "w.pt", runs=1)
    val = validate(old, "host", given)
    skips = "4 residual add(s) and 2 float layer output(s) rounded as in the artifact"
    assert val.simulation == f"saved by deploy; output rounding measured on the artifact; {skips}"
    assert val.agreement.top1 == 1.0
    fresh = validate(folder, "host", replace(given, out_dir=tmp_path / "fresh"))
    assert fresh.simulation == f"saved by deploy; {skips}"
    assert fresh.agreement.max_logit_error == pytest.approx(val.agreement.max_logit_error)


@pytest.mark.slow
def test_another_policy_is_simulated_without_the_artifacts_rounding(deployed, tmp_path):
    """validate --policy with another policy compares the artifact with that policy's own
    simulation: the artifact's grids belong to the deployed policy and are not lent to it."""
    from edgempq.pipeline import ValidateOptions, validate

    _, _, policy, folder, _ = deployed
    other = Policy({**policy.precisions, "a.3": Precision.parse("w8a8")})
    other.save(tmp_path / "other.json")
    val = validate(folder, "host", ValidateOptions(model=f"{folder.parent / 'net.py'}:net",
                                                   data=str(folder.parent / "d.npz"), weights=folder.parent / "w.pt",
                                                   policy=tmp_path / "other.json", runs=1, out_dir=tmp_path / "v"))
    assert val.simulation == "calibrated again (PTQ)"
