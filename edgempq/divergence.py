"""Where an artifact first parts from its simulation: every searched layer's output read from
the artifact (LiteRT on this machine, all tensors kept) and from the simulated PyTorch model on
the same samples, compared in execution order.

A layer's TFLite op may carry a fused activation (ReLU, ReLU6) that PyTorch runs as a separate
module; it is applied to the simulated output before comparing. The first layer whose relative
error passes `tol` and at least doubles the largest error of every layer that ran before it is
where the two part: its inputs still agreed, its output does not."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from .schema.results import Divergence, DivergenceRow, LayerRow

TOL = 0.05
JUMP = 2.0
SAMPLES = 64
_CLIP = {1: (0.0, np.inf), 2: (-1.0, 1.0), 3: (0.0, 6.0)}  # RELU, RELU_N1_TO_1, RELU6
_TANH = 4


def ops_by_output(model: bytes) -> dict[str, tuple[int, int]]:
    """Output tensor name -> (op index, fused activation code) of every op."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    sg = fu.read_model(bytearray(model)).subgraphs[0]
    out = {}
    for i, op in enumerate(sg.operators):
        act = int(getattr(op.builtinOptions, "fusedActivationFunction", 0) or 0)
        for t in op.outputs:
            name = sg.tensors[t].name
            out[name.decode() if isinstance(name, bytes) else name] = (i, act)
    return out


def kept_tensors(model: bytes, x_model_layout: np.ndarray, names: list[str]) -> tuple[dict, dict]:
    """Tensors `names` as the artifact holds them (integer codes or floats), one sample at a
    time through LiteRT with every tensor kept, stacked over the samples; and their details."""
    from ai_edge_litert.interpreter import Interpreter

    from .backends.base import device_script
    from .errors import DeviceError

    script = device_script()
    with warnings.catch_warnings():  # "preserve all tensors is for debugging": it is
        warnings.simplefilter("ignore")
        it = Interpreter(model_content=model, experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    d = it.get_input_details()[0]
    try:
        q = script.quantize(np.asarray(x_model_layout, np.float32), d["dtype"], *d["quantization"])
    except script.DeviceError as e:
        raise DeviceError(f"reading the artifact's layers: {e}") from None
    details = {t["name"]: t for t in it.get_tensor_details()}
    got: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for i in range(len(q)):
        it.set_tensor(d["index"], q[i : i + 1])
        it.invoke()
        for n in names:
            got[n].append(it.get_tensor(details[n]["index"]).copy())
    return {n: np.concatenate(v) for n, v in got.items()}, {n: details[n] for n in names}


def artifact_outputs(model: bytes, x_model_layout: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """The dequantized values of tensors `names` for each sample, read from LiteRT."""
    from .backends.base import device_script

    script = device_script()
    raw, details = kept_tensors(model, x_model_layout, names)
    return {n: script.dequantize(raw[n], *details[n]["quantization"]) for n in names}


def simulated_outputs(qmodel: Any, x: np.ndarray, layers: list[str]) -> dict[str, np.ndarray]:
    """Each layer's output in the simulated model (a conv's channels last, as TFLite holds them)."""
    import torch

    acts: dict[str, np.ndarray] = {}
    hooks = [qmodel.get_submodule(n).register_forward_hook(
        lambda _m, _i, o, n=n: acts.__setitem__(n, o.detach().float().numpy())) for n in layers]
    try:
        with torch.no_grad():
            qmodel(torch.from_numpy(np.ascontiguousarray(x)))
    finally:
        for h in hooks:
            h.remove()
    from .layers import CONV_TYPES
    from .layout import channels_last

    convs = {n for n in acts if isinstance(qmodel.get_submodule(n), CONV_TYPES)}
    return {n: channels_last(a) if n in convs else a for n, a in acts.items()}


def find(model: bytes, qmodel: Any, rows: tuple[LayerRow, ...], x: np.ndarray, tol: float = TOL,
         jump: float = JUMP) -> Divergence:
    """Per searched layer (deploy.json's rows), the relative L2 error between artifact and
    simulation on samples `x` (N, C, H, W) in execution order, and the first layer where they
    part (None when none does)."""
    from .backends.base import io_quantization
    from .layout import to_model

    ops = ops_by_output(model)
    rows = sorted((r for r in rows if r.op_output in ops), key=lambda r: ops[r.op_output][0])
    art = artifact_outputs(model, to_model(x, io_quantization(model)[0]["shape"]), [r.op_output for r in rows])
    sim = simulated_outputs(qmodel, x, [r.layer for r in rows])
    table: list[DivergenceRow] = []
    first, worst = None, 0.0
    for r in rows:
        index, act = ops[r.op_output]
        if r.layer not in sim:
            continue  # the module never ran on these samples
        s, a = _activated(sim[r.layer], act), art[r.op_output]
        if a.shape != s.shape and _squeezed(a.shape) == _squeezed(s.shape):
            a = a.reshape(s.shape)  # a Conv1d's CONV_2D holds its output with a height of 1
        if a.shape != s.shape:  # otherwise never reshape: that would hide a layout mismatch
            table.append(DivergenceRow(r.layer, r.precision, index, None, False,
                                       f"artifact {a.shape} vs simulation {s.shape}: not comparable"))
            continue
        err = float(np.linalg.norm(a - s) / max(np.linalg.norm(s), 1e-12))
        parts = err > tol and err > jump * worst
        if parts and first is None:
            first = r.layer
        table.append(DivergenceRow(r.layer, r.precision, index, err, parts and first == r.layer))
        worst = max(worst, err)
    return Divergence(first, tol, jump, int(len(x)), tuple(table))


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    """A shape without its axes of size 1 past the batch."""
    return (shape[0], *(d for d in shape[1:] if d != 1))


def _activated(s: np.ndarray, act: int) -> np.ndarray:
    """The simulated output with the op's fused activation applied (PyTorch runs it as a module)."""
    if act in _CLIP:
        return np.clip(s, *_CLIP[act])
    return np.tanh(s) if act == _TANH else s
