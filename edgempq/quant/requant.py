"""How an integer op rounds its accumulator to its output: the rules LiteRT's kernels use, exactly
in integers and emulated on the simulation's float outputs.

An integer conv or fully connected op computes acc = sum((x - x_zp) * w) + bias in int32/int64
and writes clamp(requantize(acc, M[c]) + out_zp) with M[c] = input scale x weight scale[c] /
output scale. Kernels differ in `requantize`, and the difference is systematic, not noise:

* ``nearest``: acc x M rounded to nearest (XNNPACK's fp32 requantization: int8 weights beside
  8-bit activations, and fully connected ops, on this machine's LiteRT);
* ``double``: M as a Q31 fixed-point multiplier and a right shift, rounded twice: the doubling
  high multiply rounds half up at 2^-shift, the shift then rounds half up again (ruy's
  requantization, which LiteRT's built-in conv kernels use, e.g. for int4 weights). Values just
  below a half step round up: up to 2^-(shift+1) of a step, on every value of the layer;
* ``reduced``: the Q31 multiplier cut to 16 bits and one shift rounding half up (the 16x8
  kernels, 16-bit activations);
* ``gemmlowp``: as ``double``, but the shift also rounds half away from zero (TFLite's reference
  requantization, e.g. a QUANTIZE op from int16 to int8).

The rule an artifact's op follows is measured, not assumed (`export.rounding`)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from .quantizers import on_grid

RULES = ("nearest", "double", "reduced", "gemmlowp")
Grid = tuple[float, int, int, int]  # an integer tensor's (scale, zero point, qmin, qmax)


def quantize_multiplier(mult: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per channel (q, e) with mult = q x 2^(e - 31), q a Q31 integer in [2^30, 2^31)."""
    mant, e = np.frexp(np.asarray(mult, np.float64))
    q = np.round(mant * 2.0**31).astype(np.int64)
    carry = q == 2**31
    return np.where(carry, 2**30, q), np.where(carry, e + 1, e).astype(np.int64)


def _reduced(q: np.ndarray) -> np.ndarray:
    return np.where(q < 0x7FFF0000, (q + (1 << 15)) >> 16, 0x7FFF)


def requantize(acc: np.ndarray, mult: np.ndarray, rule: str) -> np.ndarray:
    """The integer an op with `rule` writes for accumulators `acc` (int64, channels last) before
    its zero point and clamp; `mult` per channel (the last axis)."""
    acc = np.asarray(acc, np.int64)
    if rule == "nearest":
        return np.round(acc * np.asarray(mult, np.float64)).astype(np.int64)
    q, e = quantize_multiplier(mult)
    if rule in ("double", "gemmlowp"):
        left, right = np.maximum(e, 0), np.maximum(-e, 0)
        prod = (acc << left) * q
        high = (prod + (1 << 30)) >> 31  # the doubling high multiply rounds half up (gemmlowp, VQRDMULH)
        if rule == "gemmlowp":  # RoundingDivideByPOT: half away from zero
            mask = (np.int64(1) << right) - 1
            return (high >> right) + ((high & mask) > (mask >> 1) + (high < 0))
        half = np.where(right > 0, np.int64(1) << np.maximum(right - 1, 0), 0)
        return (high + half) >> right
    if rule == "reduced":
        shift = 15 - e
        return (acc * _reduced(q) + (np.int64(1) << (shift - 1))) >> shift
    raise ValueError(f"unknown rounding rule {rule!r}; choose one of {', '.join(RULES)}")


def _fixed_point(mult: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(2^shift, Q31 multiplier / real one) per channel: the first rounding's resolution, and
    the kernel's multiplier relative to the exact one."""
    q, e = quantize_multiplier(mult)
    return 2.0 ** np.maximum(-e, 0), q * 2.0 ** (e - 31) / mult


def _two_roundings(v: Tensor, p: Tensor, rule: str) -> Tensor:
    """`double` / `gemmlowp` on real values v (acc x M): half up at 1/p, then to an integer half
    up (`double`) or half away from zero (`gemmlowp`)."""
    high = torch.floor(v * p + 0.5)
    if rule == "double":
        return torch.floor(high / p + 0.5)
    return torch.sign(high) * torch.floor(torch.abs(high) / p + 0.5)


class OutputQuantizer(nn.Module):
    """An integer layer's output as its artifact op writes it: the op's output scale and zero
    point, the clamp of its fused activation, and its kernel's rounding rule, emulated on the
    float output (value / scale is acc x M up to float rounding)."""

    def __init__(self, channels: int, channel_dim: int) -> None:
        super().__init__()
        self.channel_dim = channel_dim
        self.register_buffer("scale", torch.ones((), dtype=torch.float64))
        self.register_buffer("zero_point", torch.zeros((), dtype=torch.float64))
        self.register_buffer("bounds", torch.tensor([-128.0, 127.0], dtype=torch.float64))
        self.register_buffer("rule", torch.zeros((), dtype=torch.int64))
        self.register_buffer("steps", torch.ones(channels, dtype=torch.float64))  # 2^shift of `double`
        self.register_buffer("factor", torch.ones(channels, dtype=torch.float64))  # kernel's M / exact M
        # a QUANTIZE op's grid the output is converted to next, rounded as `gemmlowp`: scale, zero
        # point, qmin, qmax, 2^shift and Q31 factor of its multiplier; all zero: none
        self.register_buffer("then", torch.zeros(6, dtype=torch.float64))

    @classmethod
    def build(cls, rule: str, grid: Grid, mult: np.ndarray, channel_dim: int,
              then: Grid | None = None) -> OutputQuantizer:
        """The quantizer of an op that rounds by `rule` onto its output `grid`, with per-channel
        multipliers `mult` along `channel_dim`, and optionally a QUANTIZE op onto `then` after it."""
        scale, zero_point, qmin, qmax = grid
        mult = np.asarray(mult, np.float64)
        steps, factor = np.ones_like(mult), np.ones_like(mult)
        if rule in ("double", "gemmlowp"):
            steps, factor = _fixed_point(mult)
        elif rule == "reduced":
            q, e = quantize_multiplier(mult)
            factor = _reduced(q) * 2.0 ** (e - 15) / mult
        elif rule != "nearest":
            raise ValueError(f"unknown rounding rule {rule!r}; choose one of {', '.join(RULES)}")
        out = cls(len(mult), channel_dim)
        out.scale.fill_(float(scale))
        out.zero_point.fill_(float(zero_point))
        out.bounds.copy_(torch.tensor([float(qmin), float(qmax)], dtype=torch.float64))
        out.rule.fill_(RULES.index(rule))
        out.steps.copy_(torch.from_numpy(steps))
        out.factor.copy_(torch.from_numpy(factor))
        if then is not None:
            step, fac = _fixed_point(np.array([scale / then[0]]))
            out.then.copy_(torch.tensor([*(float(v) for v in then), step[0], fac[0]], dtype=torch.float64))
        return out

    @property
    def rule_name(self) -> str:
        """The rounding rule's name, one of RULES."""
        return RULES[int(self.rule)]

    def _per_channel(self, t: Tensor, ndim: int) -> Tensor:
        shape = [1] * ndim
        shape[self.channel_dim] = -1
        return t.reshape(shape)

    def forward(self, y: Tensor) -> Tensor:
        """`y` rounded as the op writes it, with straight-through gradients."""
        v = y.detach().double() / self.scale * self._per_channel(self.factor, y.dim())
        rule = RULES[int(self.rule)]
        if rule == "nearest":
            q = torch.round(v)
        elif rule == "reduced":
            q = torch.floor(v + 0.5)
        else:
            q = _two_roundings(v, self._per_channel(self.steps, y.dim()), rule)
        q = torch.clamp(q + self.zero_point, self.bounds[0], self.bounds[1]) - self.zero_point
        if float(self.then[0]) > 0:  # a QUANTIZE op to another width
            s, z, lo, hi, p, fac = self.then
            q = torch.clamp(_two_roundings(q * (self.scale / s) * fac, p, "gemmlowp") + z, lo, hi) - z
            real = q * s
        else:
            real = q * self.scale
        out = real.to(y.dtype)
        return y + (out - y).detach()  # gradients pass straight through

    def extra_repr(self) -> str:
        """The rule and the channel count, for printing."""
        return f"rule={self.rule_name}, channels={len(self.steps)}"


class GridQuantizer(nn.Module):
    """A tensor between layers as the artifact holds it: rounded to nearest on an integer grid
    (scale, zero point, clamp), e.g. a residual add's int8 output."""

    def __init__(self, scale: float, zero_point: int, qmin: int, qmax: int) -> None:
        super().__init__()
        self.scale, self.zero_point, self.qmin, self.qmax = float(scale), float(zero_point), float(qmin), float(qmax)

    def forward(self, x: Tensor) -> Tensor:
        """`x` rounded to nearest on the grid and clamped."""
        return on_grid(x, self.scale, self.zero_point, self.qmin, self.qmax)

    def extra_repr(self) -> str:
        """The grid, for printing."""
        return f"scale={self.scale:g}, zero_point={self.zero_point:g}, range=[{self.qmin:g}, {self.qmax:g}]"
