"""A policy's flash and RAM predicted from a profile (torch-free, for the solver).

Flash: each searched layer adds what its single-layer model measured (`CostRow.model_bytes`:
weights, bias, quantization parameters, the op), and the rest of the flatbuffer (the fixed
layers, the graph, what the single-layer models count once each) is a constant, measured as the
uniform whole models' bytes minus their layers' rows. Any policy stays a sum, so the solver
holds a flash budget exactly as it predicts it."""

from __future__ import annotations

import statistics

from .assign import uniform_assignment
from .costs import F32, weight_bytes
from .schema import CostTable, Layer, Precision


def layer_flash(table: CostTable | None, layer: Layer, precision: Precision) -> float:
    """The bytes `layer` adds to the flatbuffer at `precision`: its single-layer model's measured
    size, else (no profile) its weight bytes."""
    row = table.row(layer.signature, precision) if table is not None else None
    return float(row.model_bytes) if row is not None else float(weight_bytes(layer, precision))


def flash_offset(table: CostTable | None, layers: list[Layer]) -> tuple[float, bool]:
    """(bytes, measured): what the flatbuffer holds beyond its searched layers' rows, the median
    over the uniform whole models the profile measured; without them, the fixed layers' float
    weights (measured False)."""
    fixed = sum(weight_bytes(la, F32) for la in layers if not la.searchable)
    if table is None or not table.whole_bytes:
        return float(fixed), False
    rests = []
    for p, size in table.whole_bytes.items():
        assign = uniform_assignment(layers, table.target, p)
        if assign:
            rests.append(size - sum(layer_flash(table, la, assign[la.name]) for la in layers if la.searchable))
    return (float(statistics.median(rests)), True) if rests else (float(fixed), False)


def predicted_flash(table: CostTable | None, layers: list[Layer], precisions: dict[str, Precision]) -> float:
    """The flatbuffer's predicted bytes under `precisions`."""
    searched = sum(layer_flash(table, la, precisions[la.name]) for la in layers if la.searchable)
    return searched + flash_offset(table, layers)[0]
