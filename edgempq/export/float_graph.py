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


def export_onnx(module: nn.Module, input_shape: tuple[int, ...], path: Path) -> Path:
    """The model in eval mode as ONNX (BatchNorm folded by constant folding)."""
    import torch

    was_training = module.training
    module.eval()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(module, torch.zeros(1, *input_shape), str(path), dynamo=False, opset_version=17,
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


def onnx_to_tflite(onnx_path: Path, images: np.ndarray | None = None) -> bytes:
    """onnx2tf's SavedModel, converted with a `serving_default` signature."""
    from ..quiet import quiet_tensorflow_env

    with tempfile.TemporaryDirectory(prefix="edgempq-onnx2tf-") as work:
        np.save(Path(work) / ONNX2TF_SAMPLE, _sample_images(images))
        out = Path(work) / "saved_model"
        p = subprocess.run([sys.executable, "-m", "onnx2tf", "-i", str(Path(onnx_path).resolve()), "-o", str(out),
                            "-osd", "-n"], cwd=work, capture_output=True, text=True,
                           env={**quiet_tensorflow_env(), "TMPDIR": work})  # stray files (onnxruntime's .ses) go too
        if p.returncode != 0 or not (out / "saved_model.pb").exists():
            raise OnnxOpError(*failed_op(p.stdout + p.stderr))
        return _saved_model_to_tflite(out)


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
    GroupNorms written out (see `norms`); a node onnx2tf cannot convert is named by the PyTorch
    module it comes from."""
    from .norms import written_out

    with tempfile.TemporaryDirectory(prefix="edgempq-onnx-") as work:
        try:
            return onnx_to_tflite(export_onnx(written_out(module), input_shape, Path(work) / "model.onnx"), images)
        except OnnxOpError as e:
            found = module_of(module, e.node) if e.node else None
            if found is None:
                raise
            name, op = found
            kind = type(module.get_submodule(name)).__name__
            raise ConversionError(f"onnx2tf cannot convert the {op} in module '{name}' ({kind}): {e.detail}; rewrite "
                                  f"that module's forward with ops the converter keeps in one layout (e.g. fixed "
                                  f"shapes, no reshape across the channel axis), or replace the module") from None
