"""The output rounding rules of LiteRT's kernels, in integers and as the simulation emulates them
on float outputs: both must give the same integers, including the half steps where rules part."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgempq.quant.requant import RULES, OutputQuantizer, quantize_multiplier, requantize


def test_the_q31_multiplier_represents_the_real_one():
    mult = np.array([0.5, 0.75, 0.04267456, 0.999999999, 1.7, 3e-5])
    q, e = quantize_multiplier(mult)
    assert np.all((q >= 2**30) & (q < 2**31))
    assert np.allclose(q * 2.0 ** (e - 31), mult, rtol=2**-30)


def test_rules_part_exactly_where_they_should():
    # M = 1/16 is 2^30 (Q31) and a right shift of 3: the first rounding is to eighths of a step,
    # so a value a sixteenth of a step below a half (0.4375) already rounds up
    mult = np.array([1 / 16])
    acc = np.array([[7], [8], [-8], [-9], [23], [-24], [-25], [6], [-7]])
    # real values: 0.4375, 0.5, -0.5, -0.5625, 1.4375, -1.5, -1.5625, 0.375, -0.4375
    assert requantize(acc, mult, "nearest").ravel().tolist() == [0, 0, 0, -1, 1, -2, -2, 0, 0]  # ties to even
    assert requantize(acc, mult, "double").ravel().tolist() == [1, 1, 0, 0, 2, -1, -1, 0, 0]  # ties up, twice
    assert requantize(acc, mult, "reduced").ravel().tolist() == [0, 1, 0, -1, 1, -1, -2, 0, 0]  # once, ties up
    # up, then away from zero: -0.4375 -> -3.5 eighths -> -3 -> -0.375 -> 0 (TFLite's reference)
    assert requantize(acc, mult, "gemmlowp").ravel().tolist() == [1, 1, -1, -1, 2, -2, -2, 0, 0]


def test_a_following_quantize_op_rounds_the_output_again_as_tflite_does():
    # an int16 output (scale 1e-4) that a QUANTIZE op turns into int8 (scale 0.02, zero point 3)
    quant = OutputQuantizer.build("reduced", (1e-4, 0, -32767, 32767), np.array([0.01]), channel_dim=-1,
                                  then=(0.02, 3, -128, 127))
    codes = np.arange(-30000, 30000, 37)
    y = torch.from_numpy((codes * 1e-4).astype(np.float32)).reshape(-1, 1)
    got = np.round(quant(y).double().numpy().ravel() / 0.02) + 3
    want = np.clip(requantize(codes.reshape(-1, 1), np.array([1e-4 / 0.02]), "gemmlowp").ravel() + 3, -128, 127)
    assert np.mean(got == want) >= 0.999


@pytest.mark.parametrize("rule", RULES)
def test_the_simulations_emulation_gives_the_kernels_integers(rule):
    rng = np.random.default_rng(1)
    mult = rng.uniform(0.003, 0.09, 6)
    acc = rng.integers(-4000, 4000, (500, 6))
    acc[:40] = np.round((rng.integers(-60, 60, (40, 6)) + 0.5) / mult).astype(np.int64)  # near half steps
    scale, zp = 0.05, -3
    want = np.clip(requantize(acc, mult, rule) + zp, -128, 127)
    quant = OutputQuantizer.build(rule, (scale, zp, -128, 127), mult, channel_dim=-1)
    # the float output a simulated layer gives: acc x input scale x weight scale, in float32
    s_in, s_w = 0.02, mult * scale / 0.02
    y = torch.from_numpy((acc * (s_in * s_w)).astype(np.float32))
    got = np.round(quant(y).double().numpy() / scale) + zp
    assert np.mean(got == want) >= 0.999, rule  # float32 outputs may miss an exact tie of the first rounding


def test_the_emulation_clamps_to_the_fused_activation_and_keeps_gradients():
    quant = OutputQuantizer.build("double", (0.1, -128, -128, -68), np.array([0.01, 0.02]), channel_dim=1)
    y = torch.tensor([[[[-5.0]], [[9.0]]]], requires_grad=True)
    out = quant(y)
    assert out.detach().ravel().tolist() == pytest.approx([0.0, 6.0])  # ReLU6 on a 0.1 grid
    out.sum().backward()
    assert y.grad.ravel().tolist() == [1.0, 1.0]


def test_the_report_reads_odd_rounding_records_without_failing():
    from edgempq.report import rounding_summary

    text = rounding_summary({"a": {"rule": "double", "matched": None}, "b": {"rule": "nearest", "matched": 0.5},
                             "c": "not a record"}, ["not", "a dict"], ["an add stays float", 3])
    assert "a (unknown)" in text and "b (50.0000 %)" in text and "Note: an add stays float." in text
    assert "1 double, 1 nearest" in text
