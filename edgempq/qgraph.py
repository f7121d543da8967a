"""The quantized graph a policy makes of the float graph, derived without building it (torch-free).

ai-edge-quantizer, with the recipe edgempq writes (`export/mixed.policy_rules`), decides:
- a searched layer's op computes at its activation bits (32 when float), a fixed layer's at float;
- every other op (pads, pools, adds, reshapes) computes at the policy's common bits: its most
  common integer activation width, the narrower one on a tie (32 when every layer is float);
- the model's input and output are at the common bits, float when the layer nearest is float;
- a tensor read at other bits than it was written gets one conversion op (QUANTIZE, DEQUANTIZE)
  just before its first reader at those bits (an op's inputs in tensor order), its output a new
  tensor that later readers at those bits share.

The arena (`edgempq.arena`) plans these steps' tensors; the latency model (`edgempq.latency`)
costs them. A profile without the float graph's skeleton (older ones) is given the graph of its
layers alone (`layer_graph`): each layer an op reading its producers' outputs."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from .schema import Layer, Precision
from .schema.graph import Graph, GraphOp

FLOAT_BITS = 32


def bits_of(p: Precision) -> int:
    """The bits a layer at `p` computes its activations at (32 for float, f16 weights included)."""
    return FLOAT_BITS if p.is_float else p.act_bits


def domain_of(bits: int) -> str:
    """The domain of activations at `bits`: f (float), a8 or a16 (as `assign.domain` names them)."""
    return "f" if bits == FLOAT_BITS else f"a{bits}"


def common_bits(precisions: dict[str, Precision]) -> int:
    """The bits of the ops between layers: the most common integer activation width of the
    policy, the narrower on a tie; 32 when every layer is float."""
    c = Counter(p.act_bits for p in precisions.values() if not p.is_float)
    if not c:
        return FLOAT_BITS
    top = max(c.values())
    return min(b for b, n in c.items() if n == top)


def end_layers(graph: Graph, searched: set[str] | dict) -> tuple[str | None, str | None]:
    """The searched layers nearest the model's input and output, in op order (None without any)."""
    order = [o.layer for o in graph.ops if o.layer in searched]
    return (order[0], order[-1]) if order else (None, None)


def end_bits(graph: Graph, precisions: dict[str, Precision], common: int) -> tuple[int, int]:
    """Bits of the model's input and output: float when the layer nearest them is float."""
    first, last = end_layers(graph, precisions)
    if first is None:
        return common, common
    return (FLOAT_BITS if precisions[first].is_float else common), (FLOAT_BITS if precisions[last].is_float else common)


def op_bits(op: GraphOp, precisions: dict[str, Precision], common: int) -> int:
    """The bits `op` computes at under the policy."""
    p = precisions.get(op.layer)
    if p is not None:
        return bits_of(p)
    return FLOAT_BITS if op.layer else common  # a fixed layer's op stays float


@dataclass(frozen=True)
class Step:
    """One op of the quantized graph: a float-graph op (`op`) or a conversion (`op` None, from
    `from_bits` to `bits`), with the tensors it reads and writes."""

    op: GraphOp | None
    bits: int
    reads: tuple[int, ...]
    writes: tuple[int, ...]
    from_bits: int = 0


@dataclass(frozen=True)
class Quantized:
    """A policy's quantized graph: its steps in order, every tensor's element count (conversions'
    new tensors included), the layer whose output each tensor carries ("" none), the model's
    outputs as read (after their conversions) and the common bits."""

    steps: tuple[Step, ...]
    elements: dict[int, int]
    writer: dict[int, str]
    outputs: tuple[int, ...]
    common: int


def derive(graph: Graph, precisions: dict[str, Precision]) -> Quantized:
    """The quantized graph of `precisions` (every searchable layer's) on the float `graph`."""
    common = common_bits(precisions)
    in_bits, out_bits = end_bits(graph, precisions, common)
    bits = dict.fromkeys(graph.inputs, in_bits)
    elements, writer = dict(graph.elements), dict.fromkeys(graph.inputs, "")
    converted: dict[tuple[int, int], int] = {}
    steps: list[Step] = []
    fresh = graph.tensors

    def read(ts: tuple[int, ...], b: int) -> tuple[int, ...]:
        nonlocal fresh
        got = []
        for t in sorted(ts):  # the quantizer converts an op's inputs in tensor order
            if bits.get(t, b) != b and (t, b) not in converted:
                converted[(t, b)] = fresh
                bits[fresh], elements[fresh], writer[fresh] = b, elements[t], writer.get(t, "")
                steps.append(Step(None, b, (t,), (fresh,), bits[t]))
                fresh += 1
            got.append(converted.get((t, b), t) if bits.get(t, b) != b else t)
        return tuple(got)

    for o in graph.ops:
        b = op_bits(o, precisions, common)
        reads = read(o.inputs, b)
        for t in o.outputs:
            bits[t], writer[t] = b, o.layer if o.layer in precisions else ""
        steps.append(Step(o, b, reads, o.outputs))
    outputs = read(graph.outputs, out_bits)
    return Quantized(tuple(steps), elements, writer, outputs, common)


def layer_graph(layers: list[Layer], edges: tuple[tuple[str, str, int], ...]) -> Graph:
    """The graph of the searchable layers alone, for a profile without the float graph's
    skeleton: each layer an op reading its producers' outputs (the model's input when it has
    none); the layers no other reads are the outputs."""
    searched = [la for la in layers if la.searchable]
    out_of = {la.name: i + 1 for i, la in enumerate(searched)}  # tensor 0 is the input
    elements = {0: math.prod(searched[0].in_shape)} if searched else {0: 1}
    ops = []
    for la in searched:
        producers = [p for p, c, _ in edges if c == la.name and p in out_of]
        ops.append(GraphOp(la.kind.upper(), la.name, tuple(out_of[p] for p in producers) or (0,), (out_of[la.name],)))
        elements[out_of[la.name]] = math.prod(la.out_shape)
    read = {p for p, c, _ in edges if p in out_of and c in out_of}
    outputs = tuple(out_of[la.name] for la in searched if la.name not in read)
    return Graph(tuple(ops), elements, (0,), outputs, len(searched) + 1)
