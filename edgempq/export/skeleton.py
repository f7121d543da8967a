"""The float graph's skeleton, for predicting TFLite Micro's arena under any policy without
building it (see `edgempq.arena`): every op in flatbuffer order with the layer it carries, the
activation tensors it reads and writes, and each tensor's element count."""

from __future__ import annotations

import math

from ..schema.graph import FIXED, Graph, GraphOp
from .recipe import OpInfo


def skeleton(model: bytes, mapping: dict[str, OpInfo], fixed: dict[str, OpInfo]) -> Graph:
    """The skeleton of `model` (the float flatbuffer), its ops named by `mapping` (searchable
    layer -> op) and `fixed` (ops kept float); constant inputs (weights, biases) are left out."""
    from ai_edge_litert import schema_py_generated as schema

    root = schema.Model.GetRootAsModel(model, 0)
    g = root.Subgraphs(0)
    codes = {v: k for k, v in schema.BuiltinOperator.__dict__.items() if not k.startswith("_")}
    by_index = {op.index: name for name, op in mapping.items()}
    kept = {op.index for op in fixed.values()}

    def const(t: int) -> bool:
        b = root.Buffers(g.Tensors(t).Buffer())
        return b.DataLength() > 0 or b.Offset() > 1

    ops, used = [], set()
    for i in range(g.OperatorsLength()):
        o = g.Operators(i)
        code = root.OperatorCodes(o.OpcodeIndex())
        name = codes.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM")
        ins = tuple(int(t) for t in o.InputsAsNumpy() if t >= 0 and not const(int(t))) if o.InputsLength() else ()
        outs = tuple(int(t) for t in o.OutputsAsNumpy()) if o.OutputsLength() else ()
        layer = by_index.get(i) or (FIXED if i in kept or name == "TRANSPOSE_CONV" else "")
        ops.append(GraphOp(name, layer, ins, outs))
        used |= set(ins) | set(outs)
    inputs = tuple(int(t) for t in g.InputsAsNumpy())
    outputs = tuple(int(t) for t in g.OutputsAsNumpy())
    used |= set(inputs) | set(outputs)
    elements = {t: math.prod(int(d) for d in g.Tensors(t).ShapeAsNumpy()) if g.Tensors(t).ShapeLength() else 1
                for t in sorted(used)}
    return Graph(tuple(ops), elements, inputs, outputs, g.TensorsLength())
