"""A whole model quantized layer by layer: each traced layer's op gets its own precision, the
other ops (pools, adds, reshapes) follow the most common integer precision, and the result is
checked op by op against what was asked."""

from __future__ import annotations

from collections import Counter

import numpy as np

from ..errors import ConversionError
from ..schema import Layer, Precision
from .mapping import map_layers, op_regex
from .recipe import OpInfo, OpRule, check_op, quantize, weight_ops


def default_act_bits(precisions: dict[str, Precision]) -> int | None:
    """Bits of the ops between layers (pools, adds): the most common integer activation width
    of the policy; None when every layer is float."""
    bits = Counter(p.act_bits for p in precisions.values() if not p.is_float)
    return bits.most_common(1)[0][0] if bits else None


def policy_rules(mapping: dict[str, OpInfo], precisions: dict[str, Precision]) -> list[OpRule]:
    """The recipe: a default for every op, then one rule per mapped layer op. The model's input
    (output) stays float when the layer nearest it, in op order, is float: the simulation feeds
    a float first layer the float sample and reads a float last layer's logits as they are."""
    a = default_act_bits(precisions)
    rules = []
    if a is not None:
        rules.append(OpRule(".*", "*", Precision(8, a)))  # ops without weights run at these bits
    for name, op in mapping.items():
        rules.append(OpRule(op_regex(op), op.op, precisions[name], f"layer {name}"))
    if a is not None and mapping:
        order = sorted(mapping, key=lambda n: mapping[n].index)
        for end, name in (("INPUT", order[0]), ("OUTPUT", order[-1])):
            if precisions[name].is_float:
                rules.append(OpRule(".*", end, Precision.parse("f32"), f"the model {end.lower()}"))
    return rules


def quantize_policy(layers: list[Layer], float_model: bytes, precisions: dict[str, Precision],
                    weights: dict[str, np.ndarray] | None = None,
                    calibration: list[dict[str, np.ndarray]] | None = None) -> bytes:
    """`float_model` with every searchable layer at its precision, verified in the flatbuffer
    (ops are found again by their output tensor's name, which quantization keeps)."""
    mapping = map_layers(layers, float_model, weights)
    out = quantize(float_model, policy_rules(mapping, precisions), calibration)
    by_name = {o.output_name: o for o in weight_ops(out)}
    for name, op in mapping.items():
        got = by_name.get(op.output_name)
        if got is None:
            raise ConversionError(f"layer {name}: its op is missing from the quantized model")
        check_op(got, precisions[name], f"layer {name}")
    return out
