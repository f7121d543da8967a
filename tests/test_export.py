"""Whole-model export for profiling: layer <-> op mapping, per-layer recipes checked in the
flatbuffer, uniform timings and overheads (real onnx2tf, ai-edge-quantizer and LiteRT)."""

from __future__ import annotations

import pytest

from edgempq.errors import ConversionError
from edgempq.export.float_graph import float_tflite
from edgempq.export.mapping import map_layers, torch_weights
from edgempq.export.mixed import quantize_policy
from edgempq.export.recipe import weight_ops
from edgempq.layers import trace
from edgempq.models import load_model
from edgempq.schema import Precision
from edgempq.targets import load_target


@pytest.fixture(scope="module")
def resnet8():
    m = load_model("zoo:mnist_resnet8")
    layers = trace(m.module, m.input_shape)
    return m, layers, float_tflite(m.module, m.input_shape)


@pytest.mark.slow
def test_layers_map_to_their_ops_even_when_the_converter_reorders_them(resnet8):
    m, layers, fl = resnet8
    mapping = map_layers(layers, fl, torch_weights(m.module, layers))
    assert set(mapping) == {la.name for la in layers}
    order = [mapping[la.name].index for la in layers]
    assert order != sorted(order)  # onnx2tf moved the downsample convs: order alone would be wrong
    assert mapping["layer2.0.downsample.0"].weight_shape == (32, 1, 1, 16)


@pytest.mark.slow
def test_mixed_policy_lands_layer_by_layer_in_the_flatbuffer(resnet8):
    m, layers, fl = resnet8
    names = [la.name for la in layers]
    cycle = ["w8a8", "w4a8", "f32", "w8a16", "f16"]
    pol = {n: Precision.parse(cycle[i % len(cycle)]) for i, n in enumerate(names)}
    out = quantize_policy(layers, fl, pol, torch_weights(m.module, layers))
    found = {o.output_name: (o.weight_type, o.act_type) for o in weight_ops(out)}
    mapping = map_layers(layers, fl, torch_weights(m.module, layers))
    expect = {"w8a8": ("int8", "int8"), "w4a8": ("int4", "int8"), "f32": ("float32", "float32"),
              "w8a16": ("int8", "int16"), "f16": ("float16", "float32")}
    for n in names:
        assert found[mapping[n].output_name] == expect[str(pol[n])], n


@pytest.mark.slow
def test_a_precision_the_quantizer_cannot_give_is_refused_not_silently_float():
    m = load_model("zoo:mnist_mobilenet")
    layers = trace(m.module, m.input_shape)
    fl = float_tflite(m.module, m.input_shape)
    pol = {la.name: Precision.parse("w8a8") for la in layers}
    dw = next(la.name for la in layers if la.kind == "dwconv")
    pol[dw] = Precision.parse("w4a8")
    want = f"layer {dw}: asked for w4a8 but the quantizer cannot give a DEPTHWISE_CONV_2D"
    with pytest.raises(ConversionError, match=want):
        quantize_policy(layers, fl, pol, torch_weights(m.module, layers))


def _profiled(name: str, tmp_path, monkeypatch):
    """A zoo model's layers and its profile on `host`, whole-model timings included."""
    from edgempq.profile import WholeModel, profile

    monkeypatch.setenv("EDGEMPQ_CACHE", str(tmp_path))
    m = load_model(name)
    layers = trace(m.module, m.input_shape)
    return layers, profile(layers, load_target("host"), m.model_hash, whole=WholeModel(m.module, m.input_shape))


def _assert_uniform_policies_predict_their_measurement(layers, table) -> None:
    from edgempq.assign import uniform_assignment
    from edgempq.latency import predict_latency

    for p, ms in table.whole_ms.items():
        # the fit solves the scales last, so that the uniform policies stay exact
        assert predict_latency(table, uniform_assignment(layers, table.target, p)) == pytest.approx(ms, rel=1e-6)


@pytest.mark.slow
def test_whole_model_timings_give_overheads_that_close_the_sum(tmp_path, monkeypatch):
    layers, table = _profiled("zoo:mnist_resnet8", tmp_path, monkeypatch)
    assert set(table.whole_ms) == {"f32", "f16", "w8a8", "w4a8", "w8a16", "w4a16"}
    _assert_uniform_policies_predict_their_measurement(layers, table)


@pytest.mark.slow
def test_uniform_policies_with_depthwise_fallbacks_are_predicted_exactly(tmp_path, monkeypatch):
    from edgempq.assign import uniform_assignment

    layers, table = _profiled("zoo:mnist_mobilenet", tmp_path, monkeypatch)
    w4a8 = uniform_assignment(layers, table.target, "w4a8")
    assert {str(p) for p in w4a8.values()} == {"w4a8", "w8a8"}  # depthwise convs fall back to int8
    _assert_uniform_policies_predict_their_measurement(layers, table)


@pytest.mark.slow
def test_every_linear_precision_of_each_target_lands_in_the_flatbuffer_and_mismatches_are_named():
    import torch
    from torch import nn

    torch.manual_seed(0)
    widths = [12, 11, 10, 9, 8, 7, 6]
    mlp = nn.Sequential(*[nn.Sequential(nn.Linear(a, b), nn.ReLU()) for a, b in zip(widths, widths[1:], strict=False)])
    layers = trace(mlp, (12,))
    fl = float_tflite(mlp, (12,))
    weights = torch_weights(mlp, layers)
    mapping = map_layers(layers, fl, weights)
    for target in ("host", "tflm-host"):
        allowed = [str(p) for p in load_target(target).allowed("linear")]
        pol = {la.name: Precision.parse(allowed[i % len(allowed)]) for i, la in enumerate(layers)}
        found = {o.output_name: o for o in weight_ops(quantize_policy(layers, fl, pol, weights))}
        for la in layers:
            got = found[mapping[la.name].output_name]
            assert (got.weight_type, got.act_type) == {
                "f32": ("float32", "float32"), "f16": ("float16", "float32"), "w8a8": ("int8", "int8"),
                "w4a8": ("int4", "int8"), "w8a16": ("int8", "int16"), "w4a16": ("int4", "int16")}[str(pol[la.name])]
    # a layer of another model has no op here; two layers with the same weights cannot be told apart
    stranger = trace(nn.Sequential(nn.Linear(12, 5)), (12,))
    with pytest.raises(ConversionError, match=r"layer 0 \(linear, weight .*\) has no matching"):
        map_layers(stranger, fl)
    twins = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 6))
    twins[2].load_state_dict(twins[0].state_dict())
    tl = trace(twins, (6,))
    with pytest.raises(ConversionError, match="2 ops of the converted model carry its weights"):
        map_layers(tl, float_tflite(twins, (6,)), torch_weights(twins, tl))


def test_the_model_input_and_output_stay_float_beside_float_boundary_layers():
    from edgempq.export.mixed import policy_rules
    from edgempq.export.recipe import OpInfo

    ops = {name: OpInfo(i, "CONV_2D", f"t{i}", "float32", "float32", 0) for i, name in enumerate(("a", "b", "c"))}

    def ends(**precisions):
        rules = policy_rules(ops, {k: Precision.parse(v) for k, v in precisions.items()})
        return {r.op: str(r.precision) for r in rules if r.op in ("INPUT", "OUTPUT")}

    assert ends(a="f16", b="w8a8", c="f32") == {"INPUT": "f32", "OUTPUT": "f32"}
    assert ends(a="w8a8", b="f32", c="w4a8") == {}  # integer I/O: the layers quantize anyway
    assert ends(a="w8a16", b="w8a8", c="f16") == {"OUTPUT": "f32"}
    assert ends(a="f32", b="f32", c="f32") == {}  # nothing is quantized at all
    # op order, not policy order, says which layer is nearest the input
    ops["a"], ops["c"] = ops["c"], ops["a"]
    assert ends(a="w8a8", b="w8a8", c="f16") == {"INPUT": "f32"}


@pytest.mark.slow
def test_fixed_layers_ops_stay_float_in_the_artifact_as_the_layer_list_says():
    """A grouped conv is listed as kept float; the quantizer's catch-all int8 used to quantize
    its op anyway, so the artifact ran what the simulation did not. A transposed conv is a
    searchable layer whose TRANSPOSE_CONV takes its precision."""
    from torch import nn

    from edgempq.schema.core import Precision as P

    m = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 1, 1, groups=2), nn.ReLU(),
                      nn.ConvTranspose2d(8, 4, 2, 2), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    layers = trace(m, (3, 16, 16))
    assert [la.name for la in layers if not la.searchable] == ["2"]
    precisions = {"0": P(8, 8), "4": P(8, 16), "6": P(8, 8)}
    q = quantize_policy(layers, float_tflite(m, (3, 16, 16)), precisions,
                        torch_weights(m, layers), fixed_weights=torch_weights(m, layers, fixed=True))
    assert [(o.op, o.weight_shape, o.weight_type, o.act_type) for o in weight_ops(q)] == [
        ("CONV_2D", (8, 3, 3, 3), "int8", "int8"), ("CONV_2D", (8, 3, 3, 4), "float32", "float32"),
        ("CONV_2D_TRANSPOSE", (4, 2, 2, 8), "int8", "int16"), ("CONV_2D", (2, 1, 1, 4), "int8", "int8")]
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    model = fu.read_model(bytearray(q))
    sg = model.subgraphs[0]
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]
    tconv = [op for op in sg.operators if codes[op.opcodeIndex] == 67]  # TRANSPOSE_CONV
    assert len(tconv) == 1 and sg.tensors[tconv[0].inputs[2]].type == 7  # its activation (third input) int16


@pytest.mark.slow
def test_a_layer_called_twice_keeps_every_op_float():
    """A Linear called twice is fixed ("called 2 times"); both of its ops stay float."""
    from torch import nn

    from edgempq.schema.core import Precision as P

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.shared, self.head = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 2)

        def forward(self, x):
            return self.head(self.shared(torch.relu(self.shared(self.a(x)))))

    import torch

    m = Twice().eval()
    layers = trace(m, (8,))
    assert [la.name for la in layers if not la.searchable] == ["shared"]
    q = quantize_policy(layers, float_tflite(m, (8,)), {la.name: P(8, 8) for la in layers if la.searchable},
                        torch_weights(m, layers), fixed_weights=torch_weights(m, layers, fixed=True))
    assert sorted(o.weight_type for o in weight_ops(q)) == ["float32", "float32", "int8", "int8"]


@pytest.mark.slow
def test_a_model_over_256_kib_of_weights_keeps_them_inside_the_flatbuffer_where_tflite_micro_reads_them():
    """ai-edge-quantizer stores large buffers after the flatbuffer once they pass 256 KiB; TFLite
    Micro ignores such buffers and computed with whatever its arena held (and planned the weights
    in the arena: 414 KB here instead of 10 KB)."""
    import numpy as np
    import torch
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.interpreter import Interpreter
    from torch import nn

    from edgempq.assign import uniform_assignment
    from edgempq.backends import backend_for

    torch.manual_seed(0)
    module = nn.Sequential(nn.Flatten(), nn.Linear(640, 320), nn.ReLU(), nn.Linear(320, 640)).eval()
    layers = trace(module, (1, 1, 640))
    target = load_target("tflm-host")
    model = quantize_policy(layers, float_tflite(module, (1, 1, 640)), uniform_assignment(layers, target, "w8a8"),
                            torch_weights(module, layers), fixed_weights=torch_weights(module, layers, fixed=True))
    root = schema.Model.GetRootAsModel(model, 0)
    assert all(root.Buffers(i).Offset() <= 1 for i in range(root.BuffersLength()))
    it = Interpreter(model_content=model)
    it.allocate_tensors()
    d = it.get_input_details()[0]
    x = np.random.default_rng(0).integers(-128, 128, d["shape"]).astype(d["dtype"])
    it.set_tensor(d["index"], x)
    it.invoke()
    want = it.get_tensor(it.get_output_details()[0]["index"]).astype(int)
    with backend_for(target) as backend:
        got = np.asarray(backend.run(model, [x])[0]).astype(int)
        assert backend.ram_bytes(model) < 64 * 1024
    assert np.abs(got - want).max() <= 1
