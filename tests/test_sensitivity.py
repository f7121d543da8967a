"""Sensitivity methods: each metric on hand-computable inputs, and one contract over every
registered method on a tiny residual network."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from edgempq.errors import ConfigError
from edgempq.layers import trace
from edgempq.schema import Precision, Sensitivity
from edgempq.sensitivity import RunOptions, SensData, compute, get_method, method_names, parse_params
from edgempq.sensitivity.csmpq import class_documents, tfidf
from edgempq.sensitivity.features import units
from edgempq.sensitivity.hawq import hutchinson_traces
from edgempq.sensitivity.ompq import centered_gram, cka, coefficients

PRECISIONS = [Precision.parse(p) for p in ("w2a8", "w4a8", "w8a8", "w4a16", "w8a16", "f16", "f32")]


class TinyRes(nn.Module):
    """stem conv-bn-relu, one residual block with a strided downsample, a depthwise conv, a
    pooled linear head; 1x8x8 inputs, 3 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU())
        self.conv1 = nn.Conv2d(4, 8, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.down = nn.Sequential(nn.Conv2d(4, 8, 1, stride=2, bias=False), nn.BatchNorm2d(8))
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = self.stem(x)
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        x = torch.relu(y + self.down(x))
        return self.fc(torch.relu(self.dw(x)).mean((2, 3)))


@pytest.fixture(scope="module")
def tiny():
    """A TinyRes trained a little on separable 3-class data (so losses and curvature are real)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 40)
    x = (rng.normal(size=(120, 1, 8, 8)) + y[:, None, None, None] * np.linspace(-1, 1, 8)).astype(np.float32)
    m = TinyRes()
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(15):
        opt.zero_grad()
        nn.functional.cross_entropy(m(xt), yt).backward()
        opt.step()
    m.eval()
    layers = trace(m, (1, 8, 8))
    precisions = {la.name: PRECISIONS for la in layers if la.searchable}
    return m, layers, precisions, SensData(x, y, "toy")


# -- OMPQ ---------------------------------------------------------------------------------------


def test_cka_is_one_for_identical_and_for_scaled_rotated_features():
    x = torch.randn(16, 10, generator=torch.Generator().manual_seed(0))
    q, _ = torch.linalg.qr(torch.randn(10, 10, generator=torch.Generator().manual_seed(1)))
    assert cka(centered_gram(x), centered_gram(x)) == pytest.approx(1.0)
    assert cka(centered_gram(x), centered_gram(3.5 * x @ q + 2.0)) == pytest.approx(1.0)  # CKA ignores shifts too


def test_cka_is_zero_for_orthogonal_features():
    # centred columns: x varies only over samples 0/1, z only over samples 2/3 -> H K_x H ⟂ H K_z H
    x = torch.tensor([[1.0], [-1.0], [0.0], [0.0]])
    z = torch.tensor([[0.0], [0.0], [1.0], [-1.0]])
    assert cka(centered_gram(x), centered_gram(z)) == pytest.approx(0.0, abs=1e-12)


def test_cka_of_constant_feature_is_zero_not_nan():
    assert cka(centered_gram(torch.ones(5, 3)), centered_gram(torch.randn(5, 3))) == 0.0


def test_ompq_coefficients_are_suffix_means_of_theta():
    orm = np.array([[1.0, 0.5, 0.1], [0.5, 1.0, 0.2], [0.1, 0.2, 1.0]])
    theta, coef = coefficients(orm, beta=1.0)
    assert theta == pytest.approx(np.exp([-0.6, -0.7, -0.3]) / np.exp(-0.3))  # up to the factor that keeps max θ = 1
    assert coef == pytest.approx([theta.mean(), theta[1:].mean(), theta[2]])


def test_ompq_penalties_reproduce_the_papers_objective(tiny):
    m, layers, precisions, data = tiny
    s = compute("ompq", m, layers, precisions, data, RunOptions({"objective": "bits"}))
    coef = np.array(s.info["coefficient"]) / max(s.info["coefficient"])
    names = [u[0] for u in s.info["units"]]
    # minimising Σ c (16 - bits) == maximising Σ c bits: the penalty difference of two widths is c × Δbits
    for name, c in zip(names, coef, strict=True):
        assert s.penalty(name, "w4a8") - s.penalty(name, "w8a8") == pytest.approx(4 * c)


def test_by_default_the_bit_objectives_weigh_each_widths_relative_error_on_the_layer(tiny):
    from edgempq.sensitivity.noise import relative_noise

    m, layers, precisions, data = tiny
    todo = [la for la in layers if la.searchable]
    errors = relative_noise(m, todo, precisions, torch.from_numpy(data.inputs[:32]))
    for method in ("ompq", "csmpq"):
        s = compute(method, m, layers, precisions, data)
        coef = dict(zip([u[0] for u in s.info["units"]], s.info.get("coefficient", s.info["theta"]), strict=True))
        top = max(coef.values())
        for name, c in coef.items():
            w4, w8 = errors[(name, "w4a8")][0], errors[(name, "w8a8")][0]
            assert w4 > 10 * w8 > 0  # a bit more halves the step: about 4x less error per bit
            assert s.penalty(name, "w4a8") - s.penalty(name, "w8a8") == pytest.approx(c / top * (w4 - w8), rel=1e-6)


def test_every_proxy_method_scores_16_bit_activations_better_than_8_bit_ones(tiny):
    # a target with both widths: int16 activations must be chosen because they help, so they
    # score better, float better still; at equal weights the difference is the activations'
    m, layers, _, data = tiny
    both = [Precision.parse(p) for p in ("f32", "w8a8", "w8a16", "w4a8", "w4a16")]
    precisions = {la.name: both for la in layers if la.searchable}
    for method in ("ompq", "csmpq", "hawq"):
        s = compute(method, m, layers, precisions, data)
        for name in precisions:
            if max(s.penalty(name, "w4a8"), s.penalty(name, "w4a16")) > 0:  # a layer the method weighs at all
                assert s.penalty(name, "w8a8") > s.penalty(name, "w8a16") >= s.penalty(name, "f32") == 0.0, method
                assert s.penalty(name, "w4a8") > s.penalty(name, "w4a16"), method


def test_residual_grouping_shares_the_block_conv_and_its_downsample(tiny):
    m, layers, _, _ = tiny
    _, unit_list = units(m, [la for la in layers if la.searchable], "residual")
    assert ("conv2", "down.0") in [u.layers for u in unit_list]
    s = compute("ompq", m, layers, tiny[2], tiny[3], RunOptions({"grouping": "residual", "objective": "bits"}))
    assert s.groups == (("conv2", "down.0"),)
    assert s.penalty("conv2", "w4a8") == pytest.approx(s.penalty("down.0", "w4a8"))  # one coefficient, split
    noise = compute("ompq", m, layers, tiny[2], tiny[3], RunOptions({"grouping": "residual"}))
    assert noise.groups == (("conv2", "down.0"),)  # the same split coefficient, weighing each layer's own error


# -- CSMPQ --------------------------------------------------------------------------------------


def test_tfidf_of_a_2x4_matrix_worked_by_hand():
    a = np.array([[1.0, 3.0, 0.0, 2.0], [1.0, 1.0, 2.0, 2.0]])
    # tf: c0 [.5 .75 0 .5], c1 [.5 .25 1 .5]; means 1.5 -> occurs c0 at s1,s3, c1 at s2,s3; df = 2, 2
    # mean tf where it occurs: c0 (.75+.5)/2 = .625, c1 (1+.5)/2 = .75; idf = ln(4/3)
    score, channels = tfidf(a)
    assert channels == pytest.approx([0.625 * math.log(4 / 3), 0.75 * math.log(4 / 3)])
    assert score == pytest.approx(0.6875 * math.log(4 / 3))


def test_tfidf_is_invariant_to_scale_and_to_the_order_of_channels_and_samples():
    a = np.random.default_rng(0).random((6, 9))
    base = tfidf(a)[0]
    assert tfidf(7.0 * a)[0] == pytest.approx(base)
    assert tfidf(a[::-1, ::-1])[0] == pytest.approx(base)


def test_tfidf_all_zero_sample_gives_finite_scores():
    a = np.array([[1.0, 0.0, 2.0], [3.0, 0.0, 1.0]])
    score, channels = tfidf(a)
    assert np.isfinite(score) and np.all(np.isfinite(channels))


def test_balance_coefficient_scales_tf_by_log_e_c_over_coe():
    a = np.random.default_rng(1).random((4, 8))
    assert tfidf(a, coe=2.0)[0] == pytest.approx(tfidf(a)[0] * math.log(math.e * 4 / 2.0))


def test_class_documents_pool_each_class():
    a = np.array([[1.0, 3.0, 5.0], [2.0, 2.0, 8.0]])
    assert class_documents(a, np.array([0, 0, 1])) == pytest.approx(np.array([[2.0, 5.0], [2.0, 8.0]]))


def test_csmpq_directions_and_class_documents_differ(tiny):
    m, layers, precisions, data = tiny
    qat = compute("csmpq", m, layers, precisions, data)
    ptq = compute("csmpq", m, layers, precisions, data, RunOptions({"mode": "ptq", "beta": 50.0}))
    by_class = compute("csmpq", m, layers, precisions, data, RunOptions({"documents": "classes"}))
    s = np.array(qat.info["tfidf"])
    assert np.argmax(qat.info["theta"]) == np.argmax(s)  # qat: more bits to higher TF-IDF
    assert np.argmax(ptq.info["theta"]) == np.argmin(s)  # ptq: θ = exp(−β s) reverses it
    assert by_class.info["tfidf"] != pytest.approx(qat.info["tfidf"])


# -- HAWQ ---------------------------------------------------------------------------------------


def test_hutchinson_trace_matches_the_exact_hessian_of_a_tiny_model():
    torch.manual_seed(0)
    lin = nn.Linear(3, 2)
    x, y = torch.randn(12, 3), torch.randint(0, 2, (12,))

    def loss_of(w):
        return nn.functional.cross_entropy(nn.functional.linear(x, w, lin.bias.detach()), y)

    exact = torch.autograd.functional.hessian(loss_of, lin.weight.detach()).reshape(6, 6).trace().item()
    w = lin.weight.detach().clone().requires_grad_(True)
    est = hutchinson_traces(lambda: loss_of(w), [w], probes=4000, tol=0.0, generator=torch.Generator().manual_seed(0))
    assert est[0] == pytest.approx(exact, rel=0.05)


def test_hawq_penalty_is_trace_per_parameter_times_quantization_error(tiny):
    m, layers, precisions, data = tiny
    s = compute("hawq", m, layers, precisions, data, RunOptions({"probes": 30, "act_share": 0}))
    assert all(s.penalty(n, "f32") == 0.0 for n in precisions)
    assert s.penalty("conv2", "w4a8") == pytest.approx(s.penalty("conv2", "w4a16"))  # weights only, as the paper
    assert any(s.penalty(n, "w2a8") > 0 for n in precisions)
    from edgempq.sensitivity.hawq import floored
    from edgempq.sensitivity.noise import quant_error

    # the head has no BatchNorm to fold: its weights are the model's
    trace = floored(s.info["avg_trace"])["fc"]
    expected = trace * quant_error(m.fc.weight.detach(), Precision.parse("w4a8"))
    assert s.penalty("fc", "w4a8") == pytest.approx(expected, rel=1e-6)


def test_a_non_positive_trace_estimate_makes_a_layer_the_least_sensitive_not_free():
    from edgempq.sensitivity.hawq import floored

    assert floored({"a": 2.0, "b": 0.5, "c": -1e-5, "d": 0.0}) == {"a": 2.0, "b": 0.5, "c": 0.5, "d": 0.5}
    assert floored({"a": -1.0}) == {"a": 1.0}  # nothing measured: every layer weighs its error alike


# -- measured -------------------------------------------------------------------------------------


@pytest.mark.parametrize("ptq", ["minmax", "gptq", "adaround"])
def test_measured_penalty_is_the_loss_increase_of_quantizing_one_layer_with_the_deployed_ptq(tiny, ptq):
    from edgempq.quant import QuantConfig, apply, quantize
    from edgempq.schema import Policy
    from edgempq.sensitivity.measured import mean_loss

    m, layers, precisions, data = tiny
    s = compute("measured", m, layers, {"conv2": [Precision.parse("w2a8")]}, data,
                RunOptions({"samples": 64, "ptq": ptq, "loss": "ce"}))
    x, y = data.batch(64, 0)
    float_model = apply(m, Policy({}))
    base = mean_loss(float_model, x, y, 64)
    q, _ = quantize(m, Policy({"conv2": Precision.parse("w2a8")}), x.numpy(), QuantConfig(weights=ptq))
    assert s.penalty("conv2", "w2a8") == pytest.approx(mean_loss(q, x, y, 64) - base, rel=1e-5)
    assert s.params["ptq"] == ptq
    # by default: the divergence from the float model's outputs (its own divergence is 0)
    kl = compute("measured", m, layers, {"conv2": [Precision.parse("w2a8")]}, data,
                 RunOptions({"samples": 64, "ptq": ptq}))
    with torch.no_grad():
        reference = float_model(x)
    assert kl.penalty("conv2", "w2a8") == pytest.approx(mean_loss(q, x, y, 64, reference), rel=1e-5)


def test_a_loss_measuring_method_refuses_an_unknown_ptq_algorithm_parameter_or_range(tiny):
    m, layers, precisions, data = tiny
    for method in ("measured", "clado"):
        with pytest.raises(ConfigError, match="unknown PTQ algorithm 'rtn'"):
            compute(method, m, layers, precisions, data, RunOptions({"ptq": "rtn"}))
        with pytest.raises(ConfigError, match="PTQ algorithm gptq has no parameter 'iters'"):
            compute(method, m, layers, precisions, data, RunOptions({"ptq": "gptq", "ptq_params": "iters=5"}))
        with pytest.raises(ConfigError, match=f"parameter act_range of method {method} must be one of minmax, "
                                              "percentile, mse, not 'wide'"):
            compute(method, m, layers, precisions, data, RunOptions({"act_range": "wide"}))


def test_a_loss_measuring_method_quantizes_with_the_algorithms_parameters_it_is_given():
    from edgempq.sensitivity import get_method, parse_params
    from edgempq.sensitivity.measured import ptq_config

    for method in ("measured", "clado"):
        p = parse_params(get_method(method), ["ptq=adaround", "ptq_params=iters=7, granularity=block",
                                              "bias_correction=false", "act_range=mse"])
        cfg = ptq_config(p)
        assert (cfg.weights, cfg.weight_params["iters"], cfg.weight_params["granularity"]) == ("adaround", 7, "block")
        assert (cfg.bias_correction, cfg.act_method) == (False, "mse")


# -- the contract, over every registered method -----------------------------------------------------

CHEAP = {"hawq": {"probes": 8}, "measured": {"samples": 48}, "clado": {"samples": 48}, "gmpq": {"epochs": 2},
         "limpq": {"epochs": 1}}


@pytest.mark.parametrize("name", method_names())
def test_method_contract(name, tiny):
    m, layers, precisions, data = tiny
    before = {k: v.clone() for k, v in m.state_dict().items()}
    s = compute(name, m, layers, precisions, data, RunOptions(CHEAP.get(name)))
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items()), "the model was changed"
    assert set(s.penalties) == {(n, str(p)) for n, ps in precisions.items() for p in ps}
    assert all(math.isfinite(v) for v in s.penalties.values())
    again = compute(name, m, layers, precisions, data, RunOptions(CHEAP.get(name)))
    assert again.penalties == s.penalties, "not deterministic for a seed"
    assert Sensitivity.from_json(s.to_json()) == s
    if get_method(name).monotone_exception is None:
        for n in precisions:
            for lo, hi in (("w2a8", "w4a8"), ("w4a8", "w8a8"), ("w4a16", "w8a16"), ("w8a8", "f32"), ("f16", "f32")):
                assert s.penalty(n, hi) <= s.penalty(n, lo) + 1e-12, f"{name}: {n} {hi} scored worse than {lo}"


def test_unknown_method_and_parameters_are_clear_errors():
    with pytest.raises(ConfigError, match="choose one of: clado, csmpq, gmpq, hawq, limpq, measured, ompq"):
        get_method("nope")
    with pytest.raises(ConfigError, match="has no parameter 'betta'; its parameters are: beta="):
        parse_params(get_method("ompq"), ["betta=1"])
    with pytest.raises(ConfigError, match="must be a finite number"):
        parse_params(get_method("ompq"), ["beta=high"])
    with pytest.raises(ConfigError, match="csmpq mode must be qat or ptq"):
        parse_params(get_method("csmpq"), ["mode=both"])
    assert parse_params(get_method("csmpq"), ["coe=2", "mode=ptq"]).coe == 2.0


def test_sensitivity_file_rejects_unknown_keys_and_duplicate_rows():
    s = Sensitivity("x", {("a", "w8a8"): 1.0}, pairs={(("a", "w8a8"), ("b", "w4a8")): 0.5}, groups=(("a", "b"),))
    d = s.to_dict()
    assert Sensitivity.from_dict(d) == s
    with pytest.raises(ConfigError, match="unknown key"):
        Sensitivity.from_dict(d | {"extra": 1})
    d["rows"] = d["rows"] * 2
    with pytest.raises(ConfigError, match="twice"):
        Sensitivity.from_dict(d)
    with pytest.raises(ConfigError, match="no score for layer a at w4a8"):
        s.penalty("a", "w4a8")


def test_gmpq_complexity_loss_is_off_by_default_and_pushes_the_largest_layers_to_fewer_bits(tiny):
    # the solver holds the budget; the paper's complexity pressure (by MACs) would decide π instead
    m, layers, precisions, data = tiny
    assert get_method("gmpq").Params().cd == 0.0
    plain = compute("gmpq", m, layers, precisions, data, RunOptions({"epochs": 2}))
    paper = compute("gmpq", m, layers, precisions, data, RunOptions({"epochs": 2, "cd": 3e-4}))
    big = max((la for la in layers if la.searchable), key=lambda la: la.macs).name
    def shift(s: Sensitivity) -> float:
        return s.penalty(big, "w8a8") - s.penalty(big, "w2a8")

    assert shift(paper) > shift(plain)  # 8 bits cost more against 2 under the complexity loss
