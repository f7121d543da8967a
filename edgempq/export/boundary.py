"""The input/output conversions of a single-layer model, timed apart from the layer.

A quantized single-layer model is QUANTIZE (float -> int) + the layer + DEQUANTIZE (int ->
float). Inside a whole model those conversions appear only where neighbouring layers' precisions
differ, so profiling times them separately: the model is cut down to its activation QUANTIZE
ops (the input side) or its activation DEQUANTIZE ops (the output side), with the tensors the
removed ops produced turned into model inputs."""

from __future__ import annotations

QUANTIZE, DEQUANTIZE = 114, 6


def conversion_model(model: bytes, code: int) -> bytes | None:
    """`model` keeping only its activation ops of builtin `code`, or None if it has none."""
    from ai_edge_litert.tools import flatbuffer_utils
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    m = fu.read_model(bytearray(model))
    sg = m.subgraphs[0]
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in m.operatorCodes]

    def is_constant(t: int) -> bool:
        return m.buffers[sg.tensors[t].buffer].data is not None

    kept = [op for op in sg.operators if codes[op.opcodeIndex] == code and not is_constant(op.inputs[0])]
    if not kept:
        return None
    produced = {t for op in kept for t in op.outputs}
    consumed = {t for op in kept for t in op.inputs if t >= 0}
    sg.operators = kept
    sg.inputs = sorted(consumed - produced)
    sg.outputs = sorted(produced - consumed)
    m.signatureDefs = []
    return bytes(flatbuffer_utils.convert_object_to_bytearray(m))


def io_models(model: bytes) -> tuple[bytes | None, bytes | None]:
    """(input-side QUANTIZE-only model, output-side DEQUANTIZE-only model) of a layer model."""
    return conversion_model(model, QUANTIZE), conversion_model(model, DEQUANTIZE)
