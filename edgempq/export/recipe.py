"""Quantize a float .tflite with ai-edge-quantizer, one precision per op (or per op type), and
read back what the flatbuffer really holds: the quantizer silently leaves an op float when it
cannot honour a request, so every result is checked."""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConversionError
from ..schema import Precision

if TYPE_CHECKING:
    from ai_edge_quantizer.qtyping import ModelT, TensorT
    from ai_edge_quantizer.quantizer import Quantizer

# TFLite builtin op codes (schema.fbs) of the weight ops, by ai-edge-quantizer's names for them
# (its CONV_2D_TRANSPOSE is TFLite's TRANSPOSE_CONV), and tensor types.
OP_CODES = {"CONV_2D": 3, "DEPTHWISE_CONV_2D": 4, "FULLY_CONNECTED": 9, "CONV_2D_TRANSPOSE": 67}
KIND_OPS = {"conv": "CONV_2D", "dwconv": "DEPTHWISE_CONV_2D", "linear": "FULLY_CONNECTED", "tconv": "CONV_2D_TRANSPOSE"}
# Where a weight op's (activation, weights, bias) sit among its inputs: TRANSPOSE_CONV's first
# input is the output shape, its activation the third.
_ROLES = {67: (2, 1, 3)}
TYPE_NAMES = {0: "float32", 1: "float16", 7: "int16", 9: "int8", 17: "int4", 2: "int32", 4: "int64"}
_DEQUANTIZE = 6
_WEIGHT_TYPE = {4: 17, 8: 9, 16: 1, 32: 0}
_ACT_TYPE = {8: 9, 16: 7, 32: 0}


def roles(code: int) -> tuple[int, int, int]:
    """(activation, weights, bias) input positions of the weight op with builtin `code`."""
    return _ROLES.get(code, (0, 1, 2))


def activation_input(op: Any, code: int) -> int:
    """The tensor index of a weight op's activation input."""
    return op.inputs[roles(code)[0]]


def bias_input(op: Any, code: int) -> int:
    """The tensor index of a weight op's bias, -1 when it has none."""
    i = roles(code)[2]
    return op.inputs[i] if len(op.inputs) > i else -1


@dataclass(frozen=True)
class OpRule:
    """Quantize ops of type `op` whose output tensor name matches `regex` at `precision`."""

    regex: str
    op: str
    precision: Precision
    label: str = ""  # the layer it is for, to name in errors


def signature_inputs(model: bytes) -> tuple[str, list[dict]]:
    """(signature key, input details) of a float model's first signature."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=model)
    sigs = it.get_signature_list()
    if not sigs:
        raise ConversionError("the float model has no signature, which calibration needs")
    key = next(iter(sigs))
    runner = it.get_signature_runner(key)
    return key, [dict(d, name=n) for n, d in runner.get_input_details().items()]


def quantize(model: bytes, rules: Iterable[OpRule], calibration: list[dict[str, np.ndarray]] | None = None,
             ranges: dict[str, tuple[float, float]] | None = None) -> bytes:
    """The model with each rule applied (float32 rules leave ops float). `calibration` is a list
    of {input name: array}; random normal samples are used when it is None (cost profiling).
    `ranges` (tensor name -> (min, max)) replace the calibrated ranges of those tensors: the
    simulation's own, so that the quantizer derives the simulation's scales and zero points."""
    from ai_edge_quantizer import algorithm_manager, quantizer

    rules = list(rules)
    if all(r.precision.is_float and r.precision.weight_bits == 32 for r in rules):
        return bytes(model)
    q = quantizer.Quantizer(bytearray(model))
    names = algorithm_manager.AlgorithmName
    for r in rules:
        try:
            if r.precision.is_float and r.precision.weight_bits == 32:  # keep float, even under a wider rule
                q.update_quantization_recipe(r.regex, r.op, algorithm_key=names.NO_QUANTIZE)
            elif r.precision.is_float:
                q.add_weight_only_config(r.regex, r.op, 16, algorithm_key=names.FLOAT_CASTING)
            else:
                q.add_static_config(r.regex, r.op, r.precision.act_bits, r.precision.weight_bits)
        except ValueError as e:
            first = str(e).split(". ")[0]
            raise ConversionError(f"{r.label or r.op}: asked for {r.precision} but the quantizer cannot give a "
                                  f"{r.op} that precision ({first})") from None
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
                warnings.catch_warnings():  # size reports, progress bars, debug notes
            warnings.simplefilter("ignore")
            result = None
            if q.need_calibration:
                key, inputs = signature_inputs(model)
                if calibration is None:
                    rng = np.random.default_rng(0)
                    calibration = [{d["name"]: rng.standard_normal(d["shape"]).astype(np.float32) for d in inputs}
                                   for _ in range(8)]
                result = calibrate_min_max(q, model, key, calibration)
                for name, (lo, hi) in (ranges or {}).items():
                    if name in result:
                        shape = np.shape(result[name]["min"])
                        result[name] = {**result[name], "min": np.full(shape, lo, np.float32),
                                        "max": np.full(shape, hi, np.float32)}
            out = q.quantize(result).quantized_model
    except Exception as e:  # noqa: BLE001 - the quantizer raises many types
        raise ConversionError(f"ai-edge-quantizer failed ({type(e).__name__}: {e})") from None
    return inline_buffers(bytes(out))


def inline_buffers(model: bytes) -> bytes:
    """`model` with every buffer inside the flatbuffer. Once a model's large buffers total 256 KiB,
    ai-edge-quantizer stores them after it (`Buffer.offset`/`size`); TFLite Micro does not read
    such buffers: it plans those weights in the arena as if they were activations and computes
    with whatever the arena held. LiteRT reads both, so inlining changes nothing there."""
    from ai_edge_litert import schema_py_generated as schema

    root = schema.Model.GetRootAsModel(model, 0)
    if not any(root.Buffers(i).Offset() > 1 for i in range(root.BuffersLength())):
        return model
    from ai_edge_litert.tools import flatbuffer_utils

    m = schema.ModelT.InitFromObj(root)
    for b in m.buffers:
        if (b.offset or 0) > 1:
            b.data = np.frombuffer(model, np.uint8, count=b.size, offset=b.offset).copy()
            b.offset = b.size = 0
    return bytes(flatbuffer_utils.convert_object_to_bytearray(m))


def calibrate_min_max(q: Quantizer, model: bytes, key: str, calibration: list[dict[str, np.ndarray]]) -> dict:
    """Activation ranges as the simulation sets them: the global min and max over every
    calibration sample. (`Quantizer.calibrate` keeps a moving average of per-sample extremes,
    which narrows every range, clips the logits and parts the artifact from the simulation.)
    Uses the quantizer's recipe manager, which its public calibrate uses too."""
    from ai_edge_quantizer import calibrator
    from ai_edge_quantizer.utils import qsv_utils

    calib = calibrator.Calibrator(bytearray(model), num_threads=1, qsv_update_func=qsv_utils.min_max_update)
    calib.calibrate({key: calibration}, q._recipe_manager)
    return calib.get_model_qsvs()


# Ops whose output holds exactly their input's values (or a subset that keeps the extremes a
# later range needs): a range set on their output can be set on their input instead.
_VALUE_KEEPING = ("RESHAPE", "TRANSPOSE", "SQUEEZE", "EXPAND_DIMS", "PAD", "MIRROR_PAD", "MAX_POOL_2D",
                  "SPACE_TO_DEPTH", "DEPTH_TO_SPACE")


def _same_scale_ops() -> set[int]:
    """Builtin codes of the ops whose output the quantizer gives their input's scale (so a range
    set on the output is not used) and that keep their input's values."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_quantizer.algorithms.utils import common_utils
    from ai_edge_quantizer.utils import constrained_ops_utils

    tied = constrained_ops_utils.get_constrained_op_list(common_utils.OpQuantConstraint.SAME_AS_INPUT_SCALE)
    return {getattr(schema.BuiltinOperator, n.value) for n in tied
            if n.value in _VALUE_KEEPING and hasattr(schema.BuiltinOperator, n.value)}


def range_tensors(model: bytes, op_indices: list[int]) -> dict[int, list[str]]:
    """Per op, the tensors whose calibrated range sets the quantization of its input: the input
    itself and, up through value-keeping ops whose output has no other reader, their inputs.
    (Other tied ops, such as average pooling, take the range the quantizer measured on their
    input; the simulation then takes the artifact's, and deploy reports the difference.)"""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    m = fu.read_model(bytearray(model))
    sg = m.subgraphs[0]
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in m.operatorCodes]
    producer = {o: op for op in sg.operators for o in op.outputs}
    readers: dict[int, int] = {}
    for op in sg.operators:
        for t in op.inputs:
            readers[t] = readers.get(t, 0) + 1
    keep = _same_scale_ops()
    out = {}
    for index in op_indices:
        op = sg.operators[index]
        names, t = [], activation_input(op, codes[op.opcodeIndex])
        while True:
            name = sg.tensors[t].name
            names.append(name.decode() if isinstance(name, bytes) else str(name))
            op = producer.get(t)
            if op is None or codes[op.opcodeIndex] not in keep or readers.get(t, 0) != 1:
                break
            t = op.inputs[0]
        out[index] = names
    return out


@dataclass(frozen=True)
class OpInfo:
    """One weight op of a flatbuffer as it really is."""

    index: int
    op: str
    output_name: str
    weight_type: str
    act_type: str
    weight_bytes: int  # weight + bias buffers and their quantization parameters
    weight_shape: tuple[int, ...] = ()


def weight_ops(model: bytes) -> list[OpInfo]:
    """Every conv / depthwise conv / fully-connected op with its real weight and activation types."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    m = fu.read_model(bytearray(model))
    sg = m.subgraphs[0]
    names = {v: k for k, v in OP_CODES.items()}
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in m.operatorCodes]
    # Weights stored in half precision reach the op through a DEQUANTIZE op: look through it.
    dequantized = {op.outputs[0]: op.inputs[0] for op in sg.operators if codes[op.opcodeIndex] == _DEQUANTIZE}
    out = []
    for i, op in enumerate(sg.operators):
        code = codes[op.opcodeIndex]
        name = names.get(code)
        if name is None:
            continue
        a, w, b = roles(code)
        consts = [sg.tensors[dequantized.get(op.inputs[k], op.inputs[k])] for k in (w, b)
                  if len(op.inputs) > k and op.inputs[k] >= 0]
        act = sg.tensors[op.inputs[a]]
        outname = sg.tensors[op.outputs[0]].name
        out.append(OpInfo(i, name, outname.decode() if isinstance(outname, bytes) else str(outname),
                          TYPE_NAMES.get(consts[0].type, str(consts[0].type)), TYPE_NAMES.get(act.type, str(act.type)),
                          sum(_stored_bytes(m, t) for t in consts), tuple(int(d) for d in consts[0].shape)))
    return out


def _stored_bytes(m: ModelT, t: TensorT) -> int:
    """A constant tensor's buffer plus its quantization parameters (float32 scales, int64 zero
    points), which the flatbuffer stores alongside."""
    data = m.buffers[t.buffer].data
    q = t.quantization
    params = 0
    if q is not None and q.scale is not None:
        params = len(q.scale) * 4 + (len(q.zeroPoint) * 8 if q.zeroPoint is not None else 0)
    return (len(data) if data is not None else 0) + params


def expected_types(p: Precision) -> tuple[str, str]:
    """(weight type, activation type) the flatbuffer must show for precision `p`."""
    if p.is_float:
        return ("float16" if p.weight_bits == 16 else "float32"), "float32"
    return TYPE_NAMES[_WEIGHT_TYPE[p.weight_bits]], TYPE_NAMES[_ACT_TYPE[p.act_bits]]


def check_op(info: OpInfo, p: Precision, what: str) -> None:
    """Raise if the op does not carry precision `p` (the quantizer's silent fallback)."""
    want = expected_types(p)
    if (info.weight_type, info.act_type) != want:
        raise ConversionError(f"{what}: asked for {p} but the {info.op} op holds {info.weight_type} weights and "
                              f"{info.act_type} activations; this runtime's quantizer cannot give it that precision")
