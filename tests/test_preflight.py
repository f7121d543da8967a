"""The preflight: the float model converted once and every layer matched to its op before
anything is measured; a model that cannot deploy is refused naming the PyTorch module."""

from __future__ import annotations

import pytest

from .test_cli import run

GROUPNORM = """
from torch import nn

def net():
    m = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                      nn.Flatten(), nn.Linear(8, 3))
    m.input_shape = (1, 8, 8)
    return m

def plain():
    m = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                      nn.Linear(8, 3))
    m.input_shape = (1, 8, 8)
    return m
"""

# What onnx2tf prints when a node fails (trimmed from a real run on an attention block).
ONNX2TF_LOG = """\x1b[31mERROR:\x1b[0m The trace log is below.
Traceback (most recent call last):
ValueError: Exception encountered when calling layer "tf.reshape_26" (type TFOpLambda).

Dimension size must be evenly divisible by 1024 but is 1568 for '{{node tf.reshape_26/Reshape}} = \
Reshape[T=DT_FLOAT](Placeholder, tf.reshape_26/Reshape/shape)' with input shapes: [?,32,32], [4]

Call arguments received by layer "tf.reshape_26" (type TFOpLambda):
\x1b[31mERROR:\x1b[0m input_onnx_file_path: dec.onnx
\x1b[31mERROR:\x1b[0m onnx_op_name: wa/blocks.0/attn/Reshape_1
"""


def test_the_failing_onnx_node_is_read_and_traced_back_to_its_module():
    from torch import nn

    from edgempq.export.float_graph import failed_op, module_of

    node, detail = failed_op(ONNX2TF_LOG)
    assert node == "wa/blocks.0/attn/Reshape_1"
    assert detail == "Dimension size must be evenly divisible by 1024 but is 1568 with input shapes: [?,32,32], [4]"
    model = nn.Module()
    model.blocks = nn.ModuleList([nn.Module()])
    model.blocks[0].attn = nn.MultiheadAttention(8, 2)
    assert module_of(model, node) == ("blocks.0.attn", "Reshape")
    assert module_of(model, "/Add_3") is None and module_of(model, "/nothere/Add") is None
    assert failed_op("nothing useful here") == (None, "no message")


@pytest.mark.slow
def test_layers_check_maps_every_layer_or_names_the_module_that_cannot_convert(tmp_path):
    (tmp_path / "nets.py").write_text(GROUPNORM)
    ok = run("layers", "--model", f"{tmp_path / 'nets.py'}:plain", "--check")
    assert "CONV_2D #" in ok.stdout and "FULLY_CONNECTED #" in ok.stdout and "preflight passed" in ok.stdout
    bad = run("layers", "--model", f"{tmp_path / 'nets.py'}:net", "--check", check=False)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert bad.stderr.startswith("error: onnx2tf cannot convert the InstanceNormalization in module '1' (GroupNorm)")
    # profile runs the same check before it measures anything, and writes nothing
    out = tmp_path / "profile.json"
    bad = run("profile", "--device", "host", "--model", f"{tmp_path / 'nets.py'}:net", "-o", str(out), check=False)
    assert bad.returncode == 1 and "module '1' (GroupNorm)" in bad.stderr and not out.exists()
