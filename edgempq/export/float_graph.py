"""PyTorch -> ONNX -> onnx2tf -> a float .tflite with a signature (the quantizer's input).

onnx2tf downloads a sample-image file whenever every model input is a 4-D, 3-channel image;
it first looks for that file in its working directory, so we always run it in a private folder
where we have written the file (from real calibration images when given)."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConversionError

if TYPE_CHECKING:
    from torch import nn

ONNX2TF_SAMPLE = "calibration_image_sample_data_20x128x128x3_float32.npy"
OPSET = 20  # the first with a Gelu op, which onnx2tf makes TFLite's GELU (Erf, at 17, has no TFLite kernel)


def export_onnx(module: nn.Module, input_shape: tuple[int, ...], path: Path) -> Path:
    """The model in eval mode as ONNX (BatchNorm folded by constant folding)."""
    import torch

    was_training = module.training
    module.eval()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(module, torch.zeros(1, *input_shape), str(path), dynamo=False, opset_version=OPSET,
                              input_names=["input"], output_names=["output"], do_constant_folding=True)
    except Exception as e:  # noqa: BLE001 - the exporter raises many types
        raise ConversionError(f"exporting the model to ONNX failed ({type(e).__name__}: {e})") from None
    finally:
        module.train(was_training)
    return path


def _sample_images(images: np.ndarray | None) -> np.ndarray:
    """20 x 128 x 128 x 3 float32 in [0, 1], from real images when available."""
    if images is None or images.ndim != 4 or len(images) == 0:
        rng = np.random.default_rng(0)
        return rng.random((20, 128, 128, 3), dtype=np.float32)
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images[:20], dtype=np.float32))
    x = x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x[:, :3]
    x = torch.nn.functional.interpolate(x, size=(128, 128), mode="bilinear", align_corners=False)
    x = (x - x.amin()) / max(float(x.amax() - x.amin()), 1e-6)
    x = x.permute(0, 2, 3, 1).numpy()
    return np.concatenate([x] * (20 // len(x) + 1))[:20].astype(np.float32)


def _import_onnxsim():  # noqa: ANN202 - the module
    """onnxsim, imported with TMPDIR in a private folder: the onnxruntime it loads writes a
    session file (.ses) into the temporary folder at import, which would stay behind in the user's."""
    import importlib
    import os

    if "onnxsim" in sys.modules:
        return sys.modules["onnxsim"]
    before = os.environ.get("TMPDIR")
    with tempfile.TemporaryDirectory(prefix="edgempq-ort-") as private:
        os.environ["TMPDIR"] = private
        try:
            return importlib.import_module("onnxsim")
        finally:
            if before is None:
                os.environ.pop("TMPDIR", None)
            else:
                os.environ["TMPDIR"] = before


def simplify_onnx(path: Path) -> Path:
    """The ONNX file with its shapes inferred and constants folded (onnx-simplifier without its
    optimizer passes, which fuse sibling MatMuls, such as separate q/k/v projections, into one
    op that no longer matches the layers). onnx2tf needs the static shapes to lay attention out;
    a model the simplifier cannot handle is converted as exported."""
    import onnx

    onnxsim = _import_onnxsim()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            model, ok = onnxsim.simplify(onnx.load(str(path)), perform_optimization=False)
        if ok:
            onnx.save(model, str(path))
    except Exception:  # noqa: BLE001, S110 - the simplifier raises many types; the export is still valid
        pass
    return path


def onnx_to_tflite(onnx_path: Path, images: np.ndarray | None = None, strict: bool = True) -> bytes:
    """onnx2tf's SavedModel (of the simplified graph), converted with a `serving_default`
    signature. `strict=False` skips onnx2tf's accuracy correction, which fails on some graphs
    it would convert correctly (a scale on attention scores); the caller checks that result."""
    with tempfile.TemporaryDirectory(prefix="edgempq-onnx2tf-") as work:
        np.save(Path(work) / ONNX2TF_SAMPLE, _sample_images(images))
        out = Path(work) / "saved_model"
        cmd = [sys.executable, "-m", "onnx2tf", "-i", str(simplify_onnx(Path(onnx_path)).resolve()), "-o", str(out),
               "-osd", "-n", "-nuo", *([] if strict else ["-dsm"])]
        p = subprocess.run(cmd, cwd=work, capture_output=True, text=True, env=_onnx2tf_env(work))
        if p.returncode != 0 or not (out / "saved_model.pb").exists():
            raise OnnxOpError(*failed_op(p.stdout + p.stderr))
        return _saved_model_to_tflite(out)


def _onnx2tf_env(work: str) -> dict[str, str]:
    """onnx2tf's environment: TensorFlow quiet, TMPDIR in the private folder (stray files, such
    as onnxruntime's .ses, go with it)."""
    from ..quiet import quiet_tensorflow_env

    return {**quiet_tensorflow_env(), "TMPDIR": work}


class OnnxOpError(ConversionError):
    """onnx2tf failed on one ONNX node (`node`: its name, which carries the PyTorch module path)."""

    def __init__(self, node: str | None, detail: str) -> None:
        super().__init__(f"onnx2tf could not convert {f'ONNX node {node}' if node else 'the model'}: {detail}")
        self.node, self.detail = node, detail


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def failed_op(log: str) -> tuple[str | None, str]:
    """(the ONNX node onnx2tf failed on, or None; the error's own words, one line) from its output."""
    lines = [_ANSI.sub("", ln).strip() for ln in log.splitlines()]
    nodes = [ln.split("onnx_op_name:", 1)[1].strip() for ln in lines if "onnx_op_name:" in ln]
    errors = [i for i, ln in enumerate(lines) if re.match(r"^[A-Za-z_.]*(Error|Exception): ", ln)]
    if errors:
        i = errors[-1]
        words = [lines[i].split(": ", 1)[1]] + [ln for ln in lines[i + 1:i + 4] if ln and not ln.startswith("Call ")]
        if words[0].startswith("Exception encountered when calling layer") and len(words) > 1:
            words = words[1:2]  # Keras' wrapper line names a TF layer; the next line says what went wrong
        detail = re.sub(r" for '\{\{node [^']*'", "", " ".join(words)).rstrip(".")
    else:
        detail = " | ".join([ln for ln in lines if "rror" in ln][-3:]) or "no message"
    return (nodes[-1] if nodes else None), (detail[:300] + "…" if len(detail) > 300 else detail)


def module_of(module: nn.Module, node: str) -> tuple[str, str] | None:
    """(the submodule's dotted path, the op) an ONNX node name such as `/attn/Reshape_1` (or
    onnx2tf's `wa/attn/Reshape_1`) comes from, when the path names a submodule of `module`."""
    parts = [t for t in node.split("/") if t]
    if len(parts) < 2:
        return None
    path, op = parts[:-1], re.sub(r"_\d+$", "", parts[-1])
    names = [n for n, _ in module.named_modules() if n]
    for start in range(len(path)):  # the longest path that names a submodule (skipping prefixes)
        tail = ".".join(path[start:])
        if tail in names:
            return tail, op
        inside = [n for n in names if n.endswith("." + tail)]  # onnx2tf may shorten a ModuleList's scope
        if inside:
            return inside[0], op  # converted in order: the first of them is where it stopped
    return None


def tflite_convert(make_converter: Callable[[Any], Any], what: str) -> bytes:
    """Run the TFLite converter that `make_converter(tf)` builds, quietly; a failure is a
    ConversionError saying `what` failed."""
    from ..quiet import import_tensorflow

    tf = import_tensorflow()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return bytes(make_converter(tf).convert())
    except Exception as e:  # noqa: BLE001 - TensorFlow raises many types
        raise ConversionError(f"{what} failed ({e})") from None


def _saved_model_to_tflite(folder: Path) -> bytes:
    return tflite_convert(lambda tf: tf.lite.TFLiteConverter.from_saved_model(str(folder)),
                          "converting onnx2tf's SavedModel to TFLite")


def float_tflite(module: nn.Module, input_shape: tuple[int, ...], images: np.ndarray | None = None) -> bytes:
    """The whole model as a float32 .tflite (NHWC input) with a signature, its LayerNorms and
    GroupNorms written out (see `norms`). Where onnx2tf's strict conversion fails, its lenient
    one is used if the result computes what the model computes; else the node onnx2tf could not
    convert is named by the PyTorch module it comes from."""
    from .norms import written_out

    with tempfile.TemporaryDirectory(prefix="edgempq-onnx-") as work:
        path = export_onnx(written_out(module), input_shape, Path(work) / "model.onnx")
        try:
            return onnx_to_tflite(path, images)
        except OnnxOpError as e:
            lenient = _lenient(module, input_shape, path, images)
            if lenient is not None:
                return lenient
            found = module_of(module, e.node) if e.node else None
            if found is None:
                raise
            name, op = found
            kind = type(module.get_submodule(name)).__name__
            raise ConversionError(f"onnx2tf cannot convert the {op} in module '{name}' ({kind}): {e.detail}; "
                                  f"{_fix_for(op, e.detail)}") from None


def _fix_for(op: str, detail: str) -> str:
    """What to change in the module's forward for the converter, from the op and its error."""
    if op in ("Mul", "Div") and "Output tensors of a Functional model" in detail:
        # onnx2tf's accuracy correction fails on a constant scale applied to attention scores
        return ("if it scales attention scores, scale q before the q @ k^T product instead (and keep the token "
                "count apart from the feature widths), or replace the module")
    return ("rewrite that module's forward with ops the converter keeps in one layout (e.g. fixed shapes, no reshape "
            "across the channel axis), or replace the module")


def _lenient(module: nn.Module, input_shape: tuple[int, ...], path: Path, images: np.ndarray | None) -> bytes | None:
    """onnx2tf's conversion without its accuracy correction, when it converts and computes what
    the model computes; else None (the strict failure is then the one reported)."""
    try:
        tfl = onnx_to_tflite(path, images, strict=False)
        return tfl if _computes_as(module, input_shape, tfl, images) else None
    except Exception:  # noqa: BLE001 - any failure here leaves the strict error to report
        return None


def _computes_as(module: nn.Module, input_shape: tuple[int, ...], tfl: bytes, images: np.ndarray | None) -> bool:
    """Whether the float `tfl` gives the model's outputs, each sample within 1e-3 relative error,
    on two random inputs and up to two of the calibration samples."""
    import torch

    from ..backends.base import backend_for, io_quantization
    from ..layout import channels_first, to_model
    from ..targets import load_target

    x = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0))
    if images is not None and tuple(images.shape[1:]) == tuple(input_shape):
        x = torch.cat([x, torch.as_tensor(np.asarray(images[:2], np.float32))])
    modes = {m: m.training for m in module.modules()}
    try:
        with torch.no_grad():
            want = module.eval()(x).numpy()
    finally:
        for m, training in modes.items():
            m.training = training
    with backend_for(load_target("host")) as host:  # LiteRT here, as validate runs artifacts
        got, _ = host.outputs(tfl, to_model(x.numpy(), io_quantization(tfl)[0]["shape"]))
    got = channels_first(got, tuple(want.shape[1:])).reshape(len(want), -1)
    want = want.reshape(len(want), -1)
    err = np.linalg.norm(got - want, axis=1) / np.maximum(np.linalg.norm(want, axis=1), 1e-12)
    return bool(np.all(err < 1e-3))  # noqa: PLR2004
