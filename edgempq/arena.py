"""TFLite Micro's arena for any policy, predicted without building the model (torch-free).

The arena is a head, where the greedy memory planner lays out the activation tensors by their
lifetimes, and a tail of persistent bytes (a struct per tensor and op, each op's data). The
profile keeps the float graph's skeleton (`Graph`) and measures the uniform whole models'
arenas; a policy's quantized graph follows from the skeleton by the quantizer's rules:
- a searched layer's op computes at its activation bits, a fixed layer's at float, every other
  op (pads, pools, adds) at the policy's most common integer bits;
- a tensor read at other bits than it was written gets a conversion op (QUANTIZE, DEQUANTIZE)
  just before its first reader at those bits (an op's inputs in tensor order), shared by later
  readers, its output a new tensor;
- the model's input and output are at the common bits (float when the layer nearest is float).
The head replays TFLite Micro's GreedyMemoryPlanner (largest buffer first, equal sizes in
reverse tensor order, each at the lowest offset clear of the buffers alive with it; tensors
aligned to 16 bytes; an int4 conv's unpacked weights and an integer transposed conv's
accumulators as scratch for their op). The tail is the uniform model's measured arena less its
predicted head, plus what a policy adds: a conversion op's node, tensor and data, an int4 conv's
extra data. Checked against TFLite Micro on 228 mixed policies of four MLPerf Tiny models: all
within 0.03 % (tools/bench_arena.py)."""

from __future__ import annotations

import functools
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

from .schema import Layer, Precision
from .schema.graph import Graph

ALIGN = 16
CONVERSION_TAIL = 120  # a QUANTIZE/DEQUANTIZE op's persistent bytes: node 64, eval tensor 24, op data 32
INT4_TAIL = 8  # an int4 conv's extra persistent bytes


@dataclass(frozen=True)
class Arena:
    """A predicted arena: its total, planned head and persistent tail (bytes), and the searched
    layers whose tensors are alive where the plan peaks (what a policy must change to shrink it)."""

    total: int
    head: int
    tail: int
    peak_layers: tuple[str, ...]


def _bits(p: Precision) -> int:
    return 32 if p.is_float else p.act_bits


def _common_bits(precisions: dict[str, Precision]) -> int:
    c = Counter(p.act_bits for p in precisions.values() if not p.is_float)
    return c.most_common(1)[0][0] if c else 32


@dataclass
class _Planned:
    """The quantized graph's buffers: (bytes, first op, last op, tensor order, producing layer)."""

    buffers: list[tuple[int, int, int, int, str]]
    conversions: int
    int4_convs: int


def _end_bits(graph: Graph, precisions: dict[str, Precision], a: int) -> tuple[int, int]:
    """Bits of the model's input and output: float when the layer nearest them is float."""
    order = [o.layer for o in graph.ops if o.layer in precisions]
    if not order:
        return a, a
    return (32 if precisions[order[0]].is_float else a), (32 if precisions[order[-1]].is_float else a)


def plan(graph: Graph, layers: dict[str, Layer], precisions: dict[str, Precision]) -> _Planned:
    """The buffers TFLite Micro plans for `precisions`: each tensor with its lifetime, the
    conversions the quantizer inserts, and each op's scratch."""
    a = _common_bits(precisions)
    in_bits, out_bits = _end_bits(graph, precisions, a)
    bits = dict.fromkeys(graph.inputs, in_bits)
    elements = dict(graph.elements)
    writer = dict.fromkeys(graph.inputs, "")
    first, last = dict.fromkeys(graph.inputs, 0), dict.fromkeys(graph.inputs, 0)
    converted: dict[tuple[int, int], int] = {}
    step, fresh, scratch = 0, graph.tensors, []
    int4 = 0

    def convert(t: int, b: int) -> int:
        """The tensor the reader reads: `t` at bits `b`, through a conversion op placed now."""
        nonlocal step, fresh
        if bits.get(t, b) == b:
            return t
        if (t, b) not in converted:  # a conversion op just before the reader
            converted[(t, b)] = fresh
            bits[fresh], elements[fresh], writer[fresh] = b, elements[t], writer.get(t, "")
            first[fresh] = last[fresh] = step
            last[t] = step
            fresh, step = fresh + 1, step + 1
        return converted[(t, b)]

    def read(ts: list[int], b: int) -> list[int]:
        """An op's inputs at bits `b` (converted in tensor order), read at the op's step."""
        got = [convert(t, b) for t in sorted(ts)]  # the quantizer converts an op's inputs in tensor order
        for t in got:
            first.setdefault(t, step)
            last[t] = step
        return got

    for o in graph.ops:
        p = precisions.get(o.layer)
        b = _bits(p) if p is not None else 32 if o.layer else a
        read(list(o.inputs), b)
        for t in o.outputs:
            bits[t], writer[t] = b, o.layer if p is not None else ""
            first.setdefault(t, step)
            last[t] = max(last.get(t, step), step)
        need = _scratch(layers[o.layer], p, o.op) if p is not None else 0
        if need:
            scratch.append((need, step))
            int4 += o.op == "CONV_2D"
        step += 1
    outputs = read(list(graph.outputs), out_bits)
    for t in outputs:
        last[t] = step - 1 if step else 0
    bufs = [(_align(elements[t] * _bytes(bits[t])), first[t], last[t], t, writer.get(t, "")) for t in sorted(first)]
    bufs += [(_align(n), s, s, fresh + i, "") for i, (n, s) in enumerate(scratch)]
    return _Planned(bufs, len(converted), int4)


def _scratch(layer: Layer, p: Precision, op: str) -> int:
    """The scratch bytes a layer's op asks TFLite Micro for while it runs: an int4 conv's weights
    unpacked to int8, an integer transposed conv's accumulators (int32, int64 beside int16)."""
    if p.is_float:
        return 0
    if p.weight_bits == 4 and op == "CONV_2D":
        return layer.weight_count
    if op == "TRANSPOSE_CONV":
        return math.prod(layer.out_shape) * (4 if p.act_bits <= 8 else 8)
    return 0


def _align(n: int) -> int:
    return (int(n) + ALIGN - 1) // ALIGN * ALIGN


def _bytes(bits: int) -> int:
    return {8: 1, 16: 2}.get(bits, 4)


def greedy(buffers: list[tuple[int, int, int, int, str]]) -> tuple[int, list[str]]:
    """TFLite Micro's greedy plan of `buffers`: its peak (bytes), and the layers writing the
    buffers alive where it peaks."""
    order = sorted(range(len(buffers)), key=lambda i: (-buffers[i][0], -buffers[i][3]))
    placed: list[tuple[int, int, int, int, str]] = []  # offset, size, first, last, layer
    top, top_buf = 0, None
    for i in order:
        size, f, la, _, layer = buffers[i]
        offset = 0
        for o, s, _, _, _ in sorted(q for q in placed if not (q[3] < f or q[2] > la)):
            if offset + size <= o:
                break
            offset = max(offset, o + s)
        placed.append((offset, size, f, la, layer))
        if offset + size > top:
            top, top_buf = offset + size, placed[-1]
    if top_buf is None:
        return 0, []
    alive = [q[4] for q in placed if q[4] and not (q[3] < top_buf[2] or q[2] > top_buf[3])]
    return top, list(dict.fromkeys(alive))


@dataclass(frozen=True)
class ArenaModel:
    """A profile's arena predictor: the skeleton, the layers, and the anchor, a uniform policy
    whose arena TFLite Micro measured (precisions, bytes)."""

    graph: Graph
    layers: dict[str, Layer]
    anchor: tuple[dict[str, Precision], int]

    @functools.cached_property
    def _anchor_plan(self) -> _Planned:
        return plan(self.graph, self.layers, self.anchor[0])

    def anchor_tail(self) -> int:
        """The persistent bytes of the anchor policy: measured arena less its predicted head."""
        return self.anchor[1] - greedy(self._anchor_plan.buffers)[0]

    def live_rows(self, choices: dict[str, list[str]], common_bits: int) -> list[dict[tuple[str, str], float]]:
        """Per op of the float graph, the bytes alive at it (tensors by their lifetimes, the op's
        scratch) as coefficients of the choices, with the constant part under key ("", "");
        the ops between layers compute at `common_bits`. A lower bound of the head that the
        solver can hold: the planner's packing adds to it, which the caller checks."""
        first, last, writer = _lifetimes(self.graph)
        rows = []
        for i, o in enumerate(self.graph.ops):
            row: dict[tuple[str, str], float] = {("", ""): 0.0}
            for t in (t for t in first if first[t] <= i <= last[t]):
                _add_tensor(row, self.graph.elements[t], writer.get(t, ""), choices, common_bits)
            for p in choices.get(o.layer, ()):
                need = _scratch(self.layers[o.layer], Precision.parse(p), o.op)
                if need:
                    row[(o.layer, p)] = row.get((o.layer, p), 0.0) + need
            rows.append(row)
        return rows

    def predict(self, precisions: dict[str, Precision]) -> Arena:
        """The arena TFLite Micro will need for `precisions` (every searchable layer's)."""
        planned = plan(self.graph, self.layers, precisions)
        head, peak = greedy(planned.buffers)
        ref = self._anchor_plan
        tail = (self.anchor_tail() + CONVERSION_TAIL * (planned.conversions - ref.conversions)
                + INT4_TAIL * (planned.int4_convs - ref.int4_convs))
        return Arena(head + tail, head, tail, tuple(n for n in peak if n in precisions))


def _lifetimes(graph: Graph) -> tuple[dict[int, int], dict[int, int], dict[int, str]]:
    """First and last op of each tensor of the float graph, and the layer writing it."""
    first = dict.fromkeys(graph.inputs, 0)
    last = dict.fromkeys(graph.inputs, 0)
    writer: dict[int, str] = {}
    for i, o in enumerate(graph.ops):
        for t in o.inputs:
            first.setdefault(t, i)
            last[t] = i
        for t in o.outputs:
            first.setdefault(t, i)
            last[t] = max(last.get(t, i), i)
            writer[t] = o.layer
    for t in graph.outputs:
        last[t] = len(graph.ops) - 1
    return first, last, writer


def _add_tensor(row: dict, elements: int, layer: str, choices: dict[str, list[str]], common_bits: int) -> None:
    """Add a tensor's bytes to `row`: by its writer's choice, float for a fixed op, else at the common bits."""
    if layer in choices:
        for p in choices[layer]:
            row[(layer, p)] = row.get((layer, p), 0.0) + elements * _bytes(_bits(Precision.parse(p)))
    else:
        row[("", "")] += elements * (4 if layer else _bytes(common_bits))


def arena_model(table: Any) -> ArenaModel | None:
    """The arena predictor of a profile (a CostTable) measured on TFLite Micro with its whole
    models, or None when it lacks the skeleton or a measured uniform arena."""
    from .assign import uniform_assignment

    if table is None or table.graph is None or not table.whole_arena_bytes:
        return None
    layers = list(table.layers)
    for p in ("w8a8", *sorted(table.whole_arena_bytes)):
        assign = uniform_assignment(layers, table.target, p) if p in table.whole_arena_bytes else None
        if assign:
            return ArenaModel(table.graph, {la.name: la for la in layers}, (assign, table.whole_arena_bytes[p]))
    return None
