"""PTQ weight algorithms (minmax, mse, gptq, adaround), bias correction and the layer walk, on
tiny real models: every algorithm's contract, and each one's defining property."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from edgempq.errors import ConfigError
from edgempq.layers import trace
from edgempq.quant import QuantConfig, apply, calibrate, quantize
from edgempq.quant.moments import Moments, collect, column_count, columns, from_matrix, weight_matrix
from edgempq.quant.stream import Walk, block_paths, walk
from edgempq.quant.weights import algorithm, algorithm_names
from edgempq.quant.weights.gptq import gptq_codes
from edgempq.schema import Policy, Precision

ALGORITHMS = ["minmax", "mse", "gptq", "adaround"]
FAST = {"adaround": {"iters": 200}}


class Stack(nn.Module):
    """conv-bn-relu x2 and a linear head, on correlated 1x8x8 inputs."""

    input_shape = (1, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16 * 8 * 8, 4)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        return self.fc(torch.relu(self.b2(self.c2(x))).flatten(1))


def _data(n: int = 96, seed: int = 0) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    x = x + torch.roll(x, 1, 3) + torch.roll(x, 1, 2)  # neighbouring pixels correlate, as in images
    return x.numpy()


@pytest.fixture
def stack() -> Stack:
    torch.manual_seed(0)
    m = Stack()
    with torch.no_grad():
        for bn in (m.b1, m.b2):
            bn.running_mean.uniform_(-0.3, 0.3)
            bn.running_var.uniform_(0.5, 2.0)
    return m.eval()


def _cfg(name: str, **kw) -> QuantConfig:
    return QuantConfig(weights=name, weight_params=FAST.get(name, {}), **kw)


def test_the_registry_names_every_algorithm_and_lists_them_for_a_wrong_name_or_key():
    assert algorithm_names() == sorted(ALGORITHMS)
    with pytest.raises(ConfigError, match="unknown PTQ algorithm 'rtn'; choose one of: adaround, gptq, minmax, mse"):
        algorithm("rtn")
    with pytest.raises(ConfigError, match="PTQ algorithm gptq has no parameter 'blocks'; its parameters are: "
                                          "block_size=128"):
        algorithm("gptq", ["blocks=64"])
    with pytest.raises(ConfigError, match="parameter iters of PTQ algorithm adaround must be an integer"):
        algorithm("adaround", ["iters=many"])
    with pytest.raises(ConfigError, match=r"parameter b_start=1.0 of PTQ algorithm adaround is out of range: it "
                                          r"must be >= b_end=5.0"):
        algorithm("adaround", ["b_start=1", "b_end=5"])
    with pytest.raises(ConfigError, match=r"parameter warmup=1.0 of PTQ algorithm adaround is out of range"):
        algorithm("adaround", ["warmup=1"])
    with pytest.raises(ConfigError, match="parameter damp of PTQ algorithm gptq must be a finite number, not 'inf'"):
        algorithm("gptq", ["damp=inf"])
    with pytest.raises(ConfigError, match=r"parameter iters of PTQ algorithm adaround is given twice \(iters=50, "
                                          r"iters=60\); give it once"):
        algorithm("adaround", ["iters=50", "iters=60"])
    with pytest.raises(ConfigError, match="asym=False of PTQ algorithm adaround applies to granularity=layer only"):
        algorithm("adaround", ["granularity=block", "asym=false"])
    for name in ALGORITHMS:  # frozen Params with defaults, as the sensitivity methods have
        params = algorithm(name).params
        assert dataclasses.is_dataclass(params) and type(params).__dataclass_params__.frozen


@pytest.mark.parametrize("name", ALGORITHMS)
def test_every_algorithm_puts_integer_layers_on_their_grid_and_leaves_float_layers_alone(name, stack):
    x = _data()
    before = {k: v.clone() for k, v in stack.state_dict().items()}
    policy = Policy({"c1": Precision.parse("w4a8"), "c2": Precision.parse("w3a16"), "fc": Precision.parse("f32")})
    q, report = quantize(stack, policy, x, _cfg(name))
    q2, _ = quantize(stack, policy, x, _cfg(name))
    assert all(torch.equal(before[k], v) for k, v in stack.state_dict().items())  # the input model is untouched
    folded = apply(stack, Policy({}))
    for layer, bits in (("c1", 4), ("c2", 3)):
        mod, wq = q.get_submodule(layer), q.get_submodule(layer).weight_quant
        assert torch.equal(mod.weight, q2.get_submodule(layer).weight)  # deterministic
        if name == "minmax":  # round to nearest on the min-max grid of the folded weights
            w = folded.get_submodule(layer).weight
            step = w.abs().amax((1, 2, 3), keepdim=True) / (2 ** (bits - 1) - 1)
            assert torch.allclose(wq.step_value(), step)
            assert torch.equal(wq.codes(mod.weight), (w / step).round().long())
            continue
        k = mod.weight / wq.step_value()  # the algorithm fixed its grid and the integers themselves
        assert wq.fixed and torch.allclose(k, k.round(), atol=1e-4)
        assert int(k.round().min()) >= -(2 ** (bits - 1)) and int(k.round().max()) <= 2 ** (bits - 1) - 1
    assert torch.equal(q.fc.weight, folded.fc.weight) and q.fc.weight_quant is None
    assert report.weights == name and set(report.layers) == {"c1", "c2"}
    with torch.no_grad():
        assert torch.isfinite(q(torch.from_numpy(x))).all()


@pytest.mark.parametrize("name", ["mse", "gptq", "adaround"])
def test_the_learned_algorithms_err_less_than_rounding_to_nearest_on_the_calibration_data(name, stack):
    q, report = quantize(stack, Policy.uniform(trace(stack, (1, 8, 8)), "w3a8"), _data(), _cfg(name))
    for layer, info in report.layers.items():
        assert info["error"] < info["rtn_error"], (layer, info)
    total = sum(i["error"] for i in report.layers.values()) / sum(i["rtn_error"] for i in report.layers.values())
    assert total < 0.8


def _correlated_layer(d: int = 24, rows: int = 6, n: int = 4000):
    torch.manual_seed(1)
    mix = torch.randn(d, d) * 0.6 + torch.eye(d)
    x = torch.randn(n, d) @ mix
    lin = nn.Linear(d, rows, bias=False)
    m = Moments((x.T @ x / n).double()[None])
    w = weight_matrix(lin)
    scale = w.abs().amax(-1, keepdim=True) / 3  # 3 bits
    return lin, m, w, scale


def test_gptq_is_nearest_rounding_when_the_inputs_are_uncorrelated_and_beats_it_when_they_are():
    lin, m, w, scale = _correlated_layer()
    rtn = torch.clamp(torch.round(w / scale), -4, 3)
    diagonal = torch.diag_embed(torch.diagonal(m.qq, dim1=-2, dim2=-1))  # no correlation: no error to feed back
    assert torch.equal(gptq_codes(w, diagonal, scale, -4, 3), rtn)
    g = gptq_codes(w, m.qq, scale, -4, 3)
    err_rtn = m.relative_error(rtn * scale, w)
    err = m.relative_error(g * scale, w)
    assert err < 0.6 * err_rtn, (err, err_rtn)  # GPTQ's premise: error feedback cuts the layer's output error


def test_adaround_only_rounds_each_weight_down_or_up():
    stack_ = Stack().eval()
    q, _ = quantize(stack_, Policy({"c2": Precision.parse("w3a8")}), _data(), _cfg("adaround"))
    ref = apply(stack_, Policy({}))
    mod = q.c2
    k = (mod.weight / mod.weight_quant.step_value()).round()
    w = ref.c2.weight / mod.weight_quant.step_value()
    assert torch.all((k == torch.floor(w).clamp(-4, 3)) | (k == torch.ceil(w).clamp(-4, 3)))


def test_mse_clips_no_wider_than_minmax():
    x = _data()
    stack_ = Stack().eval()
    pol = Policy({"c2": Precision.parse("w2a8")})
    mm, _ = quantize(stack_, pol, x, _cfg("minmax"))
    ms, _ = quantize(stack_, pol, x, _cfg("mse"))
    assert torch.all(ms.c2.weight_quant.step_value() <= mm.c2.weight_quant.step_value() + 1e-12)
    assert torch.any(ms.c2.weight_quant.step_value() < mm.c2.weight_quant.step_value())


@pytest.mark.parametrize("name", ["minmax", "gptq"])
def test_bias_correction_gives_each_output_channel_the_float_models_mean(name, stack):
    x = _data()
    for p in ("w2a8", "w2a16"):
        policy = Policy({"c1": Precision.parse(p)})
        q, report = quantize(stack, policy, x, _cfg(name, bias_correction=True))
        ref = apply(stack, Policy({}))
        with torch.no_grad():
            xt = torch.from_numpy(x)
            mean_q, mean_f = q.c1(xt).mean((0, 2, 3)), ref.c1(xt).mean((0, 2, 3))
            uncorrected = quantize(stack, policy, x, _cfg(name, bias_correction=False))[0].c1(xt).mean((0, 2, 3))
        # what is left is the bias's own rounding: steps of input scale x weight scale, coarse
        # beside 8-bit inputs, fine beside 16-bit ones
        assert torch.all((mean_q - mean_f).abs() <= 0.5 * q.c1.bias_scale() + 1e-5), p
        if p == "w2a16":
            assert (mean_q - mean_f).abs().max() < 0.05 * (uncorrected - mean_f).abs().max()
    assert report.layers["c1"]["bias_shift"] > 0


def test_the_walk_feeds_each_layer_the_quantized_earlier_layers_outputs(stack):
    x = _data(32)
    q = calibrate(apply(stack, Policy.uniform(trace(stack, (1, 8, 8)), "w2a8")), [torch.from_numpy(x)])
    f = apply(stack, Policy({}))
    xs = [torch.from_numpy(x)]
    units = {}
    for u in walk(f, q, xs, Walk(("c1", "c2", "fc"), need_float=True)):
        units[u.layers[0]] = (u.inputs[0][0].clone(), u.float_inputs[0][0].clone())
    with torch.no_grad():
        want_q = torch.relu(q.c1(xs[0]))  # BatchNorm is folded: c1's output goes through ReLU to c2
        want_f = torch.relu(f.c1(xs[0]))
    assert torch.allclose(units["c2"][0], want_q, atol=1e-6) and torch.allclose(units["c2"][1], want_f, atol=1e-6)
    assert not torch.allclose(units["c2"][0], units["c2"][1])
    independent = list(walk(f, q, xs, Walk(("c2",), sequential=False)))
    assert torch.allclose(independent[0].inputs[0][0], want_f, atol=1e-6)


class Plain(nn.Module):
    """Conv-ReLU x2 and a linear head, no BatchNorm (folding needs torch.fx too)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.fc = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 16, 3, padding=1), nn.Linear(1024, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.c2(torch.relu(self.c1(x)))).flatten(1))


class Branchy(Plain):
    """The same layers, but a forward torch.fx cannot trace (control flow on a value)."""

    def forward(self, x):
        if float(x.mean()) > 100:  # never true; fx cannot know
            x = x * 0
        return super().forward(x)


def test_a_model_torch_fx_cannot_trace_is_walked_with_hooks_to_the_same_result():
    torch.manual_seed(0)
    plain, branchy = Plain().eval(), Branchy().eval()
    branchy.load_state_dict(plain.state_dict())
    x = _data()
    policy = Policy.uniform(trace(plain, (1, 8, 8)), "w3a8")
    a, _ = quantize(plain, policy, x, _cfg("gptq", bias_correction=True))
    b, report = quantize(branchy, policy, x, _cfg("gptq", bias_correction=True))
    assert any("torch.fx cannot trace" in n for n in report.notes)
    for layer in ("c1", "c2", "fc"):
        assert torch.allclose(a.get_submodule(layer).weight, b.get_submodule(layer).weight, atol=1e-6)


def test_blocks_are_the_residual_blocks_and_inverted_residuals():
    from edgempq.zoo import ZOO

    r8 = ZOO["mnist_resnet8"].build(10, 1)
    layers = {la.name for la in trace(r8, (1, 28, 28)) if la.searchable}
    assert block_paths(r8, layers) == ["layer1.0", "layer2.0", "layer3.0"]
    mb = ZOO["mnist_mobilenet"].build(10, 1)
    layers = {la.name for la in trace(mb, (1, 28, 28)) if la.searchable}
    assert block_paths(mb, layers) == [f"features.{i}" for i in range(1, 7)]


def test_block_reconstruction_learns_a_whole_residual_block():
    from edgempq.zoo import ZOO

    torch.manual_seed(0)
    r8 = ZOO["mnist_resnet8"].build(10, 1).eval()
    x = np.random.default_rng(0).standard_normal((48, 1, 28, 28)).astype(np.float32)
    policy = Policy.uniform(trace(r8, (1, 28, 28)), "w3a8")
    cfg = QuantConfig(weights="adaround", weight_params={"granularity": "block", "iters": 60, "batch_size": 8})
    q, report = quantize(r8, policy, x, cfg)
    info = report.layers["layer2.0.conv1"]
    assert info["block"] == "layer2.0.downsample.0,layer2.0.conv1,layer2.0.conv2"
    assert info["error"] < info["rtn_error"]
    assert "block" not in report.layers["conv1"]  # the stem is a layer of its own
    assert not any("found no block" in n for n in report.notes)


def test_block_reconstruction_says_so_when_the_model_has_no_blocks(stack):
    policy = Policy.uniform(trace(stack, Stack.input_shape), "w4a8")
    cfg = QuantConfig(weights="adaround", weight_params={"granularity": "block", "iters": 20, "batch_size": 16})
    _, report = quantize(stack, policy, _data(), cfg)
    assert any("found no block of two or more integer layers" in n for n in report.notes)


def test_a_conv_input_as_columns_reproduces_the_conv():
    torch.manual_seed(0)
    for conv in (nn.Conv2d(3, 5, 3, stride=2, padding=1), nn.Conv2d(4, 4, 3, padding="same", groups=4),
                 nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect", bias=False)):
        x = torch.randn(2, conv.in_channels, 7, 7)
        cols = columns(conv, x)  # groups, columns, d
        out = (cols @ weight_matrix(conv).float().transpose(1, 2))  # groups, columns, rows
        want = conv._conv_forward(x, conv.weight, None)
        n, c, h, w = want.shape
        got = out.reshape(conv.groups, n, h * w, -1).permute(1, 0, 3, 2).reshape(n, c, h, w)
        assert torch.allclose(got, want, atol=1e-5), conv


def test_a_transposed_conv_input_as_columns_reproduces_it():
    """A ConvTranspose2d is the stride-1 conv of its flipped kernel on the zero-inserted input:
    its columns and weight matrix reproduce it, sampled columns too, and the matrix goes back."""
    torch.manual_seed(0)
    for kw in ({"stride": 2}, {"stride": 2, "padding": 1, "output_padding": 1},
               {"stride": (2, 3), "padding": (2, 0), "output_padding": (1, 2)}, {"stride": 3, "padding": 2}):
        t = nn.ConvTranspose2d(5, 4, (3, 2), bias=False, **kw)
        x = torch.randn(2, 5, 6, 7)
        want = t(x).detach()
        n, c, h, w = want.shape
        cols = columns(t, x)
        assert column_count(t, x) == n * h * w == cols.shape[1]
        got = (cols @ weight_matrix(t).float().transpose(1, 2))[0]  # columns, out channels
        assert torch.allclose(got, want.permute(0, 2, 3, 1).reshape(-1, c), atol=1e-5), kw
        pick = torch.tensor([0, 7, n * h * w - 1])
        assert torch.equal(columns(t, x, pick), cols[:, pick])
        assert torch.equal(from_matrix(t, weight_matrix(t)).float(), t.weight.detach())


def test_moments_give_the_layer_output_error():
    lin = nn.Linear(5, 3)
    x = torch.randn(200, 5)
    m = collect(lin, [(x,)], [(x * 1.1,)])
    w = weight_matrix(lin)
    w_hat = w + 0.01 * torch.randn_like(w)
    ref = (1.1 * x).double() @ w[0].T
    direct = ((x.double() @ w_hat[0].T - ref) ** 2).sum() / ref.pow(2).sum()
    assert m.relative_error(w_hat, w) == pytest.approx(float(direct), rel=1e-4)


def test_quant_config_round_trips_and_refuses_keys_of_another_version():
    cfg = QuantConfig(weights="adaround", weight_params={"iters": 10}, bias_correction=True)
    assert QuantConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown key.*weight_method.*deploy again"):
        QuantConfig.from_dict({**cfg.to_dict(), "weight_method": "minmax"})
    with pytest.raises(ConfigError, match="adaround granularity must be layer or block"):
        QuantConfig(weights="adaround", weight_params={"granularity": "net"})


def test_sampled_columns_are_the_unfolded_ones():
    torch.manual_seed(0)
    for conv in (nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=4),
                 nn.Conv2d(2, 3, (3, 1), padding="same", padding_mode="reflect"), nn.Linear(5, 2)):
        x = torch.randn(3, 4, 5) if isinstance(conv, nn.Linear) else torch.randn(3, conv.in_channels, 9, 8)
        x = x[..., :5] if isinstance(conv, nn.Linear) else x
        every = columns(conv, x)
        assert every.shape[1] == column_count(conv, x)
        pick = torch.randperm(every.shape[1])[:7]
        assert torch.equal(columns(conv, x, pick), every[:, pick]), conv


def test_quantize_takes_float64_samples_and_keeps_a_near_zero_channels_bias(stack):
    with torch.no_grad():
        stack.b1.weight[3] = 1e-12  # after folding, channel 3's weights are ~0 and its bias is the BN offset
        stack.b1.bias[3] = 0.7
    x = _data().astype(np.float64)
    q, report = quantize(stack, Policy({"c1": Precision.parse("w4a8")}), x, _cfg("gptq"))
    with torch.no_grad():
        out = q.c1(torch.from_numpy(x).float())
        ref = apply(stack, Policy({})).c1(torch.from_numpy(x).float())
    assert torch.allclose(out[:, 3], ref[:, 3], atol=0.02)  # clamping the bias to int32 would give ~0
    assert any("layer c1: the weight step of 1 channel(s) was widened" in n for n in report.notes)
    assert int(q.c1.bias_codes().abs().max()) < 2**31 - 1


class Sometimes(Plain):
    """Skips c2 for batches of fewer than 64 samples: a layer not every calibration batch reaches."""

    def forward(self, x):
        x = torch.relu(self.c1(x))
        x = torch.relu(self.c2(x)) if x.shape[0] >= 64 else x.repeat(1, 2, 1, 1)
        return self.fc(x.flatten(1))


def test_the_hook_walk_refuses_a_layer_some_batches_skip():
    torch.manual_seed(0)
    m = Sometimes().eval()
    x = _data(100)  # batches of 64 and 36: c2 is skipped in the second
    with pytest.raises(ConfigError, match=r"layer c2 ran on 1 of the 2 calibration batches .* use --ptq minmax"):
        quantize(m, Policy({"c2": Precision.parse("w4a8")}), x, _cfg("gptq"))


def test_batchnorm_of_a_model_torch_fx_cannot_trace_is_folded_from_a_forward_pass(stack):
    from edgempq.quant.fold import fold_batchnorm

    class BranchyBN(Stack):
        def forward(self, x):
            if float(x.mean()) > 100:
                x = x * 0
            return super().forward(x)

    m = BranchyBN().eval()
    m.load_state_dict(stack.state_dict())
    x = torch.from_numpy(_data(8))
    assert fold_batchnorm(apply(m, Policy({}), QuantConfig(fold_bn=False)), x) == [("c1", "b1"), ("c2", "b2")]
    a = apply(stack, Policy({}))
    b = apply(m, Policy({}), example=x)
    assert isinstance(b.b1, nn.Identity) and torch.allclose(a.c1.weight, b.c1.weight)
    assert torch.allclose(a(x), b(x), atol=1e-5)
