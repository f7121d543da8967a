"""Conv2d / Linear that fake-quantize their weights and input activation at one Precision.

They subclass the float modules and keep their names, so a quantized copy has the same module
paths (and weight keys) as the float model."""

from __future__ import annotations

from dataclasses import dataclass

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
    keeps_layer_function = True  # tracing treats it as the Conv2d / Linear it replaced

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
    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(self._qinput(x), self._qweight(), self.bias)


class QLinear(_QuantMixin, nn.Linear):
    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(self._qinput(x), self._qweight(), self.bias)


QUANT_TYPES = (QConv2d, QLinear)


def quantize_module(module: nn.Module, precision: Precision, cfg: QuantConfig) -> nn.Module:
    """Turn a Conv2d / Linear (of a copy: this changes it in place) into its fake-quantized
    form: same parameters, same name in the model, quantizers added."""
    module.__class__ = QConv2d if isinstance(module, nn.Conv2d) else QLinear
    module._setup(precision, cfg)
    return module
