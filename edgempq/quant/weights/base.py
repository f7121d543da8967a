"""The weight-quantization protocol of PTQ, its registry, and what the algorithms share: fixing
a layer's grid and integer codes in the fake-quantized model, and reporting the layer's output
error against round-to-nearest."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ...registry import Registry
from ..moments import Moments, channel_scale, collect, from_matrix, weight_matrix
from ..stream import Unit


class WeightAlgorithm:
    """A way to choose a layer's integer weights after training: `name`, a frozen `Params`
    with its paper's defaults, and `quantize(unit, qmodel)`, which fixes the grid and codes of
    every layer of the unit (in `qmodel`, in place) and returns what it measured per layer.
    Deterministic for a seed; never touches float layers (the walk gives it integer ones)."""

    name: ClassVar[str]
    Params: ClassVar[type]
    needs_walk: ClassVar[bool] = True  # False: the min-max grid set by `apply` is the answer

    def __init__(self, params: Any = None) -> None:
        self.params = params if params is not None else self.Params()

    @property
    def granularity(self) -> str:
        """`layer` or `block`: what one unit of the walk is."""
        return "layer"

    @property
    def need_float(self) -> bool:
        """Whether the float model's inputs and outputs are needed."""
        return False

    def quantize(self, unit: Unit, qmodel: nn.Module, seed: int = 0) -> dict[str, dict[str, float]]:
        """Fix the grid and codes of the unit's layers in `qmodel`; per layer, what was measured."""
        raise NotImplementedError  # pragma: no cover


ALGORITHMS: Registry[type[WeightAlgorithm]] = Registry("PTQ algorithm")


def algorithm_names() -> list[str]:
    """The registered PTQ algorithms' names, sorted."""
    return ALGORITHMS.names()


def algorithm(name: str, params: dict[str, Any] | list[str] | None = None) -> WeightAlgorithm:
    """The algorithm `name` with its parameters (`key=value` strings or a dict); an unknown
    name or key is a ConfigError listing the valid ones."""
    from ...params import parse_params

    cls = ALGORITHMS.get(name)
    return cls(parse_params(cls, params or {}, kind="PTQ algorithm"))


@torch.no_grad()
def set_codes(module: nn.Module, codes: Tensor, scale: Tensor) -> None:
    """Fix the layer's grid to `scale` (groups, rows, 1) and its integers to `codes`
    (groups, rows, d): the weight becomes codes x scale, which the fake quantizer reproduces
    exactly, so the simulation, QAT and the export all start from these integers."""
    module.weight.data = from_matrix(module, codes.double() * scale)
    module.weight_quant.set_grid(scale.float().reshape(-1))


MEMORY_SHARE = 0.5  # of the available memory a layer's statistics may take


def unaffordable(name: str, module: nn.Module, matrices: int) -> str | None:
    """Why the layer's d x d statistics (and their working copies) cannot be held in memory, or None."""
    import psutil

    from ..moments import inputs_per_output, statistics_bytes

    need = statistics_bytes(module, matrices)
    free = psutil.virtual_memory().available
    if need <= MEMORY_SHARE * free:
        return None
    return (f"layer {name}: its {inputs_per_output(module):,} inputs per output need {need / 2**30:.1f} GB of "
            f"statistics, more than half the {free / 2**30:.1f} GB free; rounded to nearest on its min-max grid "
            "instead")


def rtn_codes(w: Tensor, scale: Tensor, qmin: int, qmax: int) -> Tensor:
    """Round to nearest on the grid `scale`, clamped to the integer range."""
    return torch.clamp(torch.round(w / scale), qmin, qmax)


class LayerAlgorithm(WeightAlgorithm):
    """An algorithm that quantizes one layer at a time from its input moments: `solve` returns
    the (codes, scale) of the weight matrix; errors are reported against min-max rounding."""

    max_columns: ClassVar[int | None] = None  # None: moments.MAX_COLUMNS

    def solve(self, module: nn.Module, w: Tensor, m: Moments, qmin: int, qmax: int) -> tuple[Tensor, Tensor]:
        """The codes (groups, rows, d) and per-channel steps (groups, rows, 1) of weight matrix `w`."""
        raise NotImplementedError  # pragma: no cover

    def quantize(self, unit: Unit, qmodel: nn.Module, seed: int = 0) -> dict[str, dict[str, float]]:
        """Collect the layer's input moments, `solve`, fix the result; the errors before and after."""
        (name,) = unit.layers
        module = qmodel.get_submodule(name)
        why = unaffordable(name, module, 5 + (2 if self.need_float else 0))  # moments, factor, working copies
        if why:
            return {name: {"note": why}}
        kw = {} if self.max_columns is None else {"max_columns": self.max_columns}
        m = collect(module, unit.inputs, unit.float_inputs if self.need_float else None, seed, **kw)
        wq = module.weight_quant
        w = weight_matrix(module)
        rtn = rtn_codes(w, channel_scale(module), wq.qmin, wq.qmax) * channel_scale(module)
        codes, scale = self.solve(module, w, m, wq.qmin, wq.qmax)
        set_codes(module, codes, scale)
        return {name: {"rtn_error": m.relative_error(rtn, w), "error": m.relative_error(codes * scale, w)}}
