"""The latency model's coefficients, fitted on what a profile measured whole (torch-free).

A policy's latency is costed on its quantized graph (`qgraph.derive`): each searched layer's
measured row, scaled per precision, less what a quantized layer timed alone pays for its own
input and output conversions; each conversion op the quantizer inserts, per element and per
direction (int8 to int16 and back cost differently, and either can leave the delegate); and
the ops between layers (pads, pools, adds), per output element in the domain the policy's common
bits put them in. The coefficients are fitted jointly on every whole model the profile timed
(uniform, alternating two domains, and the random probes) by least squares on the relative
error, with a light ridge; the scales are then solved again so that the uniform policies stay
exact. A profile
without probes (older ones) has its scales solved on the uniform models and its conversions on
the alternating ones."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field, replace

from .assign import alternating_assignment, domain, uniform_assignment
from .errors import ConfigError
from .qgraph import derive, domain_of, layer_graph
from .schema import CostTable, Layer, Precision
from .schema.graph import Graph

QUANTIZED = ("a8", "a16")  # the domains whose layers, timed alone, convert their input and output


@dataclass(frozen=True)
class LatencyFit:
    """The coefficients: per precision, by how much its layers' rows over- or under-state their
    cost inside the whole model; per direction between domains ("a8>a16"), what one element
    converted costs (ms); per domain, what one output element of an op between layers costs;
    per quantized domain, what a layer timed alone pays that it does not inside the model (its
    own input quantize and output dequantize: per element of its input and output, and per
    layer), usually negative."""

    scales: dict[str, float]
    conversions: dict[str, float]
    ops: dict[str, float] = field(default_factory=dict)
    alone_per_element: dict[str, float] = field(default_factory=dict)
    alone_per_layer: dict[str, float] = field(default_factory=dict)
    fitted_on: int = 0  # whole-model points of the joint fit; 0 when solved from the uniform/alternating ones


@dataclass(frozen=True)
class Parts:
    """What a policy's quantized graph holds beyond its layers: elements converted per direction
    between domains, and output elements of the ops between layers per domain."""

    conversions: dict[str, float]
    ops: dict[str, float]


def graph_of(table: CostTable) -> Graph:
    """The float graph's skeleton the profile kept, or (older profiles) the graph of its layers."""
    return table.graph if table.graph is not None else layer_graph(list(table.layers), table.edges)


def parts_of(graph: Graph, precisions: dict[str, Precision]) -> Parts:
    """The conversions and the ops between layers of `precisions`' quantized graph."""
    q = derive(graph, precisions)
    conversions: Counter[str] = Counter()
    ops: Counter[str] = Counter()
    for s in q.steps:
        if s.op is None:
            conversions[f"{domain_of(s.from_bits)}>{domain_of(s.bits)}"] += q.elements[s.reads[0]]
        elif not s.op.layer:
            ops[domain_of(s.bits)] += sum(q.elements[t] for t in s.writes)
    return Parts(dict(conversions), dict(ops))


def row_ms(table: CostTable, layer: Layer, precision: Precision) -> float:
    """The layer's profiled latency at `precision`."""
    row = table.row(layer.signature, precision)
    if row is None:
        raise ConfigError(f"the profile has no measurement of layer {layer.name} at {precision}; "
                          f"the target allows {', '.join(map(str, table.target.allowed(layer.kind)))}")
    return row.latency_ms


def io_elements(layer: Layer) -> int:
    """Elements of the layer's input and output."""
    return math.prod(layer.in_shape) + math.prod(layer.out_shape)


def alone_ms(fit: LatencyFit | None, layer: Layer, precision: Precision) -> float:
    """What `fit` says the layer pays timed alone at `precision` and not inside the model."""
    if fit is None:
        return 0.0
    d = domain(precision)
    return fit.alone_per_element.get(d, 0.0) * io_elements(layer) + fit.alone_per_layer.get(d, 0.0)


def layer_ms(table: CostTable, layer: Layer, precision: Precision, fit: LatencyFit) -> float:
    """The layer's cost inside the model: its row scaled, less what it paid alone (never below 0)."""
    return max(0.0, row_ms(table, layer, precision) * fit.scales.get(str(precision), 1.0)
               + alone_ms(fit, layer, precision))


def parts_ms(parts: Parts, fit: LatencyFit) -> tuple[float, float]:
    """(conversions, ops between layers) of `parts` in ms."""
    return (sum(fit.conversions.get(k, 0.0) * n for k, n in parts.conversions.items()),
            sum(fit.ops.get(k, 0.0) * n for k, n in parts.ops.items()))


def whole_points(table: CostTable) -> list[tuple[str, dict[str, Precision], float]]:
    """(label, assignment, measured ms) of every whole model the profile timed."""
    layers = list(table.layers)
    out = []
    for p, ms in table.whole_ms.items():
        assign = uniform_assignment(layers, table.target, p)
        if assign:
            out.append((p, assign, ms))
    for key, ms in table.mixed_ms.items():
        assign = alternating_assignment(layers, table.target, *key.split("~"))
        if assign:
            out.append((key, assign, ms))
    names = {la.name for la in layers if la.searchable}
    for i, probe in enumerate(table.probes):
        if set(probe.precisions) == names:
            assign = {k: Precision.parse(v) for k, v in probe.precisions.items()}
            out.append((f"probe {i:02d}", assign, probe.median_ms))
    return out


def latency_fit(table: CostTable) -> LatencyFit:
    """The coefficients for `table`: fitted jointly on every whole-model point when the profile
    has probes, else solved in turn from the uniform and alternating ones. Terms that would make
    a uniform model unreachable (their own cost over its measurement) are left out."""
    graph = graph_of(table)
    factors = scales(table, graph)
    sequential = LatencyFit(factors, conversion_ms_per_element(table, graph, factors))
    points = whole_points(table)
    if not table.probes or len(points) < 2:
        return sequential
    for terms in (("alone", "ops"), ("ops",), ()):
        fit = _joint_fit(table, graph, points, sequential, terms)
        if _uniforms_reachable(table, graph, fit):
            break
    return replace(fit, scales=fit.scales | scales(table, graph, fit))  # the uniform policies exact again


def _uniforms_reachable(table: CostTable, graph: Graph, fit: LatencyFit) -> bool:
    """Whether every uniform model measured can be matched with a non-negative scale: what it
    pays at scale 0 (alone terms, conversions, ops between layers) stays under its measurement."""
    layers = [la for la in table.layers if la.searchable]
    at_zero = replace(fit, scales={})
    for p, ms in table.whole_ms.items():
        assign = uniform_assignment(layers, table.target, p) or {}
        fixed = sum(max(0.0, alone_ms(fit, la, q)) for la in layers if (q := assign.get(la.name)) is not None)
        if fixed + sum(parts_ms(parts_of(graph, assign), at_zero)) >= ms:
            return False
    return True


RIDGE = 0.1  # the pull toward the prior, against the points' squared relative errors (see _joint_fit)


def _joint_fit(table: CostTable, graph: Graph, points: list, start: LatencyFit, terms: tuple[str, ...]) -> LatencyFit:
    """The coefficients minimising the points' squared relative errors: scales, conversions and
    ops never negative; the alone terms (with "alone" in `terms`) free; the ops between layers
    only with "ops". A ridge pulls the scales toward `start`'s (solved on the uniform models) and
    every other term toward 0: on a small model a layer's row, its alone terms and its
    conversions are nearly collinear, and without it noise of 3 % on the points moved the
    fitted terms enough to halve the hit rate on held-out policies (fc_autoencoder on host).
    A precision no point exercises keeps `start`'s scale."""
    import numpy as np
    from scipy.optimize import lsq_linear

    feats = [_features(table, graph, a, terms) for _, a, _ in points]
    cols = sorted({k for f in feats for k in f})
    y = np.array([ms for _, _, ms in points])
    w = 1 / y
    x = np.array([[f.get(c, 0.0) for c in cols] for f in feats]) * w[:, None]
    norm = np.maximum(np.abs(x).max(axis=0), 1e-30)  # columns to one scale: element counts dwarf row sums
    low = [-np.inf if c.startswith("alone") else 0.0 for c in cols]
    prior = np.array([start.scales.get(c.split(" ", 1)[1], 1.0) if c.startswith("row ") else 0.0 for c in cols])
    a = np.vstack([x / norm, np.sqrt(RIDGE) * np.eye(len(cols))])
    b = np.concatenate([y * w, np.sqrt(RIDGE) * prior * norm])
    coef = dict(zip(cols, (lsq_linear(a, b, bounds=(low, np.inf), tol=1e-12).x / norm).tolist(), strict=True))

    def group(prefix: str) -> dict[str, float]:
        return {c.split(" ", 1)[1]: v for c, v in coef.items() if c.startswith(prefix + " ")}

    scales_ = group("row")
    return LatencyFit(start.scales | {p: v for p, v in scales_.items() if v > 0}, group("conversion"), group("op"),
                      group("alone_element"), group("alone_layer"), len(points))


def _features(table: CostTable, graph: Graph, assign: dict[str, Precision], terms: tuple[str, ...]) -> dict[str, float]:
    """A point's regressors: per precision the sum of its layers' rows; per direction the
    elements converted; per domain the ops' output elements ("ops"); per quantized domain its
    layers' input and output elements, and their number ("alone")."""
    out: Counter[str] = Counter()
    for la in table.layers:
        if la.searchable:
            q = assign[la.name]
            out[f"row {q}"] += row_ms(table, la, q)
            if "alone" in terms and domain(q) in QUANTIZED:
                out[f"alone_element {domain(q)}"] += io_elements(la)
                out[f"alone_layer {domain(q)}"] += 1
    parts = parts_of(graph, assign)
    out.update({f"conversion {k}": n for k, n in parts.conversions.items()})
    if "ops" in terms:
        out.update({f"op {k}": n for k, n in parts.ops.items()})
    return dict(out)


def scales(table: CostTable, graph: Graph | None = None, fit: LatencyFit | None = None) -> dict[str, float]:
    """Per precision: by how much its layers' rows over- or under-state their cost inside the
    whole model, given what `fit` says of the rest (alone terms, conversions, ops between
    layers; nothing when None), so that a uniform policy is predicted exactly. Precisions whose
    uniform model had fallback layers (int8 depthwise convs in uniform w4a8) are solved after
    the fallbacks' own scales; precisions never measured whole keep 1."""
    graph = graph_of(table) if graph is None else graph
    base = fit if fit is not None else LatencyFit({}, {})
    layers = [la for la in table.layers if la.searchable]
    out: dict[str, float] = {}
    pending = dict(table.whole_ms)
    while pending:
        progressed = False
        for p, whole in list(pending.items()):
            assign = uniform_assignment(layers, table.target, p) or {}
            others = [la for la in layers if str(assign[la.name]) != p]
            if any(str(assign[la.name]) not in out for la in others if str(assign[la.name]) in pending):
                continue
            known = replace(base, scales=base.scales | out)
            rest = sum(layer_ms(table, la, assign[la.name], known) for la in others)
            rest += sum(parts_ms(parts_of(graph, assign), base))
            mine = [(row_ms(table, la, assign[la.name]), alone_ms(fit, la, assign[la.name]))
                    for la in layers if str(assign[la.name]) == p]
            out[p] = _scale_for(mine, whole - rest)
            del pending[p]
            progressed = True
        if not progressed:  # fallbacks that depend on each other: plain whole / sum of rows
            out |= {p: w / max(1e-12, w - table.overhead_ms.get(p, 0.0)) for p, w in pending.items()}
            break
    return out


def _scale_for(layers: list[tuple[float, float]], total: float) -> float:
    """The scale s at which the layers' costs max(0, s * row + alone) add up to `total` (they
    grow with s), by bisection; 1 when no positive scale reaches it."""
    def cost(s: float) -> float:
        return sum(max(0.0, s * row + alone) for row, alone in layers)

    hi = 1.0
    while cost(hi) < total and hi < 1e9:
        hi *= 2
    if total <= 0 or cost(hi) < total or not any(row > 0 for row, _ in layers):
        return 1.0
    lo = 0.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cost(mid) < total else (lo, mid)
    return (lo + hi) / 2


def conversion_ms_per_element(table: CostTable, graph: Graph | None = None,
                              factors: dict[str, float] | None = None) -> dict[str, float]:
    """Per direction between two domains, solved from the policies alternating them alone: the
    measured whole model minus its layers' scaled rows, over the elements converted either way
    (never below 0: a noisy window is not a free conversion); both directions get that value.
    The start (and, without probes, the whole) of `latency_fit`."""
    graph = graph_of(table) if graph is None else graph
    factors = scales(table, graph) if factors is None else factors
    fit = LatencyFit(factors, {})
    out = {}
    for key, whole in table.mixed_ms.items():
        a, b = key.split("~")  # checked when the table was read
        assign = alternating_assignment(list(table.layers), table.target, a, b)  # a on the first layer
        if assign is None:
            continue
        da, db = domain(Precision.parse(a)), domain(Precision.parse(b))
        rows = sum(layer_ms(table, la, assign[la.name], fit) for la in table.layers if la.searchable)
        conv = parts_of(graph, assign).conversions
        crossing = conv.get(f"{da}>{db}", 0.0) + conv.get(f"{db}>{da}", 0.0)
        if crossing:
            out[f"{da}>{db}"] = out[f"{db}>{da}"] = max(0.0, (whole - rows) / crossing)
    return out

