"""A policy's latency predicted from a profile: the layers' measured rows, scaled per
precision against the whole model measured end to end, plus what it costs the device to convert
a tensor where two layers run in different domains (float, 8-bit, 16-bit activations).

Both parts are measured: the scales by the uniform policies, the conversions by policies that
alternate two domains layer by layer. Any policy stays a sum of per-layer and per-edge terms,
so the solver can use it exactly."""

from __future__ import annotations

from dataclasses import dataclass

from .assign import alternating_assignment, domain, uniform_assignment
from .errors import ConfigError
from .schema import CostTable, Layer, Policy, Precision, Target
from .schema.results import PredictedLatency


# The precision that stands for each domain in the alternating policies.
def scales(table: CostTable) -> dict[str, float]:
    """Per precision: by how much its layers' rows over- or under-state their cost inside the
    whole model. Precisions whose uniform model had fallback layers (int8 depthwise convs in
    uniform w4a8) are solved after the fallbacks' own scales, so a uniform policy is predicted
    exactly; precisions never measured whole keep 1."""

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
            rest = sum(_row_ms(table, la, assign[la.name]) * out.get(str(assign[la.name]), 1.0) for la in others)
            own = sum(_row_ms(table, la, assign[la.name]) for la in layers if str(assign[la.name]) == p)
            out[p] = (whole - rest) / own if own > 0 and whole > rest else 1.0
            del pending[p]
            progressed = True
        if not progressed:  # fallbacks that depend on each other: plain whole / sum of rows
            out |= {p: w / max(1e-12, w - table.overhead_ms.get(p, 0.0)) for p, w in pending.items()}
            break
    return out


def _row_ms(table: CostTable, layer: Layer, precision: Precision) -> float:
    row = table.row(layer.signature, precision)
    if row is None:
        raise ConfigError(f"the profile has no measurement of layer {layer.name} at {precision}; "
                          f"the target allows {', '.join(map(str, table.target.allowed(layer.kind)))}")
    return row.latency_ms


def layer_cost_ms(table: CostTable, layer: Layer, precision: Precision,
                  factors: dict[str, float] | None = None) -> float:
    """The layer's measured latency at `precision`, scaled by how the layers at that precision
    added up against the whole model measured end to end (`scales`). A layer timed alone pays
    its own input/output conversions and runs outside the graph's scheduling; the whole-model
    timing says by how much that over- or under-states it, per precision. Any policy stays a
    sum of per-layer terms (for the solver)."""
    factors = scales(table) if factors is None else factors
    return _row_ms(table, layer, precision) * factors.get(str(precision), 1.0)


def conversion_ms_per_element(table: CostTable, factors: dict[str, float] | None = None) -> dict[str, float]:
    """Per pair of domains: what one element crossing between them costs, from the alternating
    policy's measured whole model minus its layers' scaled costs, over the elements of its
    crossing edges (never below 0: a noisy window is not a free conversion)."""

    factors = scales(table) if factors is None else factors
    out = {}
    for key, whole in table.mixed_ms.items():
        a, b = key.split("~")  # checked when the table was read
        da, db = domain(Precision.parse(a)), domain(Precision.parse(b))
        assign = alternating_assignment(list(table.layers), table.target, a, b)  # a on the first layer
        if assign is None:
            continue
        rows = sum(layer_cost_ms(table, la, assign[la.name], factors) for la in table.layers if la.searchable)
        crossing = sum(n for p, c, n in table.edges if domain(assign[p]) != domain(assign[c]))
        if crossing:
            out["~".join(sorted((da, db)))] = max(0.0, (whole - rows) / crossing)
    return out


def edge_ms(per_element: dict[str, float], elements: int, pa: Precision, pb: Precision) -> float:
    """The conversion cost of one edge whose producer runs `pa` and consumer `pb`."""
    da, db = domain(pa), domain(pb)
    return 0.0 if da == db else per_element.get("~".join(sorted((da, db))), 0.0) * elements


def predict_latency(table: CostTable, precisions: dict[str, Precision]) -> float:
    """Predicted end-to-end latency of a policy: its layers' scaled costs plus the conversions
    on the edges between layers of different domains (the total of `policy_latency`)."""
    return policy_latency(table, precisions)["predicted_ms"]


def policy_latency(table: CostTable, precisions: dict[str, Precision]) -> dict:
    """What a report shows of a policy's predicted latency: the total, each layer's scaled
    cost, and the conversions between layers of different domains."""
    factors = scales(table)
    per_element = conversion_ms_per_element(table, factors)
    layers = {la.name: layer_cost_ms(table, la, precisions[la.name], factors) for la in table.layers if la.searchable}
    conv = sum(edge_ms(per_element, n, precisions[p], precisions[c]) for p, c, n in table.edges)
    return {"predicted_ms": sum(layers.values()) + conv, "layers_ms": layers, "conversions_ms": conv,
            "target": table.target.name, "model_hash": table.model_hash}


def profile_points(table: CostTable) -> list[dict]:
    """The profile's own whole-model timings (uniform and alternating policies) with what the
    predictor says of them: how well the latency model fits the device it was measured on."""

    layers = list(table.layers)
    pts = []
    for p, ms in table.whole_ms.items():
        assign = uniform_assignment(layers, table.target, p)
        if assign:
            pts.append({"label": p, "predicted_ms": predict_latency(table, assign), "measured_ms": ms})
    for key, ms in table.mixed_ms.items():
        assign = alternating_assignment(layers, table.target, *key.split("~"))
        if assign:
            pts.append({"label": key, "predicted_ms": predict_latency(table, assign), "measured_ms": ms})
    return pts


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
        return PredictedLatency.from_dict({**policy_latency(table, policy.precisions), "points": profile_points(table)},
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
