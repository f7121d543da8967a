"""Round to nearest on the min-max grid: each output channel's step is its largest weight
magnitude over 2^(b-1) - 1. What every converter does by default, and edgempq's first round."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..stream import Unit
from .base import ALGORITHMS, WeightAlgorithm


@ALGORITHMS.register("minmax")
class MinMax(WeightAlgorithm):
    """Nothing to learn: `apply` already set the min-max grid and rounding is to nearest."""

    name = "minmax"
    needs_walk = False

    @dataclass(frozen=True)
    class Params:
        """No settings."""

    def quantize(self, unit: Unit, qmodel: nn.Module, seed: int = 0) -> dict[str, dict[str, float]]:
        """Leave the unit as `apply` set it; nothing measured."""
        return {}
