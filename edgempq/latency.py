"""A policy's latency predicted from a profile, on its quantized graph (`qgraph`): the layers'
measured rows scaled per precision (less what a quantized layer timed alone pays for its own
conversions), the conversion ops the quantizer inserts where domains change, and the ops between
layers in the domain the policy's common bits put them in. The coefficients are fitted on what
the profile measured whole (`latency_fit`). For the integer program, the same model is a sum of
per-layer, per-pair and any-of terms once the common bits are fixed (`latency_program`)."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError
from .latency_fit import LatencyFit, graph_of, latency_fit, layer_ms, parts_ms, parts_of, whole_points
from .schema import CostTable, Layer, Policy, Precision, Target
from .schema.results import PredictedLatency

__all__ = ["LatencyFit", "ModelKey", "check_profile_model", "latency_fit", "layer_cost_ms", "policy_latency",
           "predict_latency", "predicted_latency", "profile_points", "whole_points"]


def layer_cost_ms(table: CostTable, layer: Layer, precision: Precision, fit: LatencyFit | None = None) -> float:
    """The layer's measured latency at `precision`, scaled by how the layers at that precision
    add up inside the whole model, less what it paid alone for converting its own input and
    output (`latency_fit`; never below 0)."""
    return layer_ms(table, layer, precision, latency_fit(table) if fit is None else fit)


def predict_latency(table: CostTable, precisions: dict[str, Precision], fit: LatencyFit | None = None) -> float:
    """Predicted end-to-end latency of a policy (the total of `policy_latency`)."""
    return policy_latency(table, precisions, fit)["predicted_ms"]


def policy_latency(table: CostTable, precisions: dict[str, Precision], fit: LatencyFit | None = None) -> dict:
    """What a report shows of a policy's predicted latency: the total, each layer's scaled
    cost, the conversions between domains and the ops between layers."""
    fit = latency_fit(table) if fit is None else fit
    layers = {la.name: layer_ms(table, la, precisions[la.name], fit) for la in table.layers if la.searchable}
    conv, ops = parts_ms(parts_of(graph_of(table), precisions), fit)
    return {"predicted_ms": sum(layers.values()) + conv + ops, "layers_ms": layers, "conversions_ms": conv,
            "ops_ms": ops, "target": table.target.name, "model_hash": table.model_hash}


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
    if policy.target == target.name and "latency_ms" in policy.predicted:  # checked as deploy.json's would be
        return PredictedLatency.from_dict({"predicted_ms": policy.predicted["latency_ms"], "target": target.name},
                                          "the policy's predicted latency")
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
