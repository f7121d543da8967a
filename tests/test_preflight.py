"""The preflight: the float model converted once and every layer matched to its op before
anything is measured; a model that cannot deploy is refused naming the PyTorch module."""

from __future__ import annotations

import pytest

from .test_cli import run

GROUPNORM = """
from torch import nn

class Att(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(1, 8, 4, 4)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        return self.head(self.attn(t, t, t)[0].mean(1))

def net():
    m = Att()
    m.input_shape = (1, 8, 8)
    return m

def groupnorm():
    m = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                      nn.Flatten(), nn.Linear(8, 3))
    m.input_shape = (1, 8, 8)
    return m

class Rank(nn.Module):
    def forward(self, x):
        return x.sort(-1).values  # ONNX TopK, which onnx2tf cannot convert here


class Sorted(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.rank = Rank()
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.rank(self.conv(x)).mean((2, 3)))

def sorter():
    m = Sorted()
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
    # GroupNorm converts written out (export.norms), MultiheadAttention rewritten (edgempq.attention)
    for name in ("plain", "groupnorm", "net"):
        ok = run("layers", "--model", f"{tmp_path / 'nets.py'}:{name}", "--check")
        assert "CONV_2D #" in ok.stdout and "FULLY_CONNECTED #" in ok.stdout and "preflight passed" in ok.stdout
    assert "attn.in_proj" in ok.stdout and "attn.out_proj" in ok.stdout
    bad = run("layers", "--model", f"{tmp_path / 'nets.py'}:sorter", "--check", check=False)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert bad.stderr.startswith("error: onnx2tf cannot convert the TopK in module 'rank' (Rank)")
    # profile runs the same check before it measures anything, and writes nothing
    out = tmp_path / "profile.json"
    bad = run("profile", "--device", "host", "--model", f"{tmp_path / 'nets.py'}:sorter", "-o", str(out), check=False)
    assert bad.returncode == 1 and "module 'rank' (Rank)" in bad.stderr and not out.exists()


@pytest.mark.slow
def test_a_layer_the_converter_folds_into_is_kept_at_f32_by_the_preflight_and_the_search(tmp_path):
    """MobileNetV3's SE gate: onnx2tf folds hard-sigmoid's x/6 into the expand conv, so its weights
    cannot carry the simulation's integers. Deploy used to refuse it after the whole search; the
    preflight finds it, the profile records it and the search keeps it at f32 by itself."""
    import json
    from dataclasses import replace
    from pathlib import Path

    from edgempq.errors import ConfigError
    from edgempq.preflight import converter_fixed
    from edgempq.schema import CostTable

    spec = f"{Path(__file__).parent / 'senet.py'}:net"
    checked = run("layers", "--model", spec, "--check")
    assert "se.expand" in checked.stdout and "the converter folds the op after it" in checked.stdout
    assert "1 more kept at f32" in checked.stdout
    out = tmp_path / "profile.json"
    prof = run("profile", "--device", "host", "--model", spec, "--layers-only", "-o", str(out))
    assert "kept at f32, the converter folds into their weights: se.expand" in prof.stdout
    table = CostTable.load(out)
    assert list(table.folded) == ["se.expand"]
    assert converter_fixed(table, set()) == (("se.expand", "f32"),)
    assert converter_fixed(table, {"se.expand"}) == ()  # the user's own --fixed wins
    doc = json.loads(out.read_text())
    doc["folded"] = {}
    with pytest.raises(ConfigError, match="does not match its checksum"):
        CostTable.from_dict(doc)  # the record is covered by the checksum: dropping it is an edit
    assert "folded" not in replace(table, folded={}).to_dict()  # profiles without any keep their old checksum
    from edgempq.schema import Precision

    ints = replace(table, target=replace(table.target, precisions={
        **table.target.precisions, "conv": (Precision.parse("w8a8"),)}))
    with pytest.raises(ConfigError, match="layer se.expand: the converter folds .* offers no float for conv layers"):
        converter_fixed(ints, set())
    from edgempq.schema import Budget, Sensitivity
    from edgempq.solve import SolveOptions, solve

    # penalties that put every layer at an integer precision: the folded one stays f32 all the same
    pen = {(la.name, str(p)): 1.0 if p.is_float else 0.0 for la in table.layers if la.searchable
           for p in table.target.allowed(la.kind)}
    sens = Sensitivity("integers-first", pen)
    free = solve(list(table.layers), sens, table, Budget(size_kb=10.0), table.target)
    policy = solve(list(table.layers), sens, table, Budget(size_kb=10.0), table.target,
                   SolveOptions(fixed=converter_fixed(table, set())))
    assert not free.precisions["se.expand"].is_float and str(policy.precisions["se.expand"]) == "f32"
    assert all(not p.is_float for n, p in policy.precisions.items() if n != "se.expand")


@pytest.mark.parametrize("norm", ["layer", "group", "group-flat"])
def test_written_out_norms_compute_what_the_modules_compute(norm):
    import torch
    from torch import nn

    from edgempq.export.norms import written_out

    torch.manual_seed(0)
    if norm == "layer":
        model, x = nn.Sequential(nn.Linear(6, 6), nn.LayerNorm(6)), torch.randn(3, 5, 6)
    elif norm == "group":
        model, x = nn.Sequential(nn.Conv2d(2, 8, 1), nn.GroupNorm(4, 8)), torch.randn(3, 2, 5, 5)
    else:  # a GroupNorm after a Linear: no spatial axes
        model, x = nn.Sequential(nn.Linear(3, 8), nn.GroupNorm(2, 8)), torch.randn(4, 3)
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 2)
        model[1].bias.uniform_(-1, 1)
        out = written_out(model)
        assert type(out[1]).__name__.startswith("Export") and isinstance(model[1], nn.LayerNorm | nn.GroupNorm)
        assert torch.allclose(out(x), model(x), atol=1e-5)
    plain = nn.Sequential(nn.Linear(2, 2))
    assert written_out(plain) is plain
