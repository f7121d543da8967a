import numpy as np
import pytest
import torch
from ai_edge_quantizer import qtyping
from ai_edge_quantizer.algorithms.uniform_quantize import uniform_quantize_tensor as aeq
from torch import nn

from edgempq.errors import ConfigError
from edgempq.layers import trace
from edgempq.quant import QConv2d, QuantConfig, apply, batches, calibrate, finetune
from edgempq.quant.fold import conv_bn_pairs
from edgempq.quant.quantizers import ActQuantizer, WeightQuantizer, act_qrange, weight_qrange
from edgempq.schema import Policy, Precision


@pytest.mark.parametrize("bits", [2, 3, 4, 8, 16])
def test_weight_quantizer_gives_at_most_2_to_the_b_levels_per_channel(bits):
    w = torch.randn(6, 4, 3, 3)
    q = WeightQuantizer(bits)
    q.calibrate(w)
    out = q(w)
    for c in range(6):
        assert len(torch.unique(out[c])) <= 2**bits


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("method", ["minmax", "percentile", "mse"])
def test_activation_quantizer_gives_at_most_2_to_the_b_levels(bits, method):
    x = torch.randn(64, 3, 5, 5) * 3 + 1
    q = ActQuantizer(bits, method)
    q.start_observing()
    q(x)
    q.finish_observing()
    assert len(torch.unique(q(x))) <= 2**bits


@pytest.mark.parametrize("bits", [2, 4, 8, 16])
def test_weight_quantizer_is_identity_on_representable_values(bits):
    qmin, qmax = weight_qrange(bits)
    steps = torch.tensor([0.01, 0.5, 3.0]).reshape(3, 1)
    k = torch.randint(-qmax, qmax + 1, (3, 20)).float()
    k[:, 0] = qmax  # the range is set by the largest magnitude
    w = (k * steps).reshape(3, 20, 1, 1)
    q = WeightQuantizer(bits)
    q.calibrate(w)
    assert torch.allclose(q(w), w, rtol=0, atol=1e-5 * float(steps.max()))


@pytest.mark.parametrize("bits", [4, 8, 16])
def test_activation_quantizer_is_identity_on_representable_values(bits):
    qmin, qmax = act_qrange(bits)
    s, z = 0.05, (0 if bits == 16 else qmin + 3)
    k = torch.cat([torch.tensor([qmin, qmax]), torch.randint(qmin, qmax + 1, (200,))]).double()
    x = ((k - z) * s).float()
    q = ActQuantizer(bits)
    q.start_observing()
    q(x)
    q.finish_observing()
    assert q.zero_point.item() == z
    assert torch.allclose(q(x), x, atol=1e-4)


def _aeq_dequant(x: np.ndarray, bits: int, symmetric: bool, channelwise: bool) -> np.ndarray:
    axes = tuple(range(1, x.ndim)) if channelwise else None
    mn, mx = x.min(axis=axes, keepdims=channelwise), x.max(axis=axes, keepdims=channelwise)
    gran = qtyping.QuantGranularity.CHANNELWISE if channelwise else qtyping.QuantGranularity.TENSORWISE
    zp, scale = aeq.tensor_zp_scale_from_min_max(np.asarray(mn), np.asarray(mx), bits, symmetric, gran)
    params = qtyping.UniformQuantParams(num_bits=bits, quantized_dimension=0 if channelwise else None,
                                        scale=np.asarray(scale), zero_point=np.asarray(zp), symmetric=symmetric)
    q = aeq.uniform_quantize(x, params).astype(np.int32)  # int32, as the kernels do the arithmetic
    return (q - np.asarray(zp, np.int32)) * np.asarray(scale, np.float32)


@pytest.mark.parametrize("bits", [4, 8])
def test_weights_round_exactly_as_ai_edge_quantizer_does(bits):
    w = torch.randn(16, 8, 3, 3) * torch.linspace(0.1, 2, 16).reshape(16, 1, 1, 1)
    q = WeightQuantizer(bits)
    q.calibrate(w)
    ref = _aeq_dequant(w.numpy(), bits, symmetric=True, channelwise=True)
    assert np.allclose(q(w).numpy(), ref, atol=1e-6)


@pytest.mark.parametrize("bits", [8, 16])
def test_activations_round_exactly_as_ai_edge_quantizer_does(bits):
    x = torch.relu(torch.randn(8, 4, 6, 6)) * 2.5 - 0.3
    q = ActQuantizer(bits)
    q.start_observing()
    q(x)
    q.finish_observing()
    ref = _aeq_dequant(x.numpy(), bits, symmetric=bits == 16, channelwise=False)
    assert q.symmetric == (bits == 16)
    assert np.allclose(q(x).numpy(), ref, atol=1e-6)


@pytest.mark.parametrize(("method", "bits"), [("percentile", 8), ("mse", 4)])
def test_percentile_and_mse_activation_ranges_clip_an_outlier_that_minmax_keeps(method, bits):
    x = torch.randn(20000)
    x[0] = 40.0  # one outlier: at 4 bits its clipping error is far below the others' rounding error
    ranges = {}
    for m in ("minmax", method):
        q = ActQuantizer(bits, m, percentile=99.9)
        q.start_observing()
        q(x)
        q.finish_observing()
        ranges[m] = q.representable()[1]
    assert ranges[method] < 0.5 * ranges["minmax"]


def test_a_fixed_weight_grid_survives_calibration_and_codes_reproduce_the_forward_pass(conv_bn_net):
    ls = trace(conv_bn_net, (1, 6, 6))
    q = apply(conv_bn_net, Policy.uniform(ls, "w4a8"))
    wq = q.conv.weight_quant
    half = wq.scale.flatten() * 0.5
    wq.set_grid(half)
    calibrate(q, [torch.randn(4, 1, 6, 6)])  # recomputes min-max grids, not a fixed one
    assert wq.fixed and torch.equal(wq.scale.flatten(), half)
    codes = wq.codes(q.conv.weight)
    assert codes.dtype == torch.int64 and int(codes.min()) >= -8 and int(codes.max()) <= 7
    assert torch.equal(codes.float() * wq.step_value(), wq(q.conv.weight))


def test_the_simulated_bias_is_an_integer_on_input_scale_times_weight_scale(conv_bn_net):
    ls = trace(conv_bn_net, (1, 6, 6))
    q = calibrate(apply(conv_bn_net, Policy.uniform(ls, "w8a8")), [torch.randn(16, 1, 6, 6)])
    scale = q.conv.act_quant.step_value() * q.conv.weight_quant.step_value().reshape(-1)
    assert torch.allclose(q.conv.bias_scale(), scale)
    k = q.conv._qbias() / scale
    assert torch.allclose(k, k.round(), atol=1e-3) and torch.equal(q.conv.bias_codes(), k.round().long())
    assert not torch.equal(q.conv._qbias(), q.conv.bias)  # rounded, as the kernel adds it


def test_lsq_step_learns_from_gradients():
    q = WeightQuantizer(4)
    w = torch.randn(3, 10)
    q.calibrate(w)
    q.make_learnable()
    assert isinstance(q.scale, nn.Parameter)
    (q(w) - w * 1.1).pow(2).sum().backward()
    assert q.scale.grad is not None and q.scale.grad.abs().sum() > 0


def test_apply_never_mutates_the_input_and_keeps_layer_names(conv_bn_net):
    before = {k: v.clone() for k, v in conv_bn_net.state_dict().items()}
    conv_bn_net.train()
    ls = trace(conv_bn_net, (1, 6, 6))
    q = calibrate(apply(conv_bn_net, Policy.uniform(ls, "w4a8")), [torch.randn(4, 1, 6, 6)])
    assert conv_bn_net.training and type(conv_bn_net.conv) is nn.Conv2d
    assert isinstance(conv_bn_net.bn, nn.BatchNorm2d)
    assert all(torch.equal(before[k], v) for k, v in conv_bn_net.state_dict().items())
    assert isinstance(q.conv, QConv2d) and isinstance(q.bn, nn.Identity) and not q.training
    assert [la.name for la in trace(q, (1, 6, 6))] == [la.name for la in ls]


def test_folding_batchnorm_keeps_the_float_function(conv_bn_net):
    assert conv_bn_pairs(conv_bn_net) == [("conv", "bn"), ("dw", "bn2")]
    x = torch.randn(5, 1, 6, 6)
    q = apply(conv_bn_net, Policy.uniform(trace(conv_bn_net, (1, 6, 6)), "f32"))
    assert torch.allclose(q(x), conv_bn_net(x), atol=1e-5)


def test_w8a8_stays_close_and_w2_drifts(conv_bn_net):
    x = torch.randn(64, 1, 6, 6)
    ls = trace(conv_bn_net, (1, 6, 6))
    ref = conv_bn_net(x)
    err = {}
    for p in ("w8a8", "w2a8"):
        q = calibrate(apply(conv_bn_net, Policy.uniform(ls, p)), [x])
        err[p] = (q(x) - ref).abs().max().item()
    assert err["w8a8"] < 0.05 * ref.abs().max().item() < err["w2a8"]


def test_quantized_model_must_be_calibrated_first(conv_bn_net):
    q = apply(conv_bn_net, Policy.uniform(trace(conv_bn_net, (1, 6, 6)), "w8a8"))
    with pytest.raises(ConfigError, match="before calibration"):
        q(torch.zeros(1, 1, 6, 6))
    with pytest.raises(ConfigError, match="no data"):
        calibrate(q, [])


def test_apply_rejects_policies_for_missing_or_non_weight_layers(conv_bn_net):
    with pytest.raises(ConfigError, match="does not have"):
        apply(conv_bn_net, Policy({"head": Precision.parse("w8a8")}))
    with pytest.raises(ConfigError, match="BatchNorm2d"):
        apply(conv_bn_net, Policy({"bn": Precision.parse("w8a8")}))
    with pytest.raises(ConfigError, match="must be one of"):
        QuantConfig(act_method="kl")
    with pytest.raises(ConfigError, match="unknown PTQ algorithm 'obq'; choose one of: adaround, gptq, minmax, mse"):
        QuantConfig(weights="obq")


def test_qat_finetune_trains_steps_and_weights(conv_bn_net):
    torch.manual_seed(0)
    y = torch.arange(96) % 3
    x = (torch.randn(96, 1, 6, 6) + y.reshape(-1, 1, 1, 1)).numpy()
    q = calibrate(apply(conv_bn_net, Policy.uniform(trace(conv_bn_net, (1, 6, 6)), "w4a8")), batches(x, 32))
    s0, w0 = q.conv.weight_quant.scale.clone(), q.fc.weight.clone()
    res = finetune(q, x, y.numpy(), epochs=2)
    assert np.isfinite(res.final_loss)
    assert not torch.equal(q.conv.weight_quant.scale.detach(), s0) and not torch.equal(q.fc.weight, w0)
    assert isinstance(q.conv.act_quant.scale, nn.Parameter)


def test_f16_rounds_weights_to_half_precision(conv_bn_net):
    q = apply(conv_bn_net, Policy({"conv": Precision.parse("f16")}, ))
    w = q.conv._qweight()
    assert torch.equal(w, q.conv.weight.half().float())


def test_a_batchnorm1d_after_a_linear_is_folded_only_where_it_normalises_the_features():
    """MLPerf Tiny's autoencoder is Linear -> BatchNorm1d -> ReLU: the ONNX export folds that
    pair, so edgempq must too (else the artifact's weights are not the simulation's)."""
    from edgempq.quant.fold import fold_batchnorm

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    net.train()(torch.randn(64, 8))  # running statistics that are not the identity
    net.eval()
    x = torch.randn(5, 8)
    ref = net(x)
    assert fold_batchnorm(net, x) == [("0", "1")] and isinstance(net[1], nn.Identity)
    assert torch.allclose(net(x), ref, atol=1e-5)
    assert fold_batchnorm(nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16)).eval()) == []  # no example: kept

    class Tokens(nn.Module):  # BatchNorm1d over the sequence axis of a Linear's (N, L, E) output
        def __init__(self):
            super().__init__()
            self.fc, self.bn = nn.Linear(4, 4), nn.BatchNorm1d(4)

        def forward(self, t):
            return self.bn(self.fc(t))

    tokens = Tokens()
    tokens.train()(torch.randn(16, 4, 4))
    tokens.eval()
    assert fold_batchnorm(tokens, torch.randn(3, 4, 4)) == []
