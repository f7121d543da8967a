"""nn.MultiheadAttention rewritten as four Linear projections: the same function for every way
MultiheadAttention is called, its weights under their own names, and its projections searchable
layers of the trace and of torch.fx's graph."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from edgempq.attention import Attention, rewritable, saved_state, unfused

E = 24


def _same(mha: nn.MultiheadAttention, q, k, v, **kw) -> None:
    mha.eval()
    a = Attention(mha).eval()
    want, got = mha(q, k, v, **kw), a(q, k, v, **kw)
    torch.testing.assert_close(got[0], want[0], atol=1e-6, rtol=1e-5)
    if want[1] is None:
        assert got[1] is None
    else:
        torch.testing.assert_close(got[1], want[1], atol=1e-6, rtol=1e-5)
    mine, theirs = saved_state(a), mha.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[n], theirs[n]) for n in theirs)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("kw", [{}, {"need_weights": False}, {"average_attn_weights": False}])
def test_the_rewrite_computes_what_multihead_attention_computes(batch_first, kw):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(E, 3, batch_first=batch_first)
    x = torch.randn(2, 7, E) if batch_first else torch.randn(7, 2, E)
    _same(mha, x, x, x, **kw)


def test_masks_cross_attention_own_widths_no_bias_and_unbatched_inputs():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(E, 4, kdim=10, vdim=12, batch_first=True)
    _same(mha, torch.randn(2, 5, E), torch.randn(2, 6, 10), torch.randn(2, 6, 12))
    mha = nn.MultiheadAttention(E, 4, bias=False, batch_first=True)
    x = torch.randn(2, 7, E)
    causal = torch.ones(7, 7, dtype=torch.bool).triu(1)
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[0, 5:] = True
    for kw in ({"attn_mask": causal}, {"attn_mask": causal, "is_causal": True}, {"attn_mask": torch.randn(7, 7)},
               {"attn_mask": torch.randn(8, 7, 7)}, {"key_padding_mask": pad},
               {"attn_mask": causal, "key_padding_mask": pad}):
        _same(mha, x, x, x, **kw)
    _same(mha, x[0], x[0], x[0])
    _same(mha, x[0], x[0], x[0], key_padding_mask=pad[0])


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, E)
        self.attn = nn.MultiheadAttention(E, 2, batch_first=True)
        self.head = nn.Linear(E, 3)

    def forward(self, x):
        t = self.embed(x)
        return self.head(self.attn(t, t, t, need_weights=False)[0].mean(1))


def test_a_users_weights_load_into_the_rewrite_and_its_weights_load_into_theirs():
    torch.manual_seed(0)
    theirs = _Block().eval()
    mine = unfused(copy.deepcopy(theirs))
    assert isinstance(mine.attn, Attention) and not any(isinstance(m, nn.MultiheadAttention) for m in mine.modules())
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(mine(x), theirs(x))
    fresh = unfused(_Block())
    fresh.load_state_dict(theirs.state_dict())  # MultiheadAttention's names
    torch.testing.assert_close(fresh.eval()(x), theirs(x))
    back = _Block()
    back.load_state_dict(saved_state(mine))
    torch.testing.assert_close(back.eval()(x), theirs(x))
    fresh.load_state_dict(mine.state_dict())  # its own names load too (a simulation's state)


def test_its_projections_are_searchable_layers_and_fx_sees_them_as_calls():
    import torch.fx

    from edgempq.layers import layer_edges, trace

    model = unfused(_Block())
    layers = {la.name: la for la in trace(model, (5, 8))}
    assert [n for n, la in layers.items() if la.searchable] == ["embed", "attn.in_proj", "attn.out_proj", "head"]
    assert layers["attn.in_proj"].macs == 5 * E * 3 * E and layers["attn.in_proj"].out_shape == (5, 3 * E)
    assert sum(la.params for la in layers.values()) == sum(p.numel() for p in model.parameters())
    calls = [n.target for n in torch.fx.symbolic_trace(model).graph.nodes if n.op == "call_module"]
    assert calls == ["embed", "attn.in_proj", "attn.out_proj", "head"]
    edges = {(a, b) for a, b, _ in layer_edges(model, list(layers.values()))}
    assert {("embed", "attn.in_proj"), ("attn.in_proj", "attn.out_proj"), ("attn.out_proj", "head")} <= edges
    # key and value of their own widths: three projections, each its own layer
    apart = unfused(_Block())
    apart.attn = Attention(nn.MultiheadAttention(E, 2, kdim=8, vdim=8, batch_first=True))
    apart.forward = lambda x: apart.head(apart.attn(apart.embed(x), x, x, need_weights=False)[0].mean(1))
    names = [la.name for la in trace(apart, (5, 8)) if la.searchable]
    assert names == ["embed", "attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj", "head"]


def test_attention_the_rewrite_cannot_compute_stays_and_is_listed_fixed():
    from edgempq.layers import ATTENTION_REASON, trace

    model = _Block()
    model.attn = nn.MultiheadAttention(E, 2, batch_first=True, add_bias_kv=True)
    assert not rewritable(model.attn)
    assert isinstance(unfused(model).attn, nn.MultiheadAttention)
    layers = {la.name: la for la in trace(model, (5, 8))}
    assert layers["attn.in_proj"].fixed_reason == ATTENTION_REASON and not layers["attn.in_proj"].searchable


NET = """
from torch import nn

class B(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x):
        return self.attn(x, x, x)[0].mean(1)

def net():
    m = B()
    m.input_shape = (4, 8)
    return m
"""


def test_load_model_rewrites_attention(tmp_path):
    from edgempq.models import load_model

    (tmp_path / "net.py").write_text(NET)
    torch.manual_seed(0)
    original = nn.MultiheadAttention(8, 2, batch_first=True)
    torch.save({f"attn.{k}": v for k, v in original.state_dict().items()}, tmp_path / "w.pt")
    model = load_model(f"{tmp_path / 'net.py'}:net", tmp_path / "w.pt")
    assert isinstance(model.module.attn, Attention)
    torch.testing.assert_close(model.module.attn.in_proj.weight, original.in_proj_weight)


def test_weights_saved_from_the_rewritten_model_load_too(tmp_path):
    """A user who saves `model.state_dict()` of the loaded (rewritten) model can load it again."""
    from edgempq.models import load_model

    (tmp_path / "net.py").write_text(NET)
    spec = f"{tmp_path / 'net.py'}:net"
    model = load_model(spec)
    torch.save(model.module.state_dict(), tmp_path / "own.pt")
    torch.save(saved_state(model.module), tmp_path / "theirs.pt")
    for name in ("own.pt", "theirs.pt"):
        again = load_model(spec, tmp_path / name)
        torch.testing.assert_close(again.module.attn.in_proj.weight, model.module.attn.in_proj.weight)


HANDWRITTEN = """
import math

import torch
from torch import nn


class Packed(nn.Module):
    '''timm's way: one qkv Linear, heads by reshape and permute, the scale on the scores.'''

    def __init__(self, d, h):
        super().__init__()
        self.h, self.dh = h, d // h
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.h, self.dh).permute(2, 0, 3, 1, 4).unbind(0)
        a = ((q @ k.transpose(-2, -1)) * self.dh ** -0.5).softmax(-1)
        return self.proj((a @ v).transpose(1, 2).reshape(b, n, c))


class Apart(nn.Module):
    '''Separate q, k and v Linear layers over one input, the scale as a division.'''

    def __init__(self, d, h):
        super().__init__()
        self.h, self.dh = h, d // h
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = (f(x).view(b, n, self.h, self.dh).transpose(1, 2) for f in (self.q, self.k, self.v))
        a = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.dh), -1)
        return self.o((a @ v).transpose(1, 2).reshape(b, n, c))


class ViT(nn.Module):
    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(1, 24, 2, 2)  # 16 tokens of 24 features
        self.norm = nn.LayerNorm(24)
        self.packed, self.apart, self.mha = Packed(24, 2), Apart(24, 2), nn.MultiheadAttention(24, 2, batch_first=True)
        self.head = nn.Linear(24, 3)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = t + self.packed(self.norm(t))
        t = t + self.apart(t)
        t = t + self.mha(t, t, t, need_weights=False)[0]
        return self.head(t.mean(1))


def net():
    m = ViT()
    m.input_shape = (1, 8, 8)
    return m
"""


@pytest.mark.slow
def test_handwritten_and_rewritten_attention_deploy_every_projection_searched(tmp_path):
    """Hand-written attention (packed qkv with the scale on the scores, and q/k/v apart) and
    nn.MultiheadAttention in one model: every projection is a searchable layer at its own
    precision in the artifact, which computes what was simulated."""
    import numpy as np

    from edgempq.export.stage import DeployConfig
    from edgempq.layers import trace
    from edgempq.pipeline import ValidateOptions, deploy, validate
    from edgempq.schema import Policy, Precision

    from .usernet import train_as_user

    rng = np.random.default_rng(0)
    patterns = np.kron(rng.normal(0, 1, (3, 1, 4, 4)), np.ones((1, 1, 2, 2)))
    y = np.repeat(np.arange(3), 80)
    x = (patterns[y] + rng.normal(0, 0.5, (240, 1, 8, 8))).astype(np.float32)
    model, ds, paths = train_as_user(tmp_path, HANDWRITTEN, x, y, 60, saved_state)
    data = paths["data"]
    layers = trace(model.module, model.input_shape)
    projections = ["packed.qkv", "packed.proj", "apart.q", "apart.k", "apart.v", "apart.o", "mha.in_proj",
                   "mha.out_proj"]
    assert [la.name for la in layers if la.searchable] == ["patch", *projections, "head"]
    bits = {n: Precision.parse("w4a8" if i % 2 else "w8a8") for i, n in enumerate(["patch", *projections, "head"])}
    result = deploy(model, ds, Policy(bits), "host", tmp_path / "build",
                    DeployConfig(weights=str(tmp_path / "w.pt"), data_spec=data))
    assert {r.layer: r.weight_type for r in result.layers} == {n: f"int{p.weight_bits}" for n, p in bits.items()}
    assert result.float_top1 > 0.9
    val = validate(tmp_path / "build", "host", ValidateOptions(runs=3))
    assert val.agreement.top1 >= 0.99, val.agreement


def test_transformer_layers_built_on_multihead_attention_run_the_rewrite():
    """nn.TransformerEncoder(Layer)'s fused fast path reads MultiheadAttention's packed weights
    itself; with the rewrite it declines and runs the projections (same outputs)."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(E, 4, 2 * E, dropout=0.0, batch_first=True)
    for model in (layer, nn.TransformerEncoder(copy.deepcopy(layer), 2, enable_nested_tensor=True)):
        model.eval()
        x, pad = torch.randn(2, 6, E), torch.zeros(2, 6, dtype=torch.bool)
        pad[1, 4:] = True
        with torch.no_grad():
            want = model(x, src_key_padding_mask=pad)
            mine = unfused(copy.deepcopy(model)).eval()
            got = mine(x, src_key_padding_mask=pad)
        assert not any(isinstance(m, nn.MultiheadAttention) for m in mine.modules())
        torch.testing.assert_close(got[~pad], want[~pad], atol=1e-5, rtol=1e-5)


def test_masks_given_as_tensors_still_trace_and_dtype_and_frozen_weights_are_kept():
    import torch.fx

    class Causal(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(E, 2, batch_first=True)
            self.register_buffer("mask", torch.ones(5, 5, dtype=torch.bool).triu(1))

        def forward(self, x):
            return self.attn(x, x, x, attn_mask=self.mask, key_padding_mask=x.sum(-1) == 0)[0]

    model = Causal().eval()
    x = torch.randn(2, 5, E)
    want = model(x)[0]
    mine = unfused(copy.deepcopy(model))
    graph = torch.fx.symbolic_trace(mine)
    torch.testing.assert_close(graph(x)[0], want)
    frozen = nn.MultiheadAttention(E, 2).double()
    frozen.in_proj_weight.requires_grad_(False)
    a = Attention(frozen)
    assert a.in_proj.weight.dtype == torch.float64 and not a.in_proj.weight.requires_grad
    assert a.out_proj.weight.requires_grad


@pytest.mark.slow
def test_a_lenient_conversion_that_computes_otherwise_is_refused_naming_the_module(tmp_path):
    """16 tokens of 16 features: onnx2tf's strict conversion fails on the scores' scale, and its
    lenient one transposes the wrong axis; the refusal names the module and what to change."""
    from edgempq.errors import ConversionError
    from edgempq.export.float_graph import float_tflite

    ns: dict = {}
    exec(HANDWRITTEN.replace("24", "16"), ns)  # noqa: S102 - the test's own model source
    model = unfused(ns["net"]()).eval()
    with pytest.raises(ConversionError, match=r"in module 'packed' \(Packed\).*scale q before the q @ k\^T"):
        float_tflite(model, (1, 8, 8))
