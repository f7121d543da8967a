"""A whole model quantized layer by layer: each traced layer's op gets its own precision, the
other ops (pools, adds, reshapes) follow the most common integer precision, and the result is
checked op by op against what was asked."""

from __future__ import annotations

import numpy as np

from ..errors import ConversionError
from ..schema import Layer, Precision
from .mapping import fixed_ops, map_layers, op_regex
from .recipe import OpInfo, OpRule, check_op, quantize, weight_ops


def default_act_bits(precisions: dict[str, Precision]) -> int | None:
    """Bits of the ops between layers (pools, adds): the most common integer activation width
    of the policy, the narrower on a tie (`qgraph.common_bits`); None when every layer is float."""
    from ..qgraph import FLOAT_BITS, common_bits

    a = common_bits(precisions)
    return None if a == FLOAT_BITS else a


F32 = Precision.parse("f32")


def policy_rules(mapping: dict[str, OpInfo], precisions: dict[str, Precision],
                 fixed: dict[str, OpInfo] | None = None) -> list[OpRule]:
    """The recipe: a default for every op, float for every transposed convolution no searchable
    layer maps to and every fixed layer's op (`fixed`: the layer list says they stay float, and the simulation runs them
    so), then one rule per mapped layer op. The model's input (output) stays float when the
    layer nearest it, in op order, is float: the simulation feeds a float first layer the float
    sample and reads a float last layer's logits as they are."""
    a = default_act_bits(precisions)
    rules = []
    if a is not None:
        rules.append(OpRule(".*", "*", Precision(8, a)))  # ops without weights run at these bits
        rules.append(OpRule(".*", "CONV_2D_TRANSPOSE", F32, "a fixed transposed convolution (kept float)"))
        rules += [OpRule(op_regex(op), op.op, F32, f"a fixed layer's {op.op} #{op.index}")
                  for op in (fixed or {}).values()]
    for name, op in mapping.items():
        rules.append(OpRule(op_regex(op), op.op, precisions[name], f"layer {name}"))
    if a is not None and mapping:
        order = sorted(mapping, key=lambda n: mapping[n].index)
        for end, name in (("INPUT", order[0]), ("OUTPUT", order[-1])):
            if precisions[name].is_float:
                rules.append(OpRule(".*", end, F32, f"the model {end.lower()}"))
    return rules


def quantize_policy(layers: list[Layer], float_model: bytes, precisions: dict[str, Precision],
                    weights: dict[str, np.ndarray] | None = None,
                    calibration: list[dict[str, np.ndarray]] | None = None,
                    fixed_weights: dict[str, np.ndarray] | None = None) -> bytes:
    """`float_model` with every searchable layer at its precision and the fixed layers' ops
    (found by `fixed_weights`) float, verified in the flatbuffer (ops are found again by their
    output tensor's name, which quantization keeps)."""
    mapping = map_layers(layers, float_model, weights)
    fixed = fixed_ops(layers, float_model, fixed_weights or {}, mapping)
    out = quantize(float_model, policy_rules(mapping, precisions, fixed), calibration)
    check_ops(out, mapping, precisions, fixed)
    return out


def check_ops(model: bytes, mapping: dict[str, OpInfo], precisions: dict[str, Precision],
              fixed: dict[str, OpInfo] | None = None) -> dict[str, OpInfo]:
    """Layer -> its op in the quantized `model` (found by output name), each checked to hold its
    layer's precision, and each fixed layer's op float32."""
    by_name = {o.output_name: o for o in weight_ops(model)}
    wanted = [(n, op, precisions[n], f"layer {n}") for n, op in mapping.items()] + \
        [(None, op, F32, f"a fixed layer's {op.op} #{op.index}") for op in (fixed or {}).values()]
    out = {}
    for name, op, p, what in wanted:
        got = by_name.get(op.output_name)
        if got is None:
            raise ConversionError(f"{what}: its op is missing from the quantized model")
        check_op(got, p, what)
        if name is not None:
            out[name] = got
    return out
