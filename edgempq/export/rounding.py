"""Which rounding each integer op of an artifact uses, measured on this machine's LiteRT, and the
simulation made to round the same way.

Exact weights, biases and input ranges are not enough for the simulation to compute what the
artifact computes: each op also rounds its accumulator to its int8/int16 output, and LiteRT's
kernels do that in different ways (`quant.requant`). Rounding rules differ by a fraction of a
step on a few percent of the values, but these values are systematic (a constant background in
the input lands on one side of a half step in a whole channel), they compound layer after layer,
and at 4 bits they flipped up to 2.7 % of the test predictions.

`measure` runs the artifact on a few samples with every tensor kept, recomputes each integer
op's accumulator exactly from the artifact's own input codes, weights and bias, and tries each
rule: the one that reproduces the op's output codes is the op's. `adopt` gives every simulated
layer its op's output scale, zero point, activation clamp and rule."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ConversionError
from ..quant.requant import RULES, requantize
from .recipe import activation_input, bias_input

if TYPE_CHECKING:
    from ai_edge_quantizer.qtyping import ModelT, OperatorT, TensorT
    from torch import nn

SAMPLES = 8
_RELU, _RELU_N1_TO_1, _RELU6 = 1, 2, 3
_CONV, _DWCONV, _FC, _TCONV, _QUANTIZE = 3, 4, 9, 67, 114  # builtin operator codes
_INT_TYPES = {9: (-128, 127), 7: (-32768, 32767)}  # int8, int16


@dataclass(frozen=True)
class OpRounding:
    """One integer op's output, as measured: the rule, how many of its output values the rule
    reproduced (of `values`), and what the simulation needs to round the same way."""

    rule: str
    matched: float
    values: int
    scale: float
    zero_point: int
    qmin: int
    qmax: int
    multipliers: tuple[float, ...]  # input scale x weight scale / output scale, per channel
    note: str = ""
    # the grids of QUANTIZE ops next to the op (where activation widths change): the integer
    # tensor a QUANTIZE turned into the op's input, and the one it turns the op's output into
    input_grid: tuple[float, int, int, int] | None = None  # (scale, zero point, qmin, qmax)
    output_grid: tuple[float, int, int, int] | None = None

    def summary(self) -> dict:
        """What deploy.json records of the op (all but the per-channel multipliers)."""
        return {k: v for k, v in asdict(self).items() if k != "multipliers"}


def _name(t: TensorT) -> str:
    return t.name.decode() if isinstance(t.name, bytes) else t.name


def _tf_round(x: float) -> int:
    return int(np.sign(x) * np.floor(abs(x) + 0.5))


def _clamp(op: OperatorT, out_type: int, scale: float, zp: int) -> tuple[int, int, str]:
    """The op's output range after its fused activation (TFLite's CalculateActivationRangeQuantized)."""
    lo, hi = (-32768, 32767) if out_type == 7 else (-128, 127)
    act = int(getattr(op.builtinOptions, "fusedActivationFunction", 0) or 0)
    q = lambda f: zp + _tf_round(float(np.float32(f) / np.float32(scale)))  # noqa: E731
    if act in (_RELU, _RELU6):
        lo = max(lo, q(0.0))
    if act == _RELU6:
        hi = min(hi, q(6.0))
    if act == _RELU_N1_TO_1:
        lo, hi = max(lo, q(-1.0)), min(hi, q(1.0))
    return lo, hi, "" if act in (0, _RELU, _RELU6, _RELU_N1_TO_1) else f"fused activation {act} is not emulated"


def _same_pads(size: int, stride: int, kernel: int, dilation: int) -> tuple[int, int]:
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def accumulators(m: ModelT, op: OperatorT, code: int, x: np.ndarray) -> np.ndarray:
    """An op's int64 accumulators (bias added), channels last, from its input codes `x` (the
    artifact's, NHWC or N x features), its weights and bias, computed exactly."""
    import torch

    from .exact import tensor_values

    sg = m.subgraphs[0]
    tin, tw = sg.tensors[activation_input(op, code)], sg.tensors[op.inputs[1]]
    zp = int(tin.quantization.zeroPoint[0]) if tin.quantization.zeroPoint is not None else 0
    w = tensor_values(m, tw).astype(np.float64)
    xs = x.astype(np.float64) - zp
    if code == _FC:
        acc = xs.reshape(-1, w.shape[1]) @ w.T
    elif code == _TCONV:
        acc = _transposed(op, w, xs, tuple(sg.tensors[op.outputs[0]].shape))
    else:
        o = op.builtinOptions
        kh, kw = w.shape[1], w.shape[2]
        dh, dw = int(o.dilationHFactor or 1), int(o.dilationWFactor or 1)
        sh, sw = int(o.strideH or 1), int(o.strideW or 1)
        if int(o.padding) == 0:  # SAME: TensorFlow pads the bottom / right more
            (t, b), (left, r) = _same_pads(xs.shape[1], sh, kh, dh), _same_pads(xs.shape[2], sw, kw, dw)
            xs = np.pad(xs, ((0, 0), (t, b), (left, r), (0, 0)))
        inp = torch.from_numpy(np.ascontiguousarray(xs.transpose(0, 3, 1, 2)))
        if code == _DWCONV:  # (1, kh, kw, C_out) -> (C_out, 1, kh, kw), groups = input channels
            weight, groups = torch.from_numpy(np.ascontiguousarray(w.transpose(3, 0, 1, 2))), xs.shape[3]
        else:  # (O, kh, kw, I) -> (O, I, kh, kw)
            weight, groups = torch.from_numpy(np.ascontiguousarray(w.transpose(0, 3, 1, 2))), 1
        acc = torch.nn.functional.conv2d(inp, weight, None, (sh, sw), 0, (dh, dw), groups).numpy().transpose(0, 2, 3, 1)
    acc = np.round(acc).astype(np.int64)
    if (b := bias_input(op, code)) >= 0:
        acc = acc + tensor_values(m, sg.tensors[b]).astype(np.int64)
    return acc


def _transposed(op: OperatorT, w: np.ndarray, xs: np.ndarray, out_shape: tuple[int, ...]) -> np.ndarray:
    """A TRANSPOSE_CONV's accumulators, NHWC: the full transposed convolution of `xs` (input
    codes minus zero point) by `w` (O, kh, kw, I), cut to the output shape at TFLite's padding
    (SAME pads as the forward conv from the output to the input would)."""
    import torch

    o = op.builtinOptions
    sh, sw = int(o.strideH or 1), int(o.strideW or 1)
    inp = torch.from_numpy(np.ascontiguousarray(xs.transpose(0, 3, 1, 2)))
    weight = torch.from_numpy(np.ascontiguousarray(w.transpose(3, 0, 1, 2)))  # (I, O, kh, kw)
    full = torch.nn.functional.conv_transpose2d(inp, weight, None, (sh, sw)).numpy().transpose(0, 2, 3, 1)
    h, wd = out_shape[1], out_shape[2]
    top = left = 0
    if int(o.padding) == 0:  # SAME
        top, left = _same_pads(h, sh, w.shape[1], 1)[0], _same_pads(wd, sw, w.shape[2], 1)[0]
    full = np.pad(full, ((0, 0), (0, max(top + h - full.shape[1], 0)), (0, max(left + wd - full.shape[2], 0)), (0, 0)))
    return full[:, top:top + h, left:left + wd]


def _grid(t: TensorT) -> tuple[float, int, int, int] | None:
    q = t.quantization
    if t.type not in _INT_TYPES or q is None or q.scale is None or len(q.scale) != 1:
        return None
    return float(np.float32(q.scale[0])), int(q.zeroPoint[0]), *_INT_TYPES[t.type]


def neighbour_grids(m: ModelT, index: int) -> tuple[tuple | None, tuple | None]:
    """(the integer grid a QUANTIZE op converted op `index`'s input from, the one a QUANTIZE op
    converts its output to when that is the output's only reader), None where there is none."""
    sg = m.subgraphs[0]
    op = sg.operators[index]
    code = lambda o: int(m.operatorCodes[o.opcodeIndex].builtinCode)  # noqa: E731
    before = after = None
    for o in sg.operators:
        if code(o) == _QUANTIZE and activation_input(op, code(op)) in list(o.outputs):
            before = _grid(sg.tensors[o.inputs[0]])
    readers = [o for o in sg.operators if op.outputs[0] in list(o.inputs)]
    if len(readers) == 1 and code(readers[0]) == _QUANTIZE:
        after = _grid(sg.tensors[readers[0].outputs[0]])
    return before, after


def _op_rounding(m: ModelT, op: OperatorT, x: np.ndarray, y: np.ndarray, name: str) -> OpRounding:
    sg = m.subgraphs[0]
    code = int(m.operatorCodes[op.opcodeIndex].builtinCode)
    tin, tw, tout = sg.tensors[activation_input(op, code)], sg.tensors[op.inputs[1]], sg.tensors[op.outputs[0]]
    wq = tw.quantization
    if any(_grid(t) is None for t in (tin, tout)) or wq is None or wq.scale is None or not len(wq.scale):
        raise ConversionError(f"layer {name}: its op in the artifact is not an integer op (its input, weights or "
                              "output are not quantized); give the policy the artifact was deployed with")
    scale, zp = float(np.float32(tout.quantization.scale[0])), int(tout.quantization.zeroPoint[0])
    mult = (float(np.float32(tin.quantization.scale[0])) * np.asarray(tw.quantization.scale, np.float64)) / scale
    lo, hi, note = _clamp(op, tout.type, scale, zp)
    acc = accumulators(m, op, code, x).reshape(-1, len(mult))
    got = y.astype(np.int64).reshape(-1, len(mult))
    matched = {r: float(np.mean(np.clip(requantize(acc, mult, r) + zp, lo, hi) == got)) for r in RULES}
    best = max(RULES, key=lambda r: (matched[r], -RULES.index(r)))  # a tie keeps the simplest rule
    before, after = neighbour_grids(m, list(sg.operators).index(op))
    return OpRounding(best, matched[best], int(got.size), scale, zp, lo, hi, tuple(float(v) for v in mult), note,
                      before, after)


def measure(model: bytes, ops: dict[str, int], x_model_layout: np.ndarray) -> dict[str, OpRounding]:
    """Per layer (-> its op index in `model`), the rounding its op uses on this machine's LiteRT,
    measured on the samples `x_model_layout` (float, as the artifact's input takes them)."""
    from ..divergence import kept_tensors
    from .exact import _read

    m = _read(model)
    sg = m.subgraphs[0]
    for name, i in ops.items():
        if not 0 <= i < len(sg.operators) or int(m.operatorCodes[sg.operators[i].opcodeIndex].builtinCode) not in (
                _CONV, _DWCONV, _FC, _TCONV):
            raise ConversionError(f"layer {name}: op {i} of the artifact is not a conv or fully connected op; "
                                  "the layer map does not fit the artifact: deploy again")
    def ends_of(op: OperatorT) -> tuple[str, str]:
        code = int(m.operatorCodes[op.opcodeIndex].builtinCode)
        return _name(sg.tensors[activation_input(op, code)]), _name(sg.tensors[op.outputs[0]])

    ends = {name: ends_of(sg.operators[i]) for name, i in ops.items()}
    raw, _ = kept_tensors(model, x_model_layout, sorted({t for pair in ends.values() for t in pair}))
    return {name: _op_rounding(m, sg.operators[ops[name]], raw[a], raw[b], name) for name, (a, b) in ends.items()}


def adopt(qmodel: nn.Module, found: dict[str, OpRounding]) -> None:
    """Give each simulated layer its op's output rounding (a layer whose fused activation is not
    emulated keeps a float output)."""
    import torch

    from ..quant.requant import OutputQuantizer

    for name, r in found.items():
        mod = qmodel.get_submodule(name)
        channels = mod.out_features if isinstance(mod, torch.nn.Linear) else mod.out_channels
        if len(r.multipliers) != channels or mod.act_quant is None:
            raise ConversionError(f"layer {name} has {channels} output channels but its op in the artifact has "
                                  f"{len(r.multipliers)}; the layer map does not fit the artifact: deploy again")
    for name, r in found.items():
        mod = qmodel.get_submodule(name)
        mod.act_quant.set_input_grid(r.input_grid)
        if r.note:
            mod.set_output_rounding(None)
            continue
        dim = -1 if isinstance(mod, torch.nn.Linear) else 1
        grid = (r.scale, r.zero_point, r.qmin, r.qmax)
        mod.set_output_rounding(OutputQuantizer.build(r.rule, grid, np.asarray(r.multipliers), dim, r.output_grid))


def saved_quantizers(qmodel: nn.Module, state: dict) -> None:
    """Before loading a saved simulation: empty output quantizers for the layers whose saved
    state has one (a simulation saved before output rounding existed has none, and keeps none)."""
    import torch

    from ..quant.modules import QUANT_TYPES
    from ..quant.requant import OutputQuantizer

    for name, mod in qmodel.named_modules():
        if not isinstance(mod, QUANT_TYPES):
            continue
        key = f"{name}.out_quant.steps" if name else "out_quant.steps"
        if key in state:
            dim = -1 if isinstance(mod, torch.nn.Linear) else 1
            mod.set_output_rounding(OutputQuantizer(int(state[key].numel()), dim))
        if mod.act_quant is not None and f"{name}.act_quant.input_grid" in state:
            mod.act_quant.set_input_grid((1.0, 0, -128, 127))  # the saved values replace these


def summary(found: dict[str, OpRounding]) -> dict:
    """What deploy.json records: per layer, the rule and how much of the op it reproduced."""
    return {name: r.summary() for name, r in found.items()}
