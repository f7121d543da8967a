"""ConvTranspose2d is a searchable kind (`tconv`): fake-quantized per output channel (its weight's
dim 1), folded with the BatchNorm after it, profiled, and deployed as the TRANSPOSE_CONV whose
integers, rounding and outputs are the simulation's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgempq.schema import Policy, Precision

from .usernet import train_as_user

NET = """
from torch import nn

class Segment(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU())
        self.dec = nn.Sequential(nn.ConvTranspose2d(16, 8, 2, 2), nn.BatchNorm2d(8), nn.ReLU(),
                                 nn.ConvTranspose2d(8, 8, 3, 2, padding=1, output_padding=1), nn.ReLU(),
                                 nn.Conv2d(8, 3, 1))

    def forward(self, x):
        return self.dec(self.enc(x))

def net():
    m = Segment()
    m.input_shape = (3, 16, 16)
    return m
"""
W8A8, W8A16 = Precision.parse("w8a8"), Precision.parse("w8a16")


def _blocks(n: int = 160) -> tuple[np.ndarray, np.ndarray]:
    """Images of 4 x 4 blocks, each of one of three colours, labelled per pixel by the colour."""
    rng = np.random.default_rng(0)
    cls = rng.integers(0, 3, (n, 4, 4))
    y = cls.repeat(4, 1).repeat(4, 2)
    x = np.eye(3, dtype=np.float32)[y].transpose(0, 3, 1, 2)
    return (x + rng.normal(0, 0.3, x.shape)).astype(np.float32), y.astype(np.int64)


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    """(model, data, paths): the encoder-decoder trained on the blocks, as a user would give it."""
    return train_as_user(tmp_path_factory.mktemp("tconv"), NET, *_blocks(), 60)


def test_transposed_convs_are_searchable_and_quantized_per_output_channel(seg):
    from edgempq.layers import trace
    from edgempq.quant import QConvTranspose2d, apply

    model, _, _ = seg
    assert model.task == "dense"
    layers = {la.name: la for la in trace(model.module, model.input_shape)}
    assert all(la.searchable for la in layers.values())
    up = layers["dec.3"]
    assert up.kind == "tconv" and up.in_shape == (8, 8, 8) and up.out_shape == (8, 16, 16)
    q = apply(model.module, Policy({"dec.3": W8A8}))
    m = q.get_submodule("dec.3")
    assert isinstance(m, QConvTranspose2d) and m.weight_quant.scale.shape == (1, 8, 1, 1)
    codes = m.weight_quant.codes(m.weight)  # each output channel's largest weight reaches 127
    assert torch.equal(codes.abs().amax((0, 2, 3)), torch.full((8,), 127))


def test_a_target_without_tconv_gives_them_its_conv_precisions_without_int4():
    from edgempq.errors import ConfigError
    from edgempq.schema import Target

    conv = tuple(Precision.parse(p) for p in ("f32", "w8a8", "w4a8", "w8a16"))
    t = Target("dev", "litert", {"conv": conv, "dwconv": conv[:2], "linear": conv[:2]})
    assert [str(p) for p in t.allowed("tconv")] == ["f32", "w8a8", "w8a16"]
    with pytest.raises(ConfigError, match="tconv cannot take w4a8: the quantizer has no int4 TRANSPOSE_CONV"):
        Target("dev", "litert", {"conv": conv, "dwconv": conv[:2], "linear": conv[:2], "tconv": conv})


@pytest.mark.slow
def test_a_mixed_tconv_policy_deploys_and_the_artifact_computes_what_was_simulated(seg, tmp_path):
    from edgempq.export.stage import DeployConfig
    from edgempq.pipeline import ValidateOptions, deploy, validate

    model, ds, paths = seg
    policy = Policy({"enc.0": W8A8, "enc.2": W8A8, "dec.0": W8A8, "dec.3": W8A16, "dec.5": W8A16})
    result = deploy(model, ds, policy, "host", tmp_path / "build",
                    DeployConfig(weights=paths["weights"], data_spec=paths["data"]))
    assert {r.layer: (r.op, r.weight_type, r.activation_type) for r in result.layers if r.layer.startswith("dec")} == {
        "dec.0": ("CONV_2D_TRANSPOSE", "int8", "int8"), "dec.3": ("CONV_2D_TRANSPOSE", "int8", "int16"),
        "dec.5": ("CONV_2D", "int8", "int16")}
    assert result.exact.layers == 5  # the folded BatchNorm's weights and the biases are the simulation's
    assert all(r["matched"] == 1.0 for r in result.output_rounding.values()), result.output_rounding
    val = validate(tmp_path / "build", "host", ValidateOptions(runs=3, find_divergence=True))
    assert val.agreement.top1 >= 0.99, val.agreement
    assert val.divergence.layer is None and len(val.divergence.layers) == 5


@pytest.mark.slow
def test_transposed_convs_are_profiled_and_run_on_the_microcontroller(seg, tmp_path):
    from edgempq.export.stage import DeployConfig
    from edgempq.layers import trace
    from edgempq.pipeline import ValidateOptions, deploy, validate
    from edgempq.profile import profile
    from edgempq.targets import load_target

    model, ds, paths = seg
    layers = trace(model.module, model.input_shape)
    table = profile([la for la in layers if la.name == "dec.3"], load_target("host"), model.model_hash)
    assert sorted(r.precision for r in table.rows) == ["f16", "f32", "w8a16", "w8a8"]
    assert all(r.latency_ms > 0 for r in table.rows)
    policy = Policy({"enc.0": W8A8, "enc.2": W8A8, "dec.0": W8A16, "dec.3": W8A8, "dec.5": W8A8})
    deploy(model, ds, policy, "tflm-host", tmp_path / "mcu", DeployConfig(weights=paths["weights"],
                                                                          data_spec=paths["data"]))
    val = validate(tmp_path / "mcu", "tflm-host", ValidateOptions(runs=1))
    assert val.agreement.top1 >= 0.99, val.agreement


def test_gptq_lowers_a_transposed_convs_output_error_below_rounding_to_nearest(seg):
    """GPTQ sees a transposed conv as the conv it equals on its zero-inserted input: were its
    columns or weight matrix laid out wrongly, its error-compensating updates would hurt."""
    from edgempq.quant import QuantConfig, quantize

    model, ds, _ = seg
    x = ds.split("train")[0][:96]
    policy = Policy({"dec.0": Precision.parse("w3a16"), "dec.3": Precision.parse("w3a16")})
    with torch.no_grad():
        ref = model.module(torch.from_numpy(x))
        errors = {}
        for w in ("minmax", "gptq"):
            q, _ = quantize(model.module, policy, x, QuantConfig(weights=w, bias_correction=False))
            errors[w] = float((q(torch.from_numpy(x)) - ref).pow(2).mean() / ref.pow(2).mean())
    assert errors["gptq"] < 0.7 * errors["minmax"], errors


def test_the_preflight_refuses_a_dilated_transposed_conv_before_converting_anything():
    from torch import nn

    from edgempq.errors import ConversionError
    from edgempq.layers import trace
    from edgempq.preflight import preflight

    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ConvTranspose2d(8, 4, 3, dilation=2), nn.Conv2d(4, 2, 1)).eval()
    layers = trace(m, (3, 8, 8))
    assert "dilated transposed convolution" in layers[1].fixed_reason
    with pytest.raises(ConversionError, match=r"module '1' \(ConvTranspose2d\): a dilated transposed convolution "
                                              r".* replace it, e.g. by upsampling and a dilated Conv2d"):
        preflight(m, (3, 8, 8), layers)
