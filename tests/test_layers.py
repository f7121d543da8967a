import pytest
import torch
from torch import nn

from edgempq.errors import ConfigError, ModelError
from edgempq.layers import bops, policy_bops, policy_weight_bytes, trace, weight_bytes
from edgempq.models import load_model
from edgempq.schema import Policy, Precision


def test_two_layer_net_by_hand(two_layer):
    conv, fc = trace(two_layer, (3, 10, 10))
    assert (conv.name, conv.kind, conv.in_shape, conv.out_shape) == ("conv", "conv", (3, 10, 10), (8, 10, 10))
    assert (conv.kernel, conv.stride, conv.padding, conv.groups) == ((3, 3), (1, 1), (1, 1), 1)
    assert conv.params == 8 * 3 * 9 + 8 and conv.macs == 8 * 10 * 10 * 3 * 9
    assert (fc.kind, fc.in_shape, fc.out_shape, fc.params, fc.macs) == ("linear", (800,), (5,), 4005, 4000)
    assert conv.signature != fc.signature and conv.searchable and fc.searchable


def test_signature_ignores_the_name_but_not_the_shape():
    a = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1))
    first, second = trace(a, (4, 6, 6))
    assert first.signature == second.signature and first.name != second.name
    assert trace(a, (4, 7, 7))[0].signature != first.signature


def test_resnet18_at_224_has_1_81_g_macs():
    ls = trace(load_model("zoo:resnet18").module, (3, 224, 224))
    assert len(ls) == 21 and all(la.searchable for la in ls)
    assert sum(la.macs for la in ls) == 1_814_073_344
    assert [la.name for la in ls[:3]] == ["conv1", "layer1.0.conv1", "layer1.0.conv2"]
    assert ls[-1].name == "fc" and ls[-1].macs == 512_000


def test_mobilenet_v2_depthwise_layers_are_dwconv():
    ls = trace(load_model("zoo:mobilenet_v2").module, (3, 224, 224))
    kinds = {la.kind for la in ls}
    assert kinds == {"conv", "dwconv", "linear"} and len(ls) == 53
    assert 0.29e9 < sum(la.macs for la in ls) < 0.31e9
    dw = next(la for la in ls if la.kind == "dwconv")
    assert dw.groups == dw.in_channels and dw.macs == 32 * 112 * 112 * 9


class Odd(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.grouped = nn.Conv2d(4, 8, 3, padding=1, groups=2)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.shared = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        x = self.up(self.grouped(x)).mean((2, 3))
        return self.head(self.shared(self.shared(x)))


def test_layers_the_deployment_cannot_quantize_are_fixed_with_a_reason():
    g, up, shared, head = trace(Odd(), (4, 5, 5))
    assert head.searchable
    assert g.kind == "grouped_conv" and "groups=2" in g.fixed_reason
    assert up.kind == "tconv" and up.searchable  # TFLite's TRANSPOSE_CONV has integer kernels
    assert up.out_shape == (4, 10, 10) and up.macs == 8 * 5 * 5 * 4 * 4
    assert "called 2 times" in shared.fixed_reason
    with pytest.raises(ConfigError, match="kept fixed"):
        Policy({"grouped": Precision.parse("w8a8")}).check_layers([g, up, shared, head])


def test_transposed_convs_without_a_tflite_kernel_are_fixed_with_the_reason():
    m = nn.Sequential(nn.ConvTranspose2d(4, 4, 3, groups=2), nn.ConvTranspose2d(4, 4, 3, dilation=2),
                      nn.Flatten(1, 2), nn.ConvTranspose1d(4 * 11, 4, 3), nn.Flatten(), nn.Linear(4 * 13, 2))
    grouped, dilated, one_d, head = trace(m, (4, 5, 5))
    assert "grouped transposed convolution (groups=2) has no TFLite kernel" in grouped.fixed_reason
    assert "dilated transposed convolution (dilation=(2, 2)) has no TFLite kernel" in dilated.fixed_reason
    assert "ConvTranspose1d has no quantized path" in one_d.fixed_reason
    assert head.searchable


def test_model_without_quantizable_layer_or_wrong_shape_is_a_clear_error(two_layer):
    with pytest.raises(ModelError, match="no Conv1d, Conv2d or Linear"):
        trace(nn.Sequential(nn.ReLU()), (3, 4, 4))
    with pytest.raises(ModelError, match=r"input of shape \(1, 1, 10, 10\)"):
        trace(two_layer, (1, 10, 10))


def test_trace_does_not_change_the_model_mode(two_layer):
    two_layer.train()
    trace(two_layer, torch.zeros(4, 3, 10, 10))
    assert two_layer.training


def test_bops_and_weight_bytes_by_hand(two_layer):
    conv, fc = trace(two_layer, (3, 10, 10))
    w4a8, w8a16 = Precision.parse("w4a8"), Precision.parse("w8a16")
    assert bops(conv, w4a8) == 21_600 * 4 * 8
    # 216 int4 weights = 108 bytes, 8 int32 biases, 8 x (float32 scale + int64 zero point) for the
    # weights and again for the bias
    assert weight_bytes(conv, w4a8) == 108 + 32 + 96 + 96
    assert weight_bytes(conv, w8a16) == 216 + 64 + 192  # int64 bias with 16-bit activations
    assert weight_bytes(conv, Precision.parse("f32")) == 224 * 4
    assert weight_bytes(conv, Precision.parse("f16")) == 216 * 2 + 8 * 4  # the bias stays float32
    assert weight_bytes(conv, Precision.parse("w3a8")) == 81 + 32 + 192  # 648 bits packed
    p = Policy({"conv": w4a8, "fc": w8a16})
    assert policy_bops(trace(two_layer, (3, 10, 10)), p) == 21_600 * 32 + 4000 * 128
    assert policy_weight_bytes([conv, fc], p) == 332 + (4000 + 5 * 8 + 5 * 24)


def test_policy_must_cover_every_searchable_layer(two_layer):
    ls = trace(two_layer, (3, 10, 10))
    with pytest.raises(ConfigError, match="no precision for layer"):
        policy_bops(ls, Policy({"conv": Precision.parse("w8a8")}))
    with pytest.raises(ConfigError, match="does not have"):
        policy_bops(ls, Policy({"conv": Precision.parse("w8a8"), "fc": Precision.parse("w8a8"),
                                "head": Precision.parse("w8a8")}))


class SameConv(nn.Conv2d):
    def forward(self, x):
        return super().forward(nn.functional.pad(x, (1, 1, 1, 1)))


class PlainSub(nn.Linear):
    pass


def test_trace_and_apply_agree_on_custom_subclasses():
    from edgempq.quant import apply

    m = nn.Sequential(SameConv(2, 4, 3), nn.Flatten(), PlainSub(4 * 4 * 4, 3))
    conv, fc = trace(m, (2, 4, 4))
    assert "overrides forward" in conv.fixed_reason and fc.searchable
    with pytest.raises(ConfigError, match="stays float"):
        apply(m, Policy({"0": Precision.parse("w8a8")}))
    q = apply(m, Policy.uniform([conv, fc], "f16"))
    assert list(q(torch.zeros(1, 2, 4, 4)).shape) == [1, 3]


class _Attention(nn.Module):
    """A patch embedding, self-attention over the patches, a classifier."""

    def __init__(self, batch_first: bool = True, kdim: int | None = None):
        super().__init__()
        self.patch = nn.Conv2d(1, 16, 4, 4)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=batch_first, kdim=kdim, vdim=kdim)
        self.kv = nn.Linear(16, kdim) if kdim else None
        self.fc = nn.Linear(16, 3)
        self.unused = nn.Linear(16, 16)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)  # (N, 4, 16)
        kv = self.kv(t) if self.kv is not None else t
        if not self.attn.batch_first:
            t, kv = t.transpose(0, 1), kv.transpose(0, 1)
        a = self.attn(t, kv, kv, need_weights=False)[0]
        a = a if self.attn.batch_first else a.transpose(0, 1)
        return self.fc(a.mean(1))


@pytest.mark.parametrize("batch_first", [True, False])
def test_attention_projections_and_unrun_layers_are_listed_never_missing(batch_first):
    """nn.MultiheadAttention traced as it is (not loaded through load_model, which rewrites it)
    reads its projection weights in a fused kernel, so their forwards never run; they are listed
    as fixed linear layers with their MACs, as is a layer that never ran at all."""
    from edgempq.layers import UNREWRITTEN_REASON

    layers = {la.name: la for la in trace(_Attention(batch_first), (1, 8, 8))}
    assert list(layers) == ["patch", "attn.in_proj", "attn.out_proj", "fc", "unused"]
    inp, out = layers["attn.in_proj"], layers["attn.out_proj"]
    assert (inp.in_shape, inp.out_shape, inp.macs, inp.params) == ((4, 16), (4, 48), 3 * 4 * 16 * 16, 3 * 16 * 17)
    assert (out.in_shape, out.out_shape, out.macs, out.params) == ((4, 16), (4, 16), 4 * 16 * 16, 16 * 17)
    assert inp.fixed_reason == out.fixed_reason == UNREWRITTEN_REASON and not inp.searchable
    assert layers["unused"].macs == 0 and "never ran" in layers["unused"].fixed_reason
    assert [n for n, la in layers.items() if la.searchable] == ["patch", "fc"]
    # every parameter of the model is in some layer's count, so size budgets see all of it
    model = _Attention(batch_first)
    assert sum(la.params for la in layers.values()) == sum(p.numel() for p in model.parameters())


def test_attention_with_its_own_key_and_value_widths_lists_three_projections():
    layers = {la.name: la for la in trace(_Attention(kdim=8), (1, 8, 8))}
    assert [n for n in layers if n.startswith("attn.")] == ["attn.q_proj", "attn.k_proj", "attn.v_proj",
                                                            "attn.out_proj"]
    assert layers["attn.k_proj"].in_shape == (4, 8) and layers["attn.k_proj"].macs == 4 * 8 * 16
