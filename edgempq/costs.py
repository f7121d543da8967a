"""What a layer costs at a precision, from its traced numbers alone (no torch): the weight
bytes the artifact stores and the bit operations, per layer and for a whole policy. The
solver uses these, so it sees only numbers."""

from __future__ import annotations

import math

from .schema import Layer, Policy, Precision

F32 = Precision(32, 32, True)


def weight_bytes(layer: Layer, p: Precision) -> int:
    """Bytes the artifact stores for the layer's weights and bias at precision `p`, as measured
    in the flatbuffers edgempq builds: packed integer weights (int4 = half a byte each), an int32
    bias (int64 with 16-bit activations, as TFLite's 16x8 kernels use), and per output channel a
    float32 scale and an int64 zero point for the weights and again for the bias. A conv always
    has a bias in the artifact (BatchNorm folds into one); float layers keep a float32 bias
    (f16 casts the weights only)."""
    w = layer.weight_count
    b = layer.out_channels if (layer.bias or layer.kind in ("conv", "dwconv")) else 0
    if p.is_float:
        return w * p.weight_bits // 8 + b * 4
    bias_bytes = 8 if p.act_bits > 8 else 4
    return math.ceil(w * p.weight_bits / 8) + b * bias_bytes + layer.out_channels * 12 + b * 12


def bops(layer: Layer, p: Precision) -> int:
    """Bit operations: MACs x weight bits x activation bits."""
    return layer.macs * p.weight_bits * p.act_bits


def _choices(layers: list[Layer], policy: Policy) -> list[tuple[Layer, Precision]]:
    policy.check_layers(layers)
    return [(la, policy.precisions.get(la.name, F32)) for la in layers]


def policy_bops(layers: list[Layer], policy: Policy) -> int:
    """Total BOPs of the model under `policy`; fixed layers count as float32."""
    return sum(bops(la, p) for la, p in _choices(layers, policy))


def policy_weight_bytes(layers: list[Layer], policy: Policy) -> int:
    """Total weight bytes of the searched and fixed layers under `policy`."""
    return sum(weight_bytes(la, p) for la, p in _choices(layers, policy))


def working_set_bytes(layer: Layer, p: Precision) -> int:
    """RAM a layer needs while it runs: its input and output activations at the layer's
    activation width, plus the int8 buffer TFLite Micro unpacks int4 weights into and the
    accumulators (int32, int64 beside 16-bit activations) its integer TRANSPOSE_CONV keeps for the
    whole output."""
    act = 4 if p.is_float else (1 if p.act_bits <= 8 else 2)
    scratch = layer.weight_count if not p.is_float and p.weight_bits == 4 else 0
    if layer.kind == "tconv" and not p.is_float:
        scratch += math.prod(layer.out_shape) * (4 if p.act_bits <= 8 else 8)
    return (math.prod(layer.in_shape) + math.prod(layer.out_shape)) * act + scratch
