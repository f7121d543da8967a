"""Conv2d / Linear that fake-quantize their weights and input activation at one Precision.

They subclass the float modules and keep their names, so a quantized copy has the same module
paths (and weight keys) as the float model."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..schema import Precision
from .quantizers import RANGE_METHODS, ActQuantizer, WeightQuantizer


@dataclass(frozen=True)
class QuantConfig:
    """How ranges are calibrated; `fold_bn` folds BatchNorm first, as deployment does."""

    weight_method: str = "minmax"
    act_method: str = "minmax"
    percentile: float = 99.99
    fold_bn: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        for k in ("weight_method", "act_method"):
            if getattr(self, k) not in RANGE_METHODS:
                raise ConfigError(f"{k} must be one of {', '.join(RANGE_METHODS)}, not {getattr(self, k)!r}")
        if not 50.0 < self.percentile <= 100.0:
            raise ConfigError(f"percentile must be in (50, 100], not {self.percentile}")


class _QuantMixin:
    precision: Precision
    weight: nn.Parameter

    def _setup(self, precision: Precision, cfg: QuantConfig) -> None:
        self.precision = precision
        self.weight_quant: nn.Module | None = None
        self.act_quant: nn.Module | None = None
        if not precision.is_float:
            self.weight_quant = WeightQuantizer(precision.weight_bits, cfg.weight_method, cfg.percentile)
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


class QConv2d(_QuantMixin, nn.Conv2d):
    @classmethod
    def from_float(cls, conv: nn.Conv2d, precision: Precision, cfg: QuantConfig) -> QConv2d:
        q = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode)
        with torch.no_grad():
            q.weight.copy_(conv.weight)
            if conv.bias is not None:
                q.bias.copy_(conv.bias)
        q._setup(precision, cfg)
        return q

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(self._qinput(x), self._qweight(), self.bias)


class QLinear(_QuantMixin, nn.Linear):
    @classmethod
    def from_float(cls, lin: nn.Linear, precision: Precision, cfg: QuantConfig) -> QLinear:
        q = cls(lin.in_features, lin.out_features, lin.bias is not None)
        with torch.no_grad():
            q.weight.copy_(lin.weight)
            if lin.bias is not None:
                q.bias.copy_(lin.bias)
        q._setup(precision, cfg)
        return q

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(self._qinput(x), self._qweight(), self.bias)


QUANT_TYPES = (QConv2d, QLinear)


def quantize_module(module: nn.Module, precision: Precision, cfg: QuantConfig) -> nn.Module:
    if isinstance(module, nn.Conv2d):
        return QConv2d.from_float(module, precision, cfg)
    if isinstance(module, nn.Linear):
        return QLinear.from_float(module, precision, cfg)
    raise TypeError(type(module).__name__)
