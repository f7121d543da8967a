"""The preflight: before anything is measured, the float model is converted to TFLite once and
every searchable layer is matched to the op that will carry its precision, so a model that cannot
deploy is refused in seconds with one sentence naming the PyTorch module, not after profiling,
sensitivity and search. Returns each layer's fate; nothing prints."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .schema import Layer

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

    @property
    def searchable(self) -> int:
        """How many layers the search chooses a precision for."""
        return sum(f.reason is None for f in self.fates)


def preflight(module: nn.Module, input_shape: tuple[int, ...], layers: list[Layer],
              images: np.ndarray | None = None) -> Preflight:
    """Convert `module` (float, eval mode) and map its `layers`; a conversion or mapping failure is a
    ConversionError naming the module or layer and what to do."""
    from .errors import ConversionError
    from .export.float_graph import float_tflite
    from .export.mapping import map_layers, torch_weights

    t = time.perf_counter()
    base = float_tflite(module, input_shape, images)
    try:
        ops = map_layers(layers, base, torch_weights(module, layers))
    except ConversionError as e:
        raise ConversionError(f"{e} (found by the preflight, before anything was measured); replace the module "
                              "or report the model") from None
    fates = tuple(Fate(la.name, la.kind, ops[la.name].op, ops[la.name].index) if la.searchable
                  else Fate(la.name, la.kind, reason=la.fixed_reason) for la in layers)
    return Preflight(fates, len(base), time.perf_counter() - t)
