"""The preflight: before anything is measured, the float model is converted to TFLite once and
every searchable layer is matched to the op that will carry its precision, so a model that cannot
deploy is refused in seconds with one sentence naming the PyTorch module, not after profiling,
sensitivity and search. A layer whose weights the converter changes (it folds the op after it
into them, e.g. hard-sigmoid's x/6) cannot carry the simulation's integers: it is kept float,
said in its fate, and the profile records it so the search keeps it at f32. Returns each
layer's fate; nothing prints."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .errors import ConfigError
from .schema import CostTable, Layer

if TYPE_CHECKING:
    import numpy as np
    from torch import nn


@dataclass(frozen=True)
class Fate:
    """What deploy will do with one layer: the TFLite op that carries its precision, or why it stays float."""

    layer: str
    kind: str
    op: str | None = None
    op_index: int | None = None
    reason: str | None = None  # set for a layer kept float


@dataclass(frozen=True)
class Preflight:
    """Every layer's fate, the float artifact's size and how long the check took."""

    fates: tuple[Fate, ...]
    tflite_bytes: int
    seconds: float
    folded: dict[str, str] = field(default_factory=dict)  # layer -> why the converter's weights keep it float

    @property
    def searchable(self) -> int:
        """How many layers the search chooses a precision for."""
        return sum(f.reason is None for f in self.fates)


FOLDED = ("the converter folds the op after it into its weights (e.g. hard-sigmoid's x/6), so the artifact "
          "cannot carry quantized ones; kept at f32")


def preflight(module: nn.Module, input_shape: tuple[int, ...], layers: list[Layer],
              images: np.ndarray | None = None) -> Preflight:
    """Convert `module` (float, eval mode, its BatchNorms folded as deploy folds them) and map its
    `layers`; a conversion or mapping failure is a ConversionError naming the module or layer and
    what to do."""
    from .errors import ConversionError
    from .export.exact import changed_weights
    from .export.float_graph import float_tflite
    from .export.mapping import map_layers, torch_weights
    from .layers import cannot_convert

    t = time.perf_counter()
    for name, m in module.named_modules():
        if why := cannot_convert(m):
            raise ConversionError(f"module '{name}' ({type(m).__name__}): {why} (found by the preflight, before "
                                  "anything was measured)")
    work = _folded(module, input_shape)
    base = float_tflite(work, input_shape, images)
    try:
        ops = map_layers(layers, base, torch_weights(work, layers))
    except ConversionError as e:
        raise ConversionError(f"{e} (found by the preflight, before anything was measured); replace the module "
                              "or report the model") from None
    kinds = {la.name: la.kind for la in layers}
    folded = {n: FOLDED for n in changed_weights(base, {n: o.index for n, o in ops.items()}, work, kinds)}
    fates = tuple(Fate(la.name, la.kind, ops[la.name].op, ops[la.name].index, folded.get(la.name)) if la.searchable
                  else Fate(la.name, la.kind, reason=la.fixed_reason) for la in layers)
    return Preflight(fates, len(base), time.perf_counter() - t, folded)


def _folded(module: nn.Module, input_shape: tuple[int, ...]) -> nn.Module:
    """A copy of `module` with its BatchNorms folded into the layers before them, as deploy folds
    them (so that what remains of a difference in the converted weights is the converter's)."""
    import copy

    import torch

    from .quant.fold import fold_batchnorm

    work = copy.deepcopy(module).eval()
    example = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0))
    fold_batchnorm(work, example)
    return work


def converter_fixed(table: CostTable, named: set[str]) -> tuple[tuple[str, str], ...]:
    """(layer, "f32") for each layer the profile's preflight found the converter folds into (those
    in `named`, fixed by the user, are left to them); a target that runs no float for such a
    layer is a ConfigError saying what to do."""
    out = []
    by_name = {la.name: la for la in table.layers}
    for name in table.folded:
        if name in named or name not in by_name:
            continue
        kind = by_name[name].kind
        if "f32" not in {str(p) for p in table.target.allowed(kind)}:
            raise ConfigError(f"layer {name}: the converter folds the op after it into its weights (e.g. "
                              f"hard-sigmoid's x/6), so it can only run float, but target {table.target.name} "
                              f"offers no float for {kind} layers; give the target f32 for them (a copy of its "
                              "file with f32 in its precisions) or replace the module after it")
        out.append((name, "f32"))
    return tuple(out)
