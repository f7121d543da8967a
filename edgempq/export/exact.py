"""The simulation's integers in the artifact, bit for bit, and the proof.

ai-edge-quantizer lays out the quantized graph (types, QUANTIZE ops, tensor order), but it
rounds weights itself, to nearest on a min-max grid. So after it ran, every integer layer's
weight buffer, per-channel scales and zero points, and bias (int32 beside 8-bit activations,
int64 beside 16-bit ones, on input scale x weight scale) are overwritten with the values the
fake-quantized PyTorch model uses, and read back and compared, op by op: a layer whose values
differ is a ConversionError naming it. The layer's input scale and zero point come from the
artifact's calibration, which was given the simulation's own ranges; the simulation takes them
over exactly (any difference is reported), so that the bias integers mean the same in both."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ConversionError
from .mapping import tflite_layout
from .recipe import activation_input, bias_input

if TYPE_CHECKING:
    from ai_edge_quantizer.qtyping import ModelT, OperatorT, TensorT
    from torch import nn

_INT_TYPES = {9: np.int8, 17: np.int8, 7: np.int16, 2: np.int32, 4: np.int64}  # int4 is unpacked to int8


@dataclass(frozen=True)
class LayerValues:
    """One integer layer's values as the simulation uses them, in TFLite's layout."""

    codes: np.ndarray  # integer weights, TFLite layout (OHWI, 1HWO, OI)
    scale: np.ndarray  # float32 per output channel
    axis: int  # the output-channel dimension of `codes`
    bias: np.ndarray | None  # integer bias (int64 values), None without one
    bias_scale: np.ndarray | None  # float32 per output channel


def simulation_values(module: nn.Module, kind: str) -> LayerValues:
    """What the fake-quantized layer computes with (its act quantizer must already hold the
    artifact's input range, see `adopt_input_range`)."""
    codes, axis = tflite_layout(module.weight_quant.codes(module.weight).numpy(), kind)
    scale = module.weight_quant.step_value().reshape(-1).float().numpy()
    bias = module.bias_codes()
    bias_scale = module.bias_scale()
    return LayerValues(codes, scale.astype(np.float32), axis, None if bias is None else bias.numpy(),
                       None if bias_scale is None else bias_scale.float().numpy().astype(np.float32))


def check_float_weights(base: bytes, ops: dict[str, int], module: nn.Module, kinds: dict[str, str]) -> None:
    """The float graph's weights must be the ones edgempq exported (the simulation's integers are
    written over the quantized ones): a converter that changed them, e.g. by folding a BatchNorm
    that edgempq could not fold because torch.fx cannot trace the model, is refused."""
    for name in changed_weights(base, ops, module, kinds)[:1]:
        raise ConversionError(f"layer {name}: the converter changed its weights (it folded the op after it "
                                  "into them: a BatchNorm edgempq could not fold, e.g. because torch.fx cannot trace "
                                  "the model, or a scale such as hard-sigmoid's x/6), so the artifact cannot carry "
                                  "the simulation's integers; set the layer to f16 or f32 in the policy (search "
                                  f"--fixed {name}=f32), or make the model traceable by torch.fx")


def changed_weights(base: bytes, ops: dict[str, int], module: nn.Module, kinds: dict[str, str]) -> list[str]:
    """The layers (of `ops`: name -> op index in the float graph `base`) whose weights in the
    graph are not the PyTorch module's: the converter folded something into them."""
    from .mapping import _op_weights

    stored, out = _op_weights(base), []
    for name, index in ops.items():
        want = tflite_layout(module.get_submodule(name).weight.detach().numpy(), kinds[name])[0]
        got = stored.get(index)
        tol = 1e-5 * float(np.abs(want).max() or 1.0)
        if got is None or got.shape != want.shape or not np.allclose(got, want, rtol=1e-4, atol=tol):
            out.append(name)
    return out


def _code(m: ModelT, op: OperatorT) -> int:
    c = m.operatorCodes[op.opcodeIndex]
    return max(c.builtinCode, c.deprecatedBuiltinCode)


def _read(model: bytes) -> ModelT:
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    return fu.read_model(bytearray(model))


def _pack_int4(values: np.ndarray) -> np.ndarray:
    """Two int4 a byte, the first in the low nibble (TFLite's packing)."""
    v = (values.reshape(-1).astype(np.int16) & 0x0F).astype(np.uint8)
    if len(v) % 2:
        v = np.concatenate([v, np.zeros(1, np.uint8)])
    return (v[0::2] | (v[1::2] << 4)).astype(np.uint8)


def _unpack_int4(data: np.ndarray, count: int) -> np.ndarray:
    d = np.asarray(data, np.uint8)
    out = np.stack([d & 0x0F, d >> 4], 1).reshape(-1)[:count].astype(np.int8)
    out[out > 7] -= 16
    return out


def tensor_values(m: ModelT, tensor: TensorT) -> np.ndarray:
    """A constant integer tensor's values (int4 unpacked), in its shape."""
    data = m.buffers[tensor.buffer].data
    if data is None:
        return np.zeros(0, np.int64)
    count = int(np.prod(tensor.shape))
    if tensor.type == 17:
        return _unpack_int4(data, count).reshape(tuple(tensor.shape))
    return np.frombuffer(bytes(np.asarray(data, np.uint8)), _INT_TYPES[tensor.type]).reshape(tuple(tensor.shape))


def _own_buffer(m: ModelT, tensor: TensorT) -> None:
    """Give `tensor` a buffer of its own when another tensor shares it."""
    refs = Counter(t.buffer for g in m.subgraphs for t in g.tensors)
    if refs[tensor.buffer] > 1:
        m.buffers.append(type(m.buffers[0])())
        tensor.buffer = len(m.buffers) - 1


def _write(m: ModelT, tensor: TensorT, values: np.ndarray, scale: np.ndarray, axis: int, what: str) -> None:
    if tensor.type not in _INT_TYPES:
        raise ConversionError(f"{what} is stored as type {tensor.type}, not as integers; cannot write the simulation's")
    if tuple(tensor.shape) != values.shape:
        raise ConversionError(f"{what} has shape {tuple(tensor.shape)} in the artifact but {values.shape} in the "
                              "simulation")
    _own_buffer(m, tensor)
    data = _pack_int4(values) if tensor.type == 17 else values.astype(_INT_TYPES[tensor.type]).view(np.uint8)
    m.buffers[tensor.buffer].data = np.ascontiguousarray(data).reshape(-1)
    q = tensor.quantization
    q.scale = [float(v) for v in scale]
    q.zeroPoint = [0] * len(scale)
    q.quantizedDimension = axis


def carry(model: bytes, ops: dict[str, int], values: dict[str, LayerValues]) -> bytes:
    """`model` with each layer's weights, scales and bias replaced by the simulation's; `ops`
    maps a layer to its op index in `model`."""
    from ai_edge_litert.tools import flatbuffer_utils

    m = _read(model)
    sg = m.subgraphs[0]
    for name, v in values.items():
        op = sg.operators[ops[name]]
        _write(m, sg.tensors[op.inputs[1]], v.codes, v.scale, v.axis, f"layer {name}'s weights")
        if v.bias is not None:
            b = bias_input(op, _code(m, op))
            if b < 0:
                raise ConversionError(f"layer {name} has a bias in the simulation but none in the artifact")
            _write(m, sg.tensors[b], v.bias, v.bias_scale, 0, f"layer {name}'s bias")
    return bytes(flatbuffer_utils.convert_object_to_bytearray(m))


def _differ(name: str, what: str, got: np.ndarray, want: np.ndarray) -> str | None:
    if got.shape != want.shape:
        return f"layer {name}: the artifact's {what} have shape {got.shape}, the simulation's {want.shape}"
    bad = np.flatnonzero(got.reshape(-1) != want.reshape(-1))
    if len(bad):
        return (f"layer {name}: {len(bad)} of {got.size} {what} differ from the simulation's (first at flat index "
                f"{bad[0]}: {got.reshape(-1)[bad[0]]} vs {want.reshape(-1)[bad[0]]})")
    return None


def check(model: bytes, ops: dict[str, int], values: dict[str, LayerValues]) -> dict[str, dict]:
    """Read every layer's values back from the artifact and compare them with the simulation's;
    a difference is a ConversionError naming the layer. Returns what was compared, per layer."""
    m = _read(model)
    sg = m.subgraphs[0]
    out = {}
    for name, v in values.items():
        op = sg.operators[ops[name]]
        wt = sg.tensors[op.inputs[1]]
        parts = [("integer weights", tensor_values(m, wt), v.codes),
                 ("weight scales", np.asarray(wt.quantization.scale, np.float32), v.scale),
                 ("weight zero points", np.asarray(wt.quantization.zeroPoint), np.zeros(len(v.scale), np.int64))]
        b = bias_input(op, _code(m, op))
        bt = sg.tensors[b] if b >= 0 else None
        if v.bias is not None:
            parts += [("bias integers", tensor_values(m, bt).astype(np.int64), v.bias.astype(np.int64)),
                      ("bias scales", np.asarray(bt.quantization.scale, np.float32), v.bias_scale)]
        elif bt is not None:  # no bias in the simulation: the artifact's must add nothing
            got = tensor_values(m, bt).astype(np.int64)
            parts.append(("bias integers", got, np.zeros_like(got)))
        for what, got, want in parts:
            problem = _differ(name, what, got, want)
            if problem:
                raise ConversionError(problem + "; the artifact would not compute what was simulated")
        out[name] = {"weights": int(v.codes.size), "channels": len(v.scale),
                     "bias": 0 if v.bias is None else int(v.bias.size), "exact": True}
    return out


def input_ranges(model: bytes, ops: dict[str, int]) -> dict[str, tuple[float, int]]:
    """Per layer, (scale, zero point) of its op's input activation in the artifact."""
    m = _read(model)
    sg = m.subgraphs[0]
    out = {}
    for name, index in ops.items():
        op = sg.operators[index]
        q = sg.tensors[activation_input(op, _code(m, op))].quantization
        if q is None or q.scale is None or len(q.scale) != 1:
            raise ConversionError(f"layer {name}: its input is not quantized per tensor in the artifact")
        out[name] = (float(np.float32(q.scale[0])), int(q.zeroPoint[0]))
    return out
