"""Match each traced PyTorch layer to the one TFLite op that implements it.

onnx2tf renames every tensor, so names cannot be used. Layers and weight ops are matched in
execution order, and each pair must agree on op type, weight shape (in TFLite's layout) and, when
the weights are given, on the weight values themselves (up to the layout change and folded
BatchNorm scaling per output channel)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ConversionError
from ..schema import Layer
from .recipe import KIND_OPS, OpInfo, weight_ops

if TYPE_CHECKING:
    from torch import nn


def _tflite_weight_shape(layer: Layer) -> tuple[int, ...]:
    if layer.kind == "linear":
        return (layer.out_channels, layer.in_channels)
    kh, kw = (1, layer.kernel[0]) if len(layer.in_shape) == 2 else (layer.kernel * 2)[:2]  # a Conv1d: height 1
    if layer.kind == "dwconv":
        return (1, kh, kw, layer.out_channels)
    if layer.kind == "tconv":
        return (layer.out_channels, kh, kw, layer.in_channels)
    return (layer.out_channels, kh, kw, layer.in_channels // layer.groups)


def map_layers(layers: list[Layer], model: bytes, weights: dict[str, np.ndarray] | None = None) -> dict[str, OpInfo]:
    """Layer name -> the op that implements it, for every searchable layer of a float model.

    Candidates are the unused ops of the layer's type and weight shape; several candidates
    (e.g. a residual block's convs, which the converter may reorder) are told apart by the
    weights themselves when `weights` (PyTorch name -> array) is given, else taken in order.
    A layer with no candidate is a ConversionError naming it."""
    ops = weight_ops(model)
    values = _op_weights(model) if weights else {}
    used: set[int] = set()
    out: dict[str, OpInfo] = {}
    for la in (x for x in layers if x.searchable):
        cands = [o for o in ops if o.index not in used and _fits(la, o)]
        if not cands:
            raise ConversionError(f"layer {la.name} ({la.kind}, weight {_tflite_weight_shape(la)}) has no matching "
                                  "op in the converted model; the converter changed it (fused or split it)")
        if len(cands) > 1 and weights and la.name in weights:
            w = weights[la.name]
            agree = [o for o in cands if o.index in values and weights_agree(w, values[o.index], la.kind)]
            if len(agree) != 1:
                raise ConversionError(f"layer {la.name}: {len(agree)} ops of the converted model carry its weights; "
                                      "cannot tell which one implements it")
            cands = agree
        out[la.name] = cands[0]
        used.add(cands[0].index)
    return out


def _op_weights(model: bytes) -> dict[int, np.ndarray]:
    """Op index -> float32 weight array, for the weight ops of a float model."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    m = fu.read_model(bytearray(model))
    sg = m.subgraphs[0]
    out = {}
    for o in weight_ops(model):
        t = sg.tensors[sg.operators[o.index].inputs[1]]
        data = m.buffers[t.buffer].data
        if data is not None and t.type == 0:
            out[o.index] = np.frombuffer(bytes(data), dtype=np.float32).reshape(tuple(t.shape))
    return out


def _fits(layer: Layer, op: OpInfo) -> bool:
    return op.op == KIND_OPS[layer.kind] and tuple(op.weight_shape) == _tflite_weight_shape(layer)


def op_regex(op: OpInfo) -> str:
    """A regex that selects exactly this op in an ai-edge-quantizer recipe, which matches an op's
    scope: its output tensor names joined and ended by ';'."""
    return "^" + re.escape(op.output_name) + ";$"


def tflite_layout(w: np.ndarray, kind: str) -> tuple[np.ndarray, int]:
    """A PyTorch weight in TFLite's layout (conv OIHW -> OHWI, a Conv1d's OIK -> O1KI,
    depthwise (C, 1, kh, kw) -> (1, kh, kw, C), a transposed conv's IOHW -> OHWI (TRANSPOSE_CONV
    flips no kernel), linear as is), and TFLite's output-channel axis."""
    if kind != "linear" and w.ndim == 3:  # a Conv1d runs as a CONV_2D of height 1
        w = w[:, :, None, :]
    if kind == "conv":
        return w.transpose(0, 2, 3, 1), 0
    if kind == "dwconv":
        return w.transpose(1, 2, 3, 0), 3
    if kind == "tconv":
        return w.transpose(1, 2, 3, 0), 0
    return w, 0


def weights_agree(layer_weight: np.ndarray, op_weight: np.ndarray, kind: str) -> bool:
    """Whether a PyTorch weight and a TFLite weight are the same up to layout and a
    per-output-channel scale (BatchNorm folding; negative when the BN weight is)."""
    w, axis = tflite_layout(layer_weight, kind)
    if w.shape != op_weight.shape:
        return False
    a = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    b = np.moveaxis(op_weight, axis, 0).reshape(op_weight.shape[axis], -1)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    cos = (a * b).sum(1) / np.maximum(na * nb, 1e-12)
    return bool(np.all(np.abs(cos[(na > 0) & (nb > 0)]) > 0.999))  # a negative BN scale flips a channel


def torch_weights(module: nn.Module, layers: list[Layer], fixed: bool = False) -> dict[str, np.ndarray]:
    """PyTorch weight arrays of the searchable layers (with `fixed`, of the fixed layers that are
    modules of their own), for `map_layers` and `fixed_ops`."""
    mods = dict(module.named_modules())
    return {la.name: mods[la.name].weight.detach().cpu().numpy() for la in layers
            if la.searchable != fixed and getattr(mods.get(la.name), "weight", None) is not None}


def fixed_ops(layers: list[Layer], model: bytes, weights: dict[str, np.ndarray],
              mapping: dict[str, OpInfo]) -> dict[str, OpInfo]:
    """Op output name -> op, for every weight op (conv, depthwise conv, fully connected) that
    carries a fixed layer's weights, among the ops no searchable layer took: the ops the
    artifact must keep float, as the layer list says (a grouped Conv1d runs as a grouped CONV_2D,
    and a module called twice as two ops, which the quantizer would make int8 with the rest).
    Found by weight values."""
    taken = {o.index for o in mapping.values()}
    ops = [o for o in weight_ops(model) if o.index not in taken]
    values = _op_weights(model)
    out = {}
    for la in layers:
        w = weights.get(la.name)
        if la.searchable or w is None:
            continue
        layout = la.kind if la.kind in KIND_OPS else "linear" if w.ndim == 2 else "conv"  # noqa: PLR2004
        out |= {o.output_name: o for o in ops if o.index in values and weights_agree(w, values[o.index], layout)}
    return out
