"""The latency model as terms of the integer program (torch-free).

What a policy's graph costs beyond its layers' own terms depends on the policy's common bits
(`qgraph.common_bits`: the ops between layers compute at them), a property of the whole policy.
So there is one `Case` per common width the choices allow, with the rows that make it the
common one (the most layers at that width, the narrower winning a tie; every layer float for
32), and, given it, each op's bits follow one layer's choice or are constant. A tensor then
costs a conversion per bits its readers need other than its producer's: constant, per choice,
per pair of choices, or an any-of term when several layers read it."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from .latency_fit import LatencyFit, graph_of
from .problem import AnyOf, Case, Row
from .qgraph import FLOAT_BITS, bits_of, domain_of, end_layers
from .schema import CostTable, Precision
from .schema.graph import Graph

Choices = dict[str, list[str]]  # layer -> the precisions it may take


@dataclass(frozen=True)
class _End:
    """Who decides a tensor end's bits: a layer's choice (`layer`, with each choice's bits), or
    nobody (`layer` None, `const` bits)."""

    layer: str | None
    bits: dict[str, int]
    const: int = 0

    def options(self) -> dict[int, tuple[tuple[str, str], ...]]:
        """Bits -> the choices that give them (() for a constant end: always)."""
        if self.layer is None:
            return {self.const: ()}
        out: dict[int, list[tuple[str, str]]] = defaultdict(list)
        for p, b in self.bits.items():
            out[b].append((self.layer, p))
        return {b: tuple(v) for b, v in out.items()}


def latency_cases(table: CostTable, fit: LatencyFit, choices: Choices) -> tuple[Case, ...]:
    """One case per common width the choices can make (8, 16, ... bits, and 32 when every
    layer can be float), each with its rows and the latency its graph adds to the layers' own."""
    graph = graph_of(table)
    widths = sorted({Precision.parse(p).act_bits for ps in choices.values() for p in ps
                     if not Precision.parse(p).is_float})
    cases = [Case(str(w), _majority(choices, w, widths), *_terms(graph, fit, choices, w)) for w in widths]
    if choices and all(any(Precision.parse(p).is_float for p in ps) for ps in choices.values()):
        floats = Row({(n, p): 1.0 for n, ps in choices.items() for p in ps if not Precision.parse(p).is_float}, 0.0)
        cases.append(Case(str(FLOAT_BITS), (floats,), *_terms(graph, fit, choices, FLOAT_BITS)))
    return tuple(cases)


def _majority(choices: Choices, width: int, widths: list[int]) -> tuple[Row, ...]:
    """`width` is the common one: at least one layer at it, no other width on more layers, no
    narrower one on as many."""
    def count(w: int, sign: float) -> dict[tuple[str, str], float]:
        return {(n, p): sign for n, ps in choices.items() for p in ps
                if not Precision.parse(p).is_float and Precision.parse(p).act_bits == w}

    rows = [Row(count(width, -1.0), -1.0)]
    for v in widths:
        if v != width:
            rows.append(Row(count(v, 1.0) | count(width, -1.0), -1.0 if v < width else 0.0))
    return tuple(rows)


def _terms(graph: Graph, fit: LatencyFit, choices: Choices, common: int) -> tuple:
    """(per choice, pairs, any-of terms, constant ms) of the conversions and the ops between
    layers when the ops between layers compute at `common` bits."""
    per_choice: dict[tuple[str, str], float] = defaultdict(float)
    pairs: dict[tuple[tuple[str, str], tuple[str, str]], float] = defaultdict(float)
    any_of: list[AnyOf] = []
    constant = 0.0
    ends = _ends(graph, choices, common)
    for t, (producer, readers) in ends.items():
        if producer is None:
            continue  # read but never written: not an activation the quantizer converts
        for f, given in producer.options().items():
            for b, wanted in _wanted(readers, f).items():
                ms = fit.conversions.get(f"{domain_of(f)}>{domain_of(b)}", 0.0) * graph.elements[t]
                constant += _place(ms, given, wanted, per_choice, pairs, any_of)
    ops = sum(graph.elements[t] for o in graph.ops if not o.layer for t in o.outputs)
    constant += fit.ops.get(domain_of(common), 0.0) * ops
    return dict(per_choice), dict(pairs), tuple(any_of), constant


def _wanted(readers: list[_End], produced: int) -> dict[int, tuple[tuple[str, str], ...] | None]:
    """Per bits other than `produced` that a reader may need: the choices that make a reader
    need them, None when a constant reader always does."""
    out: dict[int, list[tuple[str, str]] | None] = {}
    for r in readers:
        for b, cs in r.options().items():
            if b == produced:
                continue
            if not cs:
                out[b] = None
            elif out.get(b, []) is not None:
                out[b] = [*out.get(b, []), *cs]
    return {b: None if v is None else tuple(v) for b, v in out.items()}


def _place(ms: float, given: tuple, wanted: tuple | None, per_choice: dict, pairs: dict, any_of: list) -> float:
    """Put a conversion of `ms` paid when the producer takes one of `given` (always when empty)
    and a reader one of `wanted` (always when None) where the program holds it; the constant
    part is returned."""
    if ms <= 0:
        return 0.0
    if wanted is None:
        if not given:
            return ms
        for c in given:
            per_choice[c] += ms
        return 0.0
    layers = {la for la, _ in wanted}
    if not given and len(layers) == 1:
        for c in wanted:
            per_choice[c] += ms
    elif given and layers == {given[0][0]}:  # the producer's own layer reads it (the model's input)
        for c in set(given) & set(wanted):
            per_choice[c] += ms
    elif given and len(layers) == 1:
        for g in given:
            for c in wanted:
                pairs[(g, c)] += ms
    else:
        any_of.append(AnyOf(ms, given, wanted))
    return 0.0


def _ends(graph: Graph, choices: Choices, common: int) -> dict[int, tuple[_End | None, list[_End]]]:
    """Every tensor's producer and readers (the model's output a reader too), as `_End`s."""
    def of_layer(layer: str) -> _End:
        if layer in choices:
            return _End(layer, {p: bits_of(Precision.parse(p)) for p in choices[layer]})
        return _End(None, {}, FLOAT_BITS if layer else common)  # a fixed layer's op stays float

    def at_end(layer: str | None) -> _End:  # the model's input / output: float beside a float layer
        if layer is None:
            return _End(None, {}, common)
        return _End(layer, {p: FLOAT_BITS if Precision.parse(p).is_float else common for p in choices[layer]})

    first, last = end_layers(graph, choices)
    out: dict[int, tuple[_End | None, list[_End]]] = {t: (at_end(first), []) for t in graph.inputs}
    for o in graph.ops:
        for t in o.inputs:
            out.setdefault(t, (None, []))[1].append(of_layer(o.layer))
        for t in o.outputs:
            out[t] = (of_layer(o.layer), out.get(t, (None, []))[1])
    for t in graph.outputs:
        out.setdefault(t, (None, []))[1].append(at_end(last))
    return out
