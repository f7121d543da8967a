"""A policy's latency predicted from a profile: the layers' measured rows, scaled per precision
and less the input/output conversions a layer timed alone pays, plus what it costs the device to
convert a tensor where two layers run in different domains (float, 8-bit, 16-bit activations).

The scales and the conversion costs are fitted on what the profile measured whole: the uniform
policies, the ones alternating two domains layer by layer, and random mixed ones (the probes),
by least squares on the relative error, so that the model holds for policies like
the search's and not only for the ones it was built from. A profile without probes (older ones)
falls back to solving the scales on the uniform models and the conversions on the alternating
ones. Any policy stays a sum of per-layer and per-edge terms, so the solver uses it exactly."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from .assign import alternating_assignment, domain, uniform_assignment
from .errors import ConfigError
from .schema import CostTable, Layer, Policy, Precision, Target
from .schema.results import PredictedLatency


@dataclass(frozen=True)
class LatencyFit:
    """The latency model's coefficients: per precision, by how much its layers' rows over- or
    under-state their cost inside the whole model; per pair of domains, what one element
    crossing between them costs (ms); per quantized domain, what a layer timed alone pays that it
    does not inside the model (its own input quantize and output dequantize: per element of its
    input and output, and per layer), usually negative."""

    scales: dict[str, float]
    per_element: dict[str, float]
    alone_per_element: dict[str, float] = field(default_factory=dict)
    alone_per_layer: dict[str, float] = field(default_factory=dict)
    fitted_on: int = 0  # whole-model points of the joint fit; 0 when solved from the uniform/alternating ones


QUANTIZED = ("a8", "a16")  # the domains whose layers, timed alone, convert their input and output


def latency_fit(table: CostTable) -> LatencyFit:
    """The coefficients for `table`: fitted jointly on every whole-model point when the
    profile has probes, else solved in turn from the uniform and alternating ones."""
    factors = scales(table)
    sequential = LatencyFit(factors, conversion_ms_per_element(table, factors))
    points = whole_points(table)
    if not table.probes or len(points) < 2:
        return sequential
    fit = _joint_fit(table, points, sequential, QUANTIZED)
    if not _uniforms_reachable(table, fit):  # the alone terms alone exceed a uniform model: without them
        fit = _joint_fit(table, points, sequential, ())
    return replace(fit, scales=fit.scales | scales(table, fit))  # the uniform policies exact again


def _uniforms_reachable(table: CostTable, fit: LatencyFit) -> bool:
    """Whether every uniform model measured can be matched with a non-negative scale: what its
    layers pay alone, at scale 0, stays under its measurement."""
    layers = [la for la in table.layers if la.searchable]
    for p, ms in table.whole_ms.items():
        assign = uniform_assignment(layers, table.target, p) or {}
        if sum(max(0.0, _alone_ms(fit, la, assign[la.name])) for la in layers if la.name in assign) >= ms:
            return False
    return True


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


def _joint_fit(table: CostTable, points: list, start: LatencyFit, quantized: tuple[str, ...]) -> LatencyFit:
    """The coefficients minimising the points' squared relative errors (scales and conversions
    never negative; alone terms for the `quantized` domains). A precision or domain no point
    exercises keeps `start`'s value. `latency_fit` then solves the scales again so that the
    uniform policies are exact: they are the references search shows."""
    import numpy as np
    from scipy.optimize import lsq_linear

    precs = sorted({str(q) for _, a, _ in points for q in a.values()})
    pairs = sorted({"~".join(sorted((domain(a[p]), domain(a[c])))) for _, a, _ in points
                    for p, c, _ in table.edges if domain(a[p]) != domain(a[c])})
    doms = [d for d in quantized if any(domain(q) == d for _, a, _ in points for q in a.values())]
    y = np.array([ms for _, _, ms in points])
    w = 1 / y
    x = np.array([_features(table, a, precs, pairs, doms) for _, a, _ in points]) * w[:, None]
    norm = np.maximum(np.abs(x).max(axis=0), 1e-30)  # columns to one scale: element counts dwarf row sums
    low = [0.0] * (len(precs) + len(pairs)) + [-np.inf] * (2 * len(doms))
    coef = lsq_linear(x / norm, y * w, bounds=(low, np.inf), tol=1e-12).x / norm
    c = iter(coef.tolist())
    scales_ = {p: next(c) for p in precs}
    per_element = {k: next(c) for k in pairs}
    alone_el, alone_layer = {d: next(c) for d in doms}, {d: next(c) for d in doms}
    return LatencyFit(start.scales | {p: v for p, v in scales_.items() if v > 0}, start.per_element | per_element,
                      alone_el, alone_layer, len(points))


def _features(table: CostTable, assign: dict[str, Precision], precs: list[str], pairs: list[str],
              doms: list[str]) -> list[float]:
    """A point's regressors: per precision the sum of its layers' rows; per domain pair the
    elements crossing between them; per quantized domain its layers' input and output elements,
    and their number."""
    by_prec = dict.fromkeys(precs, 0.0)
    io, count = dict.fromkeys(doms, 0.0), dict.fromkeys(doms, 0.0)
    for la in table.layers:
        if la.searchable:
            q = assign[la.name]
            by_prec[str(q)] += _row_ms(table, la, q)
            if domain(q) in io:
                io[domain(q)] += _io_elements(la)
                count[domain(q)] += 1
    crossing = dict.fromkeys(pairs, 0.0)
    for p, c, n in table.edges:
        if domain(assign[p]) != domain(assign[c]):
            crossing["~".join(sorted((domain(assign[p]), domain(assign[c]))))] += n
    return [*by_prec.values(), *crossing.values(), *io.values(), *count.values()]


def _io_elements(layer: Layer) -> int:
    return math.prod(layer.in_shape) + math.prod(layer.out_shape)


def scales(table: CostTable, alone: LatencyFit | None = None) -> dict[str, float]:
    """Per precision: by how much its layers' rows over- or under-state their cost inside the
    whole model, given what `alone` says layers pay timed alone (nothing when None), so that a
    uniform policy is predicted exactly. Precisions whose uniform model had fallback layers
    (int8 depthwise convs in uniform w4a8) are solved after the fallbacks' own scales;
    precisions never measured whole keep 1."""

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
            rest = sum(max(0.0, _row_ms(table, la, assign[la.name]) * out.get(str(assign[la.name]), 1.0)
                           + _alone_ms(alone, la, assign[la.name])) for la in others)
            mine = [(_row_ms(table, la, assign[la.name]), _alone_ms(alone, la, assign[la.name]))
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


def _alone_ms(fit: LatencyFit | None, layer: Layer, precision: Precision) -> float:
    """What `fit` says the layer pays timed alone at `precision` and not inside the model."""
    if fit is None:
        return 0.0
    d = domain(precision)
    return fit.alone_per_element.get(d, 0.0) * _io_elements(layer) + fit.alone_per_layer.get(d, 0.0)


def _row_ms(table: CostTable, layer: Layer, precision: Precision) -> float:
    row = table.row(layer.signature, precision)
    if row is None:
        raise ConfigError(f"the profile has no measurement of layer {layer.name} at {precision}; "
                          f"the target allows {', '.join(map(str, table.target.allowed(layer.kind)))}")
    return row.latency_ms


def layer_cost_ms(table: CostTable, layer: Layer, precision: Precision, fit: LatencyFit | None = None) -> float:
    """The layer's measured latency at `precision`, scaled by how the layers at that precision
    add up inside the whole model, less what it paid alone for converting its own input and
    output (`latency_fit`; never below 0). Any policy stays a sum of per-layer terms."""
    fit = latency_fit(table) if fit is None else fit
    return max(0.0, _row_ms(table, layer, precision) * fit.scales.get(str(precision), 1.0)
               + _alone_ms(fit, layer, precision))


def conversion_ms_per_element(table: CostTable, factors: dict[str, float] | None = None) -> dict[str, float]:
    """Per pair of domains, solved from the alternating policies alone: what one element
    crossing between them costs, the alternating policy's measured whole model minus its layers'
    scaled costs, over the elements of its crossing edges (never below 0: a noisy window is not a
    free conversion). The start (and fallback) of `latency_fit`."""

    factors = scales(table) if factors is None else factors
    out = {}
    for key, whole in table.mixed_ms.items():
        a, b = key.split("~")  # checked when the table was read
        da, db = domain(Precision.parse(a)), domain(Precision.parse(b))
        assign = alternating_assignment(list(table.layers), table.target, a, b)  # a on the first layer
        if assign is None:
            continue
        rows = sum(_row_ms(table, la, assign[la.name]) * factors.get(str(assign[la.name]), 1.0)
                   for la in table.layers if la.searchable)
        crossing = sum(n for p, c, n in table.edges if domain(assign[p]) != domain(assign[c]))
        if crossing:
            out["~".join(sorted((da, db)))] = max(0.0, (whole - rows) / crossing)
    return out


def edge_ms(per_element: dict[str, float], elements: int, pa: Precision, pb: Precision) -> float:
    """The conversion cost of one edge whose producer runs `pa` and consumer `pb`."""
    da, db = domain(pa), domain(pb)
    return 0.0 if da == db else per_element.get("~".join(sorted((da, db))), 0.0) * elements


def predict_latency(table: CostTable, precisions: dict[str, Precision], fit: LatencyFit | None = None) -> float:
    """Predicted end-to-end latency of a policy: its layers' scaled costs plus the conversions
    on the edges between layers of different domains (the total of `policy_latency`)."""
    return policy_latency(table, precisions, fit)["predicted_ms"]


def policy_latency(table: CostTable, precisions: dict[str, Precision], fit: LatencyFit | None = None) -> dict:
    """What a report shows of a policy's predicted latency: the total, each layer's scaled
    cost, and the conversions between layers of different domains."""
    fit = latency_fit(table) if fit is None else fit
    layers = {la.name: layer_cost_ms(table, la, precisions[la.name], fit) for la in table.layers if la.searchable}
    conv = sum(edge_ms(fit.per_element, n, precisions[p], precisions[c]) for p, c, n in table.edges)
    return {"predicted_ms": sum(layers.values()) + conv, "layers_ms": layers, "conversions_ms": conv,
            "target": table.target.name, "model_hash": table.model_hash}


def profile_points(table: CostTable, fit: LatencyFit | None = None) -> list[dict]:
    """The profile's own whole-model timings (uniform, alternating and probe policies) with what
    the predictor says of them: how well the latency model fits the device it was measured on."""
    fit = latency_fit(table) if fit is None else fit
    return [{"label": label, "predicted_ms": predict_latency(table, assign, fit), "measured_ms": ms}
            for label, assign, ms in whole_points(table)]


def predicted_latency(policy: Policy, table: CostTable | None, target: Target,
                      model: ModelKey) -> PredictedLatency | None:
    """The policy's latency on `target` as the profile predicts it (per layer, with the profile's
    own points), else as the search recorded it in the policy; None when neither is about this
    target. A profile holds for any target reaching its device (another name, other limits) and
    for any weights of its architecture."""
    if table is not None:
        if not table.target.same_device(target):
            raise ConfigError(f"the profile was measured on {table.target.name} ({_device(table.target)}), not on "
                              f"{target.name}'s device ({_device(target)}); give a profile measured on {target.name}")
        check_profile_model(table, model)
        fit = latency_fit(table)
        return PredictedLatency.from_dict({**policy_latency(table, policy.precisions, fit),
                                           "points": profile_points(table, fit)},
                                          "the predicted latency")
    if policy.target == target.name and "latency_ms" in policy.predicted:
        return PredictedLatency(float(policy.predicted["latency_ms"]), target.name)
    return None


@dataclass(frozen=True)
class ModelKey:
    """What a profile is checked against: the model's architecture fingerprint (None when not
    known, e.g. from an older deploy.json) and its weights' fingerprint."""

    arch_hash: str | None
    model_hash: str | None = None


def check_profile_model(table: CostTable, model: ModelKey) -> None:
    """Refuse a profile of another architecture or input shape; an older profile (without an
    architecture fingerprint) must be of the same weights."""
    if table.arch_hash is not None:
        if model.arch_hash is not None and model.arch_hash != table.arch_hash:
            raise ConfigError(f"the profile is of another architecture or input shape (fingerprint {table.arch_hash}, "
                              f"this model's {model.arch_hash}); profile this model (the cached measurements make "
                              "that quick)")
    elif model.model_hash is not None and table.model_hash != model.model_hash:
        raise ConfigError(f"the profile was made for another model or other weights (fingerprint "
                          f"{table.model_hash}, this model's {model.model_hash}); profile it again with the same "
                          "--model (the cached measurements make that quick)")


def _device(target: Target) -> str:
    where = ", ".join(f"{k} {v}" for k, v in sorted(target.connection.items()) if k in ("host", "serial", "port"))
    return f"backend {target.backend}, {target.threads} thread(s)" + (f", {where}" if where else "")
