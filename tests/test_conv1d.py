"""Conv1d is a searchable kind: traced with its 1-D shapes, fake-quantized, profiled and deployed
as the CONV_2D of height 1 TFLite runs, and the artifact computes what was simulated."""

from __future__ import annotations

import numpy as np
import pytest

from edgempq.schema import Policy, Precision

from .usernet import train_as_user

NET = """
from torch import nn

def net():
    m = nn.Sequential(nn.Conv1d(2, 8, 5, padding=2), nn.BatchNorm1d(8), nn.ReLU(),
                      nn.Conv1d(8, 8, 3, stride=2, padding=1, groups=8), nn.ReLU(),
                      nn.Conv1d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
                      nn.Linear(16, 4))
    m.input_shape = (2, 64)
    return m
"""


def _signals(n: int = 240) -> tuple[np.ndarray, np.ndarray]:
    """Four classes of two-channel signals: a sine of the class's frequency, and noise."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), n // 4)
    t = np.linspace(0, 1, 64)
    x = np.stack([np.stack([np.sin(2 * np.pi * 2 * (k + 1) * t + rng.uniform(0, 6)), rng.normal(0, 0.3, 64)])
                  for k in y])
    return (x + rng.normal(0, 0.2, x.shape)).astype(np.float32), y


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    """(model, data, paths): the 1-D net trained on the signals, as a user would give them."""
    return train_as_user(tmp_path_factory.mktemp("conv1d"), NET, *_signals(), 80)


def test_conv1d_layers_are_searchable_and_a_grouped_one_says_why_not(audio):
    from edgempq.layers import trace

    model, ds, _ = audio
    assert ds.sample_shape == (2, 64)
    layers = {la.name: la for la in trace(model.module, model.input_shape)}
    assert [n for n, la in layers.items() if la.searchable] == ["0", "5", "9"]
    assert layers["0"].kind == "conv" and layers["0"].in_shape == (2, 64) and layers["0"].macs == 64 * 8 * 2 * 5
    assert "grouped Conv1d" in layers["3"].fixed_reason


@pytest.mark.slow
def test_a_mixed_conv1d_policy_deploys_and_the_artifact_computes_what_was_simulated(audio, tmp_path):
    from edgempq.export.stage import DeployConfig
    from edgempq.pipeline import ValidateOptions, deploy, validate

    model, ds, paths = audio
    policy = Policy({"0": Precision.parse("w8a8"), "5": Precision.parse("w4a8"), "9": Precision.parse("w8a8")})
    result = deploy(model, ds, policy, "host", tmp_path / "build",
                    DeployConfig(weights=paths["weights"], data_spec=paths["data"]))
    assert result.input.shape == (1, 64, 2)  # the artifact takes N x L x C
    assert {r.layer: (r.op, r.weight_type) for r in result.layers} == {
        "0": ("CONV_2D", "int8"), "5": ("CONV_2D", "int4"), "9": ("FULLY_CONNECTED", "int8")}
    assert result.exact.layers == 3 and all(r["matched"] == 1.0 for r in result.output_rounding.values())
    from edgempq.export.recipe import weight_ops

    ops = weight_ops((tmp_path / "build" / "model.tflite").read_bytes())  # the grouped Conv1d stays float, as listed
    assert [(o.weight_shape, o.weight_type, o.act_type) for o in ops if o.weight_type == "float32"] == [
        ((8, 1, 3, 1), "float32", "float32")]
    assert result.float_top1 > 0.9 and result.simulated_top1 > result.float_top1 - 0.05
    val = validate(tmp_path / "build", "host", ValidateOptions(runs=3, find_divergence=True))
    assert val.agreement.top1 >= 0.99, val.agreement
    assert val.divergence.layer is None and len(val.divergence.layers) == 3


@pytest.mark.slow
def test_conv1d_layers_are_profiled_as_the_conv_the_artifact_runs(audio):
    from edgempq.layers import trace
    from edgempq.profile import profile
    from edgempq.targets import load_target

    model, _, _ = audio
    layers = trace(model.module, model.input_shape)
    table = profile(layers, load_target("host"), model.model_hash)
    measured = {(r.signature, r.precision) for r in table.rows}
    for la in layers:
        if la.searchable:
            assert (la.signature, "w4a8") in measured or la.kind == "linear", la.name
    assert all(r.latency_ms > 0 for r in table.rows)
