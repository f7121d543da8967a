"""TFLite Micro's arena for any policy, predicted without building the model (torch-free).

The arena is a head, where the greedy memory planner lays out the activation tensors by their
lifetimes, and a tail of persistent bytes (a struct per tensor and op, each op's data). The
profile keeps the float graph's skeleton (`Graph`) and measures the uniform whole models'
arenas; a policy's quantized graph (each op's bits, the conversions the quantizer inserts) follows
from the skeleton by the quantizer's rules (`edgempq.qgraph`).
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
from dataclasses import dataclass
from typing import Any

from .qgraph import bits_of, derive, end_bits
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


@dataclass
class _Planned:
    """The quantized graph's buffers: (bytes, first op, last op, tensor order, producing layer)."""

    buffers: list[tuple[int, int, int, int, str]]
    conversions: int
    int4_convs: int


def plan(graph: Graph, layers: dict[str, Layer], precisions: dict[str, Precision]) -> _Planned:
    """The buffers TFLite Micro plans for `precisions`: each tensor of the quantized graph
    (`qgraph.derive`: conversions included) with its lifetime, and each op's scratch."""
    q = derive(graph, precisions)
    bits = dict.fromkeys(graph.inputs, 0)
    first: dict[int, int] = dict.fromkeys(graph.inputs, 0)
    last: dict[int, int] = dict.fromkeys(graph.inputs, 0)
    scratch, int4 = [], 0
    for i, s in enumerate(q.steps):
        for t in s.reads:
            first.setdefault(t, i)
            last[t] = i
        for t in s.writes:
            bits[t] = s.bits
            first.setdefault(t, i)
            last[t] = max(last.get(t, i), i)
        p = precisions.get(s.op.layer) if s.op is not None else None
        need = _scratch(layers[s.op.layer], p, s.op.op) if p is not None else 0
        if need:
            scratch.append((need, i))
            int4 += s.op.op == "CONV_2D"
    end_bits_ = end_bits(graph, precisions, q.common)[0]
    for t in graph.inputs:
        bits[t] = end_bits_
    for t in q.outputs:
        first.setdefault(t, len(q.steps) - 1)
        last[t] = max(len(q.steps) - 1, 0)
    fresh = graph.tensors + sum(s.op is None for s in q.steps)
    bufs = [(_align(q.elements[t] * _bytes(bits[t])), first[t], last[t], t, q.writer.get(t, "")) for t in sorted(first)]
    bufs += [(_align(n), s, s, fresh + i, "") for i, (n, s) in enumerate(scratch)]
    return _Planned(bufs, fresh - graph.tensors, int4)


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
            row[(layer, p)] = row.get((layer, p), 0.0) + elements * _bytes(bits_of(Precision.parse(p)))
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
