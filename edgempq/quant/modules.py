"""Conv1d / Conv2d / ConvTranspose2d / Linear that fake-quantize their weights, bias and input
activation at one Precision, and the QuantConfig that says how a policy is quantized after
training.

They subclass the float modules and keep their names, so a quantized copy has the same module
paths (and weight keys) as the float model."""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..layers import weight_axis
from ..schema import Precision
from .quantizers import RANGE_METHODS, ActQuantizer, WeightQuantizer, bias_qrange, fake_quantize_bias

DEFAULT_WEIGHTS = "gptq"  # chosen from tools/bench_ptq.py: see BENCHMARKS.md, "Low-bit PTQ"


@dataclass(frozen=True)
class QuantConfig:
    """How a policy is quantized after training: the weight algorithm (a `quant.weights` plugin,
    by name, with its parameters as key -> value), empirical bias correction after it, how
    activation ranges are calibrated, and BatchNorm folding (as deployment does)."""

    weights: str = DEFAULT_WEIGHTS
    weight_params: dict[str, Any] = field(default_factory=dict)
    bias_correction: bool = True
    act_method: str = "minmax"
    percentile: float = 99.99
    fold_bn: bool = True
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.act_method not in RANGE_METHODS:
            raise ConfigError(f"act_method must be one of {', '.join(RANGE_METHODS)}, not {self.act_method!r}")
        if not 50.0 < self.percentile <= 100.0:
            raise ConfigError(f"percentile must be in (50, 100], not {self.percentile}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, not {self.batch_size}")
        from .weights import algorithm  # fails early, listing the valid names and keys

        algorithm(self.weights, self.weight_params)

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-ready values (deploy.json records them)."""
        return asdict(self)

    def __hash__(self) -> int:  # weight_params is a dict
        import json

        return hash(json.dumps(self.to_dict(), sort_keys=True, default=str))

    @classmethod
    def from_dict(cls, d: Any, what: str = "the quantization settings") -> QuantConfig:
        """Read back `to_dict`; unknown keys (an older edgempq's file) are an error naming them."""
        known = {f.name for f in fields(cls)}
        if not isinstance(d, dict) or set(d) - known:
            extra = sorted(set(d) - known) if isinstance(d, dict) else []
            raise ConfigError(f"{what} has unknown key(s) {', '.join(extra) or '(not an object)'}; they were "
                              "written by another edgempq version: deploy again")
        for f in fields(cls):  # each value of its field's type (an int for a float), as to_dict wrote it
            kind = type(f.default_factory() if f.default is MISSING else f.default)
            v = d.get(f.name, f.default)
            if f.name in d and not (type(v) is kind or kind is float and type(v) is int):
                raise ConfigError(f"{what}'s {f.name} must be {kind.__name__}, not {type(v).__name__} {v!r:.40}; "
                                  "deploy again")
        try:
            return cls(**d)
        except ConfigError as e:
            raise ConfigError(f"{what} is not valid ({e}); deploy again") from None


class _QuantMixin:
    precision: Precision
    weight: nn.Parameter
    bias: nn.Parameter | None
    keeps_layer_function = True  # tracing treats it as the Conv2d / Linear it replaced

    def _setup(self, precision: Precision, cfg: QuantConfig) -> None:
        self.precision = precision
        self.weight_quant: nn.Module | None = None
        self.act_quant: nn.Module | None = None
        self.out_quant: nn.Module | None = None  # the artifact's output rounding, once deployed
        if not precision.is_float:
            self.weight_quant = WeightQuantizer(precision.weight_bits, weight_axis(self))
            self.weight_quant.calibrate(self.weight)
            self.act_quant = ActQuantizer(precision.act_bits, cfg.act_method, cfg.percentile, cfg.seed)

    def _qweight(self) -> Tensor:
        if self.weight_quant is not None:
            return self.weight_quant(self.weight)
        if self.precision.weight_bits == 16:
            return self.weight.half().float() + (self.weight - self.weight.detach())
        return self.weight

    def _qinput(self, x: Tensor) -> Tensor:
        return x if self.act_quant is None else self.act_quant(x)

    def _qoutput(self, y: Tensor) -> Tensor:
        return y if self.out_quant is None else self.out_quant(y)

    def set_output_rounding(self, quantizer: nn.Module | None) -> None:
        """Round this layer's output as its artifact op does (`quant.requant.OutputQuantizer`);
        None simulates a float output, as before deployment."""
        self.out_quant = quantizer

    def bias_scale(self) -> Tensor | None:
        """Per output channel, input scale x weight scale: the bias's scale in the integer
        kernel (None while the layer is float or its input range is not yet calibrated)."""
        aq, wq = self.act_quant, self.weight_quant
        if aq is None or wq is None or aq.observing or not aq.calibrated:
            return None
        return aq.step_value() * wq.step_value().reshape(-1)

    @torch.no_grad()
    def bias_codes(self) -> Tensor | None:
        """The integer bias the artifact stores (int64), None without a bias or a scale."""
        scale = self.bias_scale()
        if scale is None or self.bias is None:
            return None
        lo, hi = bias_qrange(self.precision.act_bits)
        return torch.clamp(torch.round(self.bias.detach() / scale), lo, hi).to(torch.int64)

    def _qbias(self) -> Tensor | None:
        scale = self.bias_scale()
        if scale is None or self.bias is None:
            return self.bias
        return fake_quantize_bias(self.bias, scale, self.precision.act_bits)


class QConv2d(_QuantMixin, nn.Conv2d):
    """A Conv2d with fake-quantized input, weights, bias and (optionally) output rounding."""

    def forward(self, x: Tensor) -> Tensor:
        """The convolution on the quantized input with the quantized weights and bias."""
        return self._qoutput(self._conv_forward(self._qinput(x), self._qweight(), self._qbias()))


class QConv1d(_QuantMixin, nn.Conv1d):
    """A Conv1d with fake-quantized input, weights, bias and (optionally) output rounding."""

    def forward(self, x: Tensor) -> Tensor:
        """The convolution on the quantized input with the quantized weights and bias."""
        return self._qoutput(self._conv_forward(self._qinput(x), self._qweight(), self._qbias()))


class QConvTranspose2d(_QuantMixin, nn.ConvTranspose2d):
    """A ConvTranspose2d with fake-quantized input, weights (per output channel, its dim 1), bias
    and (optionally) output rounding."""

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        """The transposed convolution on the quantized input with the quantized weights and bias."""
        pad = self._output_padding(x, output_size, list(self.stride), list(self.padding), list(self.kernel_size), 2,
                                   list(self.dilation))
        y = nn.functional.conv_transpose2d(self._qinput(x), self._qweight(), self._qbias(), self.stride,
                                           self.padding, pad, self.groups, self.dilation)
        return self._qoutput(y)


class QLinear(_QuantMixin, nn.Linear):
    """A Linear with fake-quantized input, weights, bias and (optionally) output rounding."""

    def forward(self, x: Tensor) -> Tensor:
        """The affine map on the quantized input with the quantized weights and bias."""
        return self._qoutput(nn.functional.linear(self._qinput(x), self._qweight(), self._qbias()))


QUANT_TYPES = (QConv1d, QConv2d, QConvTranspose2d, QLinear)
_QUANTIZED = {nn.Conv1d: QConv1d, nn.Conv2d: QConv2d, nn.ConvTranspose2d: QConvTranspose2d, nn.Linear: QLinear}


def quantize_module(module: nn.Module, precision: Precision, cfg: QuantConfig) -> nn.Module:
    """Turn a Conv1d / Conv2d / ConvTranspose2d / Linear (of a copy: this changes it in place)
    into its fake-quantized form: same parameters, same name in the model, quantizers added."""
    module.__class__ = next(q for t, q in _QUANTIZED.items() if isinstance(module, t))
    module._setup(precision, cfg)
    return module
