"""Deploy a policy: the quantized PyTorch model (BatchNorm folded, QAT weights when finetuned)
exported through ONNX and onnx2tf to a float .tflite, quantized layer by layer with the policy's
recipe and the calibration split, verified op by op, plus a TFLite Micro C array for
microcontroller targets. Everything is built in memory first; files are written only when
every check passed, each atomically."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DeviceError
from ..schema import Layer, Policy, Target
from .recipe import OpRule, signature_inputs

CALIBRATION_SAMPLES = 1024  # at most this many, spread over the split, calibrate the artifact


@dataclass
class Artifact:
    """What `deploy` built, before and after it is written."""

    tflite: bytes
    rules: list[OpRule]
    mapping: dict[str, Any]  # layer -> OpInfo of the float model
    found: dict[str, dict[str, str]]  # layer -> weight / activation type in the artifact
    files: dict[str, str] = field(default_factory=dict)  # extra text files (the C array)
    arena_bytes: int | None = None


def check_target(layers: list[Layer], policy: Policy, target: Target) -> None:
    """Refuse, before any conversion, a precision the target cannot run for a layer's kind."""
    kinds = {la.name: la.kind for la in layers}
    for name, p in policy.precisions.items():
        allowed = target.allowed(kinds[name])
        if p not in allowed:
            raise ConfigError(f"layer {name} ({kinds[name]}) is set to {p}, which target {target.name} cannot run "
                              f"for a {kinds[name]}; allowed: {', '.join(map(str, allowed))}")


def export_module(qmodel):
    """The float module to convert: the fake-quantized copy with its quantizers removed (its
    weights are the folded, possibly QAT-trained ones; the recipe quantizes them again)."""
    from torch import nn

    from ..quant.modules import QUANT_TYPES

    m = copy.deepcopy(qmodel).eval()
    for mod in m.modules():
        if isinstance(mod, QUANT_TYPES):
            for attr in ("weight_quant", "act_quant"):
                if attr in mod._modules:
                    del mod._modules[attr]
                mod.__dict__.pop(attr, None)
            mod.__class__ = nn.Conv2d if isinstance(mod, nn.Conv2d) else nn.Linear
    return m


def calibration_feed(float_model: bytes, x: np.ndarray) -> list[dict[str, np.ndarray]]:
    """Calibration samples as the float model's signature takes them (onnx2tf makes NHWC)."""
    _, inputs = signature_inputs(float_model)
    if len(inputs) != 1:
        raise ConfigError(f"the converted model has {len(inputs)} inputs; deploy handles single-input models")
    d = inputs[0]
    shape = tuple(int(v) for v in d["shape"])
    # Every sample the simulation calibrated on (splits may be sorted by class: a prefix would
    # see a few classes only); a larger split is thinned evenly.
    from ..data import spread

    xs = x[spread(len(x), CALIBRATION_SAMPLES)].astype(np.float32)
    if xs.ndim == 4 and shape[1:] != xs.shape[1:] and shape[1:] == (xs.shape[2], xs.shape[3], xs.shape[1]):
        xs = xs.transpose(0, 2, 3, 1)
    if shape[1:] != xs.shape[1:]:
        raise ConfigError(f"the converted model takes inputs of shape {shape}, the data gives {xs.shape[1:]}")
    return [{d["name"]: s[None]} for s in xs]


def build(layers: list[Layer], qmodel, input_shape: tuple[int, ...], policy: Policy,
          calibration: np.ndarray) -> Artifact:
    """The mixed-precision .tflite of a calibrated fake-quantized model, verified op by op."""
    from ..errors import ConversionError
    from .float_graph import float_tflite
    from .mapping import map_layers, torch_weights
    from .mixed import policy_rules
    from .recipe import check_op, quantize, weight_ops

    module = export_module(qmodel)
    base = float_tflite(module, input_shape, calibration)
    mapping = map_layers(layers, base, torch_weights(module, layers))
    rules = policy_rules(mapping, policy.precisions)
    out = quantize(base, rules, calibration_feed(base, calibration))
    by_name = {o.output_name: o for o in weight_ops(out)}
    found = {}
    for name, op in mapping.items():
        got = by_name.get(op.output_name)
        if got is None:
            raise ConversionError(f"layer {name}: its op is missing from the quantized model")
        check_op(got, policy.precisions[name], f"layer {name}")
        found[name] = {"op": got.op, "weight_type": got.weight_type, "activation_type": got.act_type,
                       "weight_bytes": got.weight_bytes}
    check_loads(out)
    return Artifact(out, rules, mapping, found)


def check_loads(model: bytes) -> None:
    """Refuse an artifact that LiteRT's own kernels refuse to prepare, e.g. a conv whose 16-bit
    activation scales are so small that its requantization overflows int32 (an untrained model,
    or calibration data unlike its inputs, gives such vanishing activations)."""
    from ..backends.base import device_script
    from ..errors import ConversionError

    try:
        device_script().make_interpreter(model, 1)
    except Exception as e:  # noqa: BLE001 - the runtime raises RuntimeError/ValueError with its own text
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConversionError(f"the quantized model does not load in LiteRT ({detail}); the calibration data "
                              "may not match the model's inputs (or the model is untrained), or a layer needs "
                              "a wider precision") from None


def io_details(model: bytes) -> dict[str, dict]:
    """The artifact's input and output as a caller must feed and read them: name, shape, dtype
    and, for integer tensors, scale and zero point (real = scale * (q - zero_point))."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_content=model).get_signature_runner()
    out = {}
    for what, details in (("input", runner.get_input_details()), ("output", runner.get_output_details())):
        name, d = next(iter(details.items()))
        scale, zero = d["quantization"]
        out[what] = {"name": name, "shape": [int(v) for v in d["shape"]], "dtype": np.dtype(d["dtype"]).name,
                     "scale": float(scale), "zero_point": int(zero)}
    return out


def c_array(model: bytes, name: str = "g_model") -> tuple[str, str]:
    """(model_data.h, model_data.cc): the flatbuffer as a 16-byte aligned C array."""
    header = (f"// Generated by edgempq deploy.\n#ifndef MODEL_DATA_H_\n#define MODEL_DATA_H_\n\n"
              f"extern const unsigned char {name}[];\nextern const unsigned int {name}_len;\n\n#endif\n")
    rows = [", ".join(f"0x{b:02x}" for b in model[i:i + 12]) for i in range(0, len(model), 12)]
    body = (f"// Generated by edgempq deploy: {len(model)} bytes.\n#include \"model_data.h\"\n\n"
            f"alignas(16) const unsigned char {name}[] = {{\n  " + ",\n  ".join(rows) + "\n};\n"
            f"const unsigned int {name}_len = {len(model)};\n")
    return header, body


def microcontroller_checks(art: Artifact, target: Target) -> None:
    """Arena measured with the TFLite Micro interpreter; flash and RAM against the target."""
    from ..backends import backend_for

    with backend_for(target) as backend:
        art.arena_bytes = backend.ram_bytes(art.tflite)
    if target.ram_kb is not None and art.arena_bytes > target.ram_kb * 1024:
        raise DeviceError(f"the model needs {art.arena_bytes / 1024:.1f} KB of TFLite Micro arena but target "
                          f"{target.name} has ram_kb = {target.ram_kb:g}; search again with --ram-kb")
    if target.flash_kb is not None and len(art.tflite) > target.flash_kb * 1024:
        raise DeviceError(f"the model is {len(art.tflite) / 1024:.1f} KB but target {target.name} has "
                          f"flash_kb = {target.flash_kb:g}; search again with a smaller --size-kb")


def write(art: Artifact, folder: Path, report: dict, policy: Policy, simulation: bytes) -> dict[str, Path]:
    """Write the artifact's files (each atomically) and return their paths. deploy.json goes
    last and records the sha256 of model.tflite and simulation.pt: a folder whose writing was
    interrupted has no deploy.json, or one whose hashes do not match, and validate ignores it."""
    import hashlib

    from ..files import atomic_write_bytes, atomic_write_text, write_json

    folder.mkdir(parents=True, exist_ok=True)
    for stale in ("deploy.json", "validation.json"):  # they describe the previous build
        (folder / stale).unlink(missing_ok=True)
    report = {**report, "sha256": {"model.tflite": hashlib.sha256(art.tflite).hexdigest(),
                                   "simulation.pt": hashlib.sha256(simulation).hexdigest()}}
    paths = {"model.tflite": atomic_write_bytes(folder / "model.tflite", art.tflite)}
    recipe = [{"regex": r.regex, "op": r.op, "precision": str(r.precision), "layer": r.label} for r in art.rules]
    paths["recipe.json"] = write_json(folder / "recipe.json", {"rules": recipe})
    paths["policy.json"] = policy.save(folder / "policy.json")
    paths["simulation.pt"] = atomic_write_bytes(folder / "simulation.pt", simulation)
    for name, text in art.files.items():
        paths[name] = atomic_write_text(folder / name, text)
    paths["deploy.json"] = write_json(folder / "deploy.json", json.loads(json.dumps(report)))
    return paths
