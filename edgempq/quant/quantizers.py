"""Fake quantizers that round the way the TFLite artifact will (ai-edge-quantizer's rules):

* weights: symmetric, per output channel, zero point 0, scale = bound / (2^(b-1) - 1); narrow
  range [-(2^(b-1)-1), 2^(b-1)-1] from 8 bits up, full signed range below. The grid starts as
  min-max; a PTQ algorithm (`quant.weights`) may set it and the integer codes itself, and then
  calibration leaves it alone (`fixed`);
* activations: per tensor; asymmetric int (zero point, the range always holds 0) except 16-bit,
  which TFLite's 16x8 kernels require to be symmetric (narrow range, zero point 0);
* biases: integers on the scale input scale x weight scale, as the TFLite kernels add them.

Activation ranges come from min-max, percentile or MSE calibration; `learnable=True` turns a
step into an LSQ parameter (Esser et al. 2020) for QAT.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..errors import ConfigError

RANGE_METHODS = ("minmax", "percentile", "mse")
_MSE_GRID = 100  # candidate clipping ratios for MSE calibration
_SAMPLE_CAP = 1 << 16  # activation values kept per observer for percentile / MSE


def weight_qrange(bits: int) -> tuple[int, int]:
    """A `bits`-wide weight's integer range: symmetric at 8 bits and more, two's complement below."""
    qmax = 2 ** (bits - 1) - 1
    return (-qmax if bits >= 8 else -qmax - 1), qmax


def act_symmetric(bits: int) -> bool:
    """Whether a `bits`-wide activation has a zero point of 0 (16-bit ones, as TFLite's 16x8 kernels need)."""
    return bits == 16


def act_qrange(bits: int) -> tuple[int, int]:
    """A `bits`-wide activation's integer range (without the most negative code when symmetric)."""
    if act_symmetric(bits):
        qmax = 2 ** (bits - 1) - 1
        return -qmax, qmax
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def round_ste(x: Tensor) -> Tensor:
    """Round, with the straight-through gradient."""
    return x + (torch.round(x) - x).detach()


def grad_scale(x: Tensor, g: float) -> Tensor:
    """Identity in the forward pass; multiplies the gradient by g (LSQ's step-size scaling)."""
    return (x - x * g).detach() + x * g


def fake_quantize(x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int) -> Tensor:
    """Quantize and dequantize; gradients pass straight through inside the range."""
    q = torch.clamp(round_ste(x / scale) + zero_point, qmin, qmax)
    return (q - zero_point) * scale


def on_grid(x: Tensor, scale: float, zero_point: float, qmin: float, qmax: float) -> Tensor:
    """`x` rounded to nearest on a fixed integer grid, computed in float64 (a tensor between
    layers as the artifact holds it); gradients pass straight through."""
    q = torch.clamp(torch.round(x.detach().double() / scale) + zero_point, qmin, qmax)
    return x + (((q - zero_point) * scale).to(x.dtype) - x).detach()


def _check_method(method: str) -> None:
    if method not in RANGE_METHODS:
        raise ConfigError(f"unknown range method {method!r}; choose one of {', '.join(RANGE_METHODS)}")


def symmetric_bound(values: Tensor, bits: int, method: str, percentile: float) -> Tensor:
    """Per-row clipping bound of a [rows, n] tensor for symmetric quantization."""
    _check_method(method)
    a = values.abs()
    top = a.amax(dim=1)
    if method == "minmax":
        return top
    if method == "percentile":
        return _rank_value(a, percentile / 100.0)
    qmin, qmax = weight_qrange(bits)
    ratios = torch.linspace(1.0 / _MSE_GRID, 1.0, _MSE_GRID, dtype=values.dtype, device=values.device)
    best_err = torch.full_like(top, math.inf)
    best = top.clone()
    for r in ratios:
        bound = (top * r).clamp_min(1e-9)
        s = (bound / qmax).unsqueeze(1)
        err = (fake_quantize(values, s, torch.zeros_like(s), qmin, qmax) - values).pow(2).sum(1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, bound, best)
    return best


def _rank_value(rows: Tensor, q: float) -> Tensor:
    """Per-row q-quantile (nearest rank); unlike torch.quantile, fine for any tensor size."""
    k = min(rows.shape[1], max(1, math.ceil(q * rows.shape[1])))
    return rows.kthvalue(k, dim=1).values


def asymmetric_range(values: Tensor, bits: int, method: str, percentile: float) -> tuple[float, float]:
    """(low, high) clipping range of a 1-D sample for asymmetric quantization; holds 0."""
    _check_method(method)
    lo, hi = values.min().item(), values.max().item()
    if method == "percentile":
        row = values.reshape(1, -1)
        lo = _rank_value(row, 1 - percentile / 100.0).item()
        hi = _rank_value(row, percentile / 100.0).item()
    elif method == "mse":
        best = (math.inf, lo, hi)
        for r in torch.linspace(1.0 / _MSE_GRID, 1.0, _MSE_GRID, device="cpu").tolist():
            s, zp = asymmetric_qparams(lo * r, hi * r, bits)
            qmin, qmax = act_qrange(bits)
            err = (fake_quantize(values, s, zp, qmin, qmax) - values).pow(2).sum().item()
            if err < best[0]:
                best = (err, lo * r, hi * r)
        lo, hi = best[1], best[2]
    return min(lo, 0.0), max(hi, 0.0)


def asymmetric_qparams(lo: float, hi: float, bits: int) -> tuple[Tensor, Tensor]:
    """Scale and integer zero point for the range [lo, hi] (widened to hold 0)."""
    qmin, qmax = act_qrange(bits)
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-9) / (qmax - qmin)
    zp = round(qmin - lo / scale)
    return torch.tensor(scale, device="cpu"), torch.tensor(float(min(max(zp, qmin), qmax)), device="cpu")


class _StepQuantizer(nn.Module):
    """A quantizer whose step (scale) is a buffer set by calibration, or an LSQ parameter."""

    qmax: int

    def __init__(self, bits: int, scale: Tensor) -> None:
        super().__init__()
        self.bits = bits
        self.learnable = False
        self.register_buffer("scale", scale)

    def make_learnable(self) -> None:
        """Turn the step into an LSQ parameter, starting from its calibrated value."""
        if not self.learnable:
            s = self.scale.detach().clone()
            del self.scale
            self.scale = nn.Parameter(s)
            self.learnable = True

    def step(self, x: Tensor) -> Tensor:
        """The step to use on `x`: with LSQ, its gradient is scaled by 1/sqrt(n * qmax)."""
        if not self.learnable:
            return self.scale
        return grad_scale(self.scale.abs().clamp_min(1e-9), 1.0 / math.sqrt(math.prod(x.shape[1:]) * self.qmax))

    def step_value(self) -> Tensor:
        """The step the forward pass uses, detached: what the artifact must store."""
        s = self.scale.detach()
        return s.abs().clamp_min(1e-9) if self.learnable else s


class WeightQuantizer(_StepQuantizer):
    """Symmetric per-output-channel fake quantizer of a weight tensor. Its grid is min-max until
    a PTQ algorithm fixes it (`set_grid`); `codes` are the integers the artifact stores."""

    def __init__(self, bits: int, axis: int = 0) -> None:
        super().__init__(bits, torch.ones(1))
        self.qmin, self.qmax = weight_qrange(bits)
        self.fixed = False
        self.axis = axis  # the output-channel dimension (1 for a transposed conv's (in, out, kh, kw))

    @torch.no_grad()
    def calibrate(self, weight: Tensor) -> None:
        """The min-max grid: each channel's bound is its largest magnitude."""
        w = weight.detach().movedim(self.axis, 0)
        bound = w.reshape(w.shape[0], -1).abs().amax(dim=1).clamp_min(1e-9)
        shape = [1] * weight.dim()
        shape[self.axis] = -1
        self.scale.data = (bound / self.qmax).reshape(shape)

    @torch.no_grad()
    def set_grid(self, scale: Tensor) -> None:
        """Fix the per-channel step (shape: one per output channel); calibration keeps it."""
        self.scale.data = scale.detach().reshape(self.scale.shape).to(self.scale.dtype).clone()
        self.fixed = True

    @torch.no_grad()
    def codes(self, w: Tensor) -> Tensor:
        """The integer weights (int64), exactly those the forward pass multiplies by the step."""
        return torch.clamp(torch.round(w.detach() / self.step_value()), self.qmin, self.qmax).to(torch.int64)

    def forward(self, w: Tensor) -> Tensor:
        """`w` rounded to the per-channel grid, with the straight-through gradient."""
        return fake_quantize(w, self.step(w), torch.zeros((), dtype=w.dtype, device=w.device), self.qmin, self.qmax)

    def extra_repr(self) -> str:
        """The width and the grid's state, for printing."""
        axis = f", axis={self.axis}" if self.axis else ""
        return f"bits={self.bits}{axis}, fixed={self.fixed}, learnable={self.learnable}"


class ActQuantizer(_StepQuantizer):
    """Per-tensor fake quantizer of an activation; observes ranges while `observing` is set.
    Percentile and MSE look at a uniform random sample of every value observed."""

    def __init__(self, bits: int, method: str = "minmax", percentile: float = 99.99, seed: int = 0) -> None:
        super().__init__(bits, torch.ones(()))
        _check_method(method)
        self.method, self.percentile = method, percentile
        self.qmin, self.qmax = act_qrange(bits)
        self.symmetric = act_symmetric(bits)
        self.observing = False
        self.calibrated = False
        self.seed = seed
        self._gen: torch.Generator | None = None
        self._lo, self._hi = math.inf, -math.inf
        self._sample, self._keys = torch.zeros(0, device="cpu"), torch.zeros(0, device="cpu")
        self.register_buffer("zero_point", torch.zeros(()))

    def start_observing(self) -> None:
        """Forget the ranges seen so far and record those of the inputs that follow."""
        self.observing, self._lo, self._hi = True, math.inf, -math.inf
        self._sample, self._keys = torch.zeros(0, device="cpu"), torch.zeros(0, device="cpu")
        self._gen = torch.Generator().manual_seed(self.seed)  # same samples on every run

    @torch.no_grad()
    def _observe(self, x: Tensor) -> None:
        flat = x.detach().reshape(-1).float().cpu()  # observed and sampled on the CPU, whatever computes x
        self._lo, self._hi = min(self._lo, flat.min().item()), max(self._hi, flat.max().item())
        if self.method != "minmax":
            # Bottom-k sampling: every value seen gets a random key; the k smallest keys kept
            # so far are a uniform sample of all batches, whatever their number and size.
            keys = torch.cat([self._keys, torch.rand(flat.numel(), generator=self._gen, device="cpu")])
            vals = torch.cat([self._sample, flat])
            keep = keys.topk(min(_SAMPLE_CAP, keys.numel()), largest=False).indices
            self._sample, self._keys = vals[keep], keys[keep]

    @torch.no_grad()
    def finish_observing(self) -> None:
        """Set scale / zero point from what was observed."""
        self.observing = False
        if not math.isfinite(self._lo):
            return  # never reached by the calibration data; stays uncalibrated
        vals = self._sample if self._sample.numel() else torch.tensor([self._lo, self._hi], device="cpu")
        if self.symmetric:
            bound = symmetric_bound(vals.unsqueeze(0), self.bits, self.method, self.percentile)
            scale, zp = bound[0].clamp_min(1e-9) / self.qmax, torch.tensor(0.0, device="cpu")
        else:
            if self.method == "minmax":
                lo, hi = self._lo, self._hi
            else:
                lo, hi = asymmetric_range(vals, self.bits, self.method, self.percentile)
            scale, zp = asymmetric_qparams(lo, hi, self.bits)
        self.scale.data = scale.reshape(()).to(self.scale)  # the quantizer's dtype and device
        self.zero_point.data = zp.reshape(()).to(self.zero_point)
        self.calibrated, self._gen = True, None
        self._sample, self._keys = torch.zeros(0, device="cpu"), torch.zeros(0, device="cpu")

    def representable(self) -> tuple[float, float]:
        """(lowest, highest) real value the calibrated grid holds."""
        s, z = float(self.step_value()), float(self.zero_point)
        return (self.qmin - z) * s, (self.qmax - z) * s

    @torch.no_grad()
    def set_range(self, scale: float, zero_point: int) -> None:
        """Take a scale and zero point given from outside (the artifact's, so that the two agree)."""
        self.scale.data = torch.tensor(float(scale), dtype=self.scale.dtype, device=self.scale.device)
        self.zero_point.data = torch.tensor(float(zero_point), dtype=self.zero_point.dtype,
                                            device=self.zero_point.device)
        self.calibrated = True

    @torch.no_grad()
    def set_input_grid(self, grid: tuple[float, int, int, int] | None) -> None:
        """Round inputs to another integer grid first, (scale, zero point, qmin, qmax): where the
        artifact converts another width's integers into this layer's input (a QUANTIZE op)."""
        if grid is None:
            self.__dict__.pop("input_grid", None)
            self._buffers.pop("input_grid", None)
            return
        self.register_buffer("input_grid", torch.tensor([float(v) for v in grid], dtype=torch.float64,
                                                        device=self.scale.device))

    def forward(self, x: Tensor) -> Tensor:
        """`x` on the activation grid (after the input grid, if any); while observing, `x` unchanged."""
        if self.observing:
            self._observe(x)
            return x
        if not self.calibrated:
            raise ConfigError("an activation quantizer was used before calibration; run PTQ calibration first")
        grid = self._buffers.get("input_grid")
        if grid is not None:
            x = on_grid(x, *(float(v) for v in grid))
        return fake_quantize(x, self.step(x), self.zero_point, self.qmin, self.qmax)

    def extra_repr(self) -> str:
        """The width, symmetry and range method, for printing."""
        kind = "symmetric" if self.symmetric else "asymmetric"
        return f"bits={self.bits}, {kind}, method={self.method}, learnable={self.learnable}"


def bias_qrange(act_bits: int) -> tuple[int, int]:
    """A bias is int32 beside 8-bit activations and int64 beside 16-bit ones (TFLite's 16x8
    kernels); the range of int32 (the int64 range is beyond float32's integers)."""
    lim = 2**31 - 1
    return (-lim, lim) if act_bits <= 8 else (-(2**53), 2**53)


def fake_quantize_bias(bias: Tensor, scale: Tensor, act_bits: int) -> Tensor:
    """The bias as the integer kernel adds it: round(b / scale) on `scale` = input scale x
    weight scale (per output channel), with the straight-through gradient."""
    lo, hi = bias_qrange(act_bits)
    return torch.clamp(round_ste(bias / scale), lo, hi) * scale
