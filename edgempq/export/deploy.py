"""Deploy a policy: the quantized PyTorch model (BatchNorm folded, QAT weights when finetuned)
exported through ONNX and onnx2tf to a float .tflite, quantized layer by layer with the policy's
recipe and the calibration split, verified op by op, plus a TFLite Micro C array for
microcontroller targets. Everything is built in memory first; files are written only when
every check passed, each atomically."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError, DeviceError
from ..layers import LAYER_TYPES
from ..schema import Layer, Policy, Target
from ..schema.results import DeployResult
from .recipe import OpRule, signature_inputs

if TYPE_CHECKING:
    from torch import nn

CALIBRATION_SAMPLES = 1024  # at most this many, spread over the split, calibrate the artifact
# relative scale change below which an input range counts as the simulation's own (float rounding)
RANGE_TOLERANCE = 1e-4


@dataclass
class Artifact:
    """What `deploy` built, before and after it is written."""

    tflite: bytes
    rules: list[OpRule]
    mapping: dict[str, Any]  # layer -> OpInfo of the float model
    found: dict[str, dict[str, str]]  # layer -> weight / activation type in the artifact
    files: dict[str, str] = field(default_factory=dict)  # extra text files (the C array)
    arena_bytes: int | None = None
    exact: dict[str, dict] = field(default_factory=dict)  # integer layer -> what was compared, bit for bit
    input_ranges: dict[str, dict] = field(default_factory=dict)  # integer layer -> simulation vs artifact
    rounding: dict[str, dict] = field(default_factory=dict)  # integer layer -> its op's output rounding
    skips: dict[str, dict] = field(default_factory=dict)  # fx add node -> the artifact's grid for its output
    skip_notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Deployment:
    """What deploy built: deploy.json's value, the artifact, the policy and the simulation's state."""

    result: DeployResult
    artifact: Artifact
    policy: Policy
    simulation: bytes  # the fake-quantized model's state_dict (simulation.pt)


def check_target(layers: list[Layer], policy: Policy, target: Target) -> None:
    """Refuse, before any conversion, a precision the target cannot run for a layer's kind."""
    kinds = {la.name: la.kind for la in layers}
    for name, p in policy.precisions.items():
        allowed = target.allowed(kinds[name])
        if p not in allowed:
            raise ConfigError(f"layer {name} ({kinds[name]}) is set to {p}, which target {target.name} cannot run "
                              f"for a {kinds[name]}; allowed: {', '.join(map(str, allowed))}")


def export_module(qmodel: nn.Module) -> nn.Module:
    """The float module to convert: the fake-quantized copy with its quantizers removed and the
    integer layers' weights and biases as the simulation uses them (dequantized), so that the
    artifact's calibration sees the simulated network; the quantizer's own rounding is then
    replaced by the simulation's integers (`exact.carry`)."""
    import torch
    from torch import nn

    from ..quant.modules import QUANT_TYPES

    m = copy.deepcopy(qmodel).eval()
    for mod in m.modules():
        if isinstance(mod, QUANT_TYPES):
            with torch.no_grad():
                if mod.weight_quant is not None:
                    mod.weight = nn.Parameter(mod._qweight().detach().clone())
                if mod.bias is not None:
                    mod.bias = nn.Parameter(mod._qbias().detach().clone())
            for attr in ("weight_quant", "act_quant", "out_quant"):
                if attr in mod._modules:
                    del mod._modules[attr]
                mod.__dict__.pop(attr, None)
            mod.__class__ = next(t for t in LAYER_TYPES if isinstance(mod, t))
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
    from ..layout import to_model

    xs = to_model(x[spread(len(x), CALIBRATION_SAMPLES)], shape, "the converted model")
    return [{d["name"]: s[None]} for s in xs]


def build(layers: list[Layer], qmodel: nn.Module, input_shape: tuple[int, ...], policy: Policy,
          calibration: np.ndarray) -> Artifact:
    """The mixed-precision .tflite of a calibrated fake-quantized model, verified op by op:
    every layer's types, and every integer layer's weights, scales and bias bit for bit against
    the simulation (whose input ranges become the artifact's, reported in `input_ranges`)."""
    from .exact import carry, check, check_float_weights
    from .float_graph import float_tflite
    from .mapping import fixed_ops, map_layers, torch_weights
    from .mixed import check_ops, policy_rules
    from .recipe import quantize
    from .skips import measure as measure_skips

    module = export_module(qmodel)
    base = float_tflite(module, input_shape, calibration)
    mapping = map_layers(layers, base, torch_weights(module, layers))
    fixed = fixed_ops(layers, base, torch_weights(module, layers, fixed=True), mapping)
    rules = policy_rules(mapping, policy.precisions, fixed)
    ints = [n for n in mapping if not policy.precisions[n].is_float]
    kinds = {la.name: la.kind for la in layers}
    check_float_weights(base, {n: mapping[n].index for n in ints}, module, kinds)
    out = quantize(base, rules, calibration_feed(base, calibration), simulation_ranges(base, mapping, qmodel, ints))
    ops = check_ops(out, mapping, policy.precisions, fixed)
    int_ops = {n: ops[n].index for n in ints}  # carrying values over keeps every op where it is
    ranges = adopt_input_ranges(qmodel, out, int_ops)
    values = {n: _values(qmodel, n, kinds[n]) for n in ints}
    out = carry(out, int_ops, values)
    exact = check(out, int_ops, values)
    ops = check_ops(out, mapping, policy.precisions, fixed)
    rounding = output_rounding(qmodel, out, int_ops, base, calibration)
    skips, notes = measure_skips(qmodel, out, {n: ops[n].index for n in mapping})
    found = {name: {"op": got.op, "weight_type": got.weight_type, "activation_type": got.act_type,
                    "weight_bytes": got.weight_bytes} for name, got in ops.items()}
    check_loads(out)
    return Artifact(out, rules, mapping, found, exact=exact, input_ranges=ranges, rounding=rounding, skips=skips,
                    skip_notes=notes)


def output_rounding(qmodel: nn.Module, model: bytes, ops: dict[str, int], base: bytes, calibration: np.ndarray) -> dict:
    """Measure how each integer op rounds its output (on a few calibration samples) and make
    the simulation round the same way; returns what deploy.json records."""
    from .rounding import SAMPLES, adopt, measure, summary

    feed = calibration_feed(base, calibration[:SAMPLES])
    name = next(iter(feed[0]))
    found = measure(model, ops, np.concatenate([f[name] for f in feed]))
    adopt(qmodel, found)
    return summary(found)


def _values(qmodel: nn.Module, name: str, kind: str):
    from .exact import simulation_values

    return simulation_values(qmodel.get_submodule(name), kind)


def simulation_ranges(base: bytes, mapping: dict, qmodel: nn.Module, ints: list[str]) -> dict[str, tuple[float, float]]:
    """Float tensor name -> the range the simulation quantizes it with, for every integer
    layer's input (and the tensors whose range the quantizer uses for it); a tensor two layers
    read gets the union of their ranges."""
    from .recipe import range_tensors

    out: dict[str, tuple[float, float]] = {}
    tensors = range_tensors(base, [mapping[n].index for n in ints])
    for name in ints:
        lo, hi = qmodel.get_submodule(name).act_quant.representable()
        for t in tensors[mapping[name].index]:
            a, b = out.get(t, (lo, hi))
            out[t] = (min(a, lo), max(b, hi))
    return out


def adopt_input_ranges(qmodel: nn.Module, model: bytes, ops: dict[str, int]) -> dict[str, dict]:
    """Give each integer layer's input quantizer the artifact's exact scale and zero point (the
    quantizer derived them from the simulation's ranges: they differ by float rounding, or where
    the graph forces one scale on several tensors); returns the differences, per layer."""
    from .exact import input_ranges

    out = {}
    for name, (scale, zp) in input_ranges(model, ops).items():
        aq = qmodel.get_submodule(name).act_quant
        own, own_zp = float(aq.step_value()), int(aq.zero_point)
        change = abs(scale - own) / max(own, 1e-30)
        out[name] = {"scale": scale, "zero_point": zp, "scale_change": change, "zero_point_change": zp - own_zp,
                     "from": "simulation" if change < RANGE_TOLERANCE and abs(zp - own_zp) <= 1 else "artifact"}
        aq.set_range(scale, zp)
    return out


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


def output_levels(values: np.ndarray, output: dict) -> np.ndarray:
    """The simulation's outputs as an artifact with an integer `output` (io_details) returns
    them: rounded (half away from zero, as the kernels) to its scale and zero point, clamped to
    the type's range and read back; a float output is returned unchanged."""
    dtype = np.dtype(output.get("dtype") or "float32").name
    if dtype not in ("int8", "int16") or not output.get("scale"):
        return values
    info, scale, zp = np.iinfo(dtype), float(output["scale"]), int(output["zero_point"])
    v = values.astype(np.float64) / scale
    q = np.clip(np.sign(v) * np.floor(np.abs(v) + 0.5) + zp, info.min, info.max)
    return ((q - zp) * scale).astype(values.dtype)


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


DEPLOY_FILE = "deploy.json"  # a deploy folder's anchor: moved in last, it says the folder is whole
FILES = ("model.tflite", "recipe.json", "policy.json", "simulation.pt", "model_data.h", "model_data.cc")


def write(dep: Deployment, folder: Path) -> DeployResult:
    """Write the artifact's files into `folder` (the deploy's staging folder, see
    `files.staged`) and return deploy.json's value, which records the sha256 of model.tflite and
    simulation.pt. `publish` writes deploy.json."""
    import dataclasses
    import hashlib

    from ..files import atomic_write_bytes, atomic_write_text, write_json

    art = dep.artifact
    policy = dep.policy.to_json().encode()
    files = {"model.tflite": art.tflite, "simulation.pt": dep.simulation, "policy.json": policy}
    sums = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    result = dataclasses.replace(dep.result, sha256=sums)
    atomic_write_bytes(folder / "model.tflite", art.tflite)
    recipe = [{"regex": r.regex, "op": r.op, "precision": str(r.precision), "layer": r.label} for r in art.rules]
    write_json(folder / "recipe.json", {"rules": recipe})
    atomic_write_bytes(folder / "policy.json", policy)
    atomic_write_bytes(folder / "simulation.pt", dep.simulation)
    for name, text in art.files.items():
        atomic_write_text(folder / name, text)
    return result.as_json()


def publish(folder: Path, result: DeployResult) -> Path:
    """deploy.json, the last file of a deploy, with the checksum of its own content (the schema's
    SIGNATURE) beside those of the files it describes."""
    from ..files import write_json

    return write_json(folder / DEPLOY_FILE, result.to_dict())
