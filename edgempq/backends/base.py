"""The backend protocol: check a device, time a model on it, run a model on it."""

from __future__ import annotations

import importlib
import importlib.util
import json
import time as _time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from types import ModuleType
from typing import Any, ClassVar

import numpy as np

from ..errors import DeviceError
from ..registry import Registry
from ..resources import data_dir
from ..schema import Target, Timing
from ..schema.device import register_backend

BACKENDS: Registry[type[Backend]] = Registry("backend")


def backend(name: str) -> Callable[[type[Backend]], type[Backend]]:
    """Class decorator: register a Backend under `name`, with the [connection] keys it takes
    (its `connection_keys`), so that targets naming it are checked against them."""

    def deco(cls: type[Backend]) -> type[Backend]:
        BACKENDS.register(name)(cls)
        register_backend(name, cls.connection_keys, cls.microcontroller)
        return cls

    return deco


@dataclass(frozen=True)
class Evaluation:
    """A classifier artifact run over labelled samples on a device."""

    top1: float
    top5: float
    predictions: np.ndarray  # predicted class per sample
    logits: np.ndarray  # dequantized outputs, samples x classes
    seconds: float  # wall time of the invokes on the device

    @classmethod
    def of(cls, logits: np.ndarray, labels: np.ndarray, seconds: float) -> Evaluation:
        """The evaluation of `logits` (samples x classes) against `labels`, scored as the device runner scores."""
        script = device_script()
        return cls(script.top_k(logits, labels, 1), script.top_k(logits, labels, 5),
                   np.argmax(logits, axis=1), logits, seconds)


class Backend(ABC):
    """Drives one kind of device. Use as a context manager (or call `close`) so that anything
    left on the device (remote temporary files) is removed."""

    connection_keys: ClassVar[frozenset[str]] = frozenset()  # what a target's [connection] may hold
    microcontroller: ClassVar[bool] = False  # runs what a microcontroller runs: integer kernels in an arena

    def __init__(self, target: Target) -> None:
        self.target = target

    @abstractmethod
    def check(self) -> dict[str, Any]:
        """Reach the device and its runtime; return its fingerprint (CPU, runtime, version,
        threads), or raise DeviceError saying what is missing."""

    @abstractmethod
    def time(self, model: bytes, runs: int | None = None, warmup: int | None = None) -> Timing:
        """Latency of `model` on the device: warm-up, then timed runs."""

    @abstractmethod
    def run(self, model: bytes, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Outputs of `model` for a batch of inputs (one array per model input), one invoke per sample."""

    def evaluate(self, model: bytes, x: np.ndarray, y: np.ndarray) -> Evaluation:
        """Top-1 / top-5 of a single-input classifier on float samples `x` (in the model's
        layout) with labels `y`; integer inputs are quantized and outputs dequantized with the
        model's own parameters. This default goes through `run`."""
        script = device_script()
        d, o = io_quantization(model)
        try:
            script.check_eval_data(x, y, o["classes"], d["shape"][1:])
        except script.DeviceError as e:
            raise DeviceError(f"target {self.target.name}: {e}") from None
        out, seconds = self._invoke(model, x, (d, o))
        return Evaluation.of(out.reshape(len(x), -1), y, seconds)

    def outputs(self, model: bytes, x: np.ndarray) -> tuple[np.ndarray, float]:
        """(dequantized outputs in the artifact's own layout, wall seconds of the invokes) of a
        single-input, single-output model on float samples `x` (in the model's layout): what
        validate scores for tasks other than classification."""
        d, o = io_quantization(model)
        if tuple(x.shape[1:]) != tuple(d["shape"][1:]):
            raise DeviceError(f"target {self.target.name}: samples x must have shape "
                              f"(N, {', '.join(map(str, d['shape'][1:]))}), got {tuple(x.shape)}")
        return self._invoke(model, x, (d, o))

    def _invoke(self, model: bytes, x: np.ndarray,
                io: tuple[dict[str, Any], dict[str, Any]]) -> tuple[np.ndarray, float]:
        """`x` quantized with the model's input parameters (`io`), run, and dequantized with its output's."""
        script = device_script()
        d, o = io
        try:
            q = script.quantize(x, d["dtype"], d["scale"], d["zero_point"])
        except script.DeviceError as e:
            raise DeviceError(f"target {self.target.name}: {e}") from None
        start = _time.perf_counter()
        (out,) = self.run(model, [q])
        seconds = _time.perf_counter() - start
        return script.dequantize(out, o["scale"], o["zero_point"]), seconds

    def ram_bytes(self, model: bytes) -> int | None:
        """Working memory the runtime needs for `model`, where the backend can measure it."""
        return None

    def close(self) -> None:  # noqa: B027 - most backends leave nothing behind
        """Remove whatever the backend left on the device."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _runs(self, runs: int | None, warmup: int | None) -> tuple[int, int]:
        return (runs or self.target.runs), (self.target.warmup if warmup is None else warmup)


def backend_for(target: Target) -> Backend:
    """The backend object that drives `target`."""
    if target.template:
        raise DeviceError(f"target {target.name} is a template; copy its TOML file, set the device's "
                          "connection and remove `template = true`")
    return BACKENDS.get(target.backend)(target)


INT16_REQUANTIZE_SINCE = (2, 1, 3)  # the first ai-edge-litert whose QUANTIZE turns int8 into int16


def runtime_problem(target: Target, fingerprint: dict[str, Any]) -> str | None:
    """Why the device's TFLite runtime cannot run what the target offers, or None. LiteRT before
    2.1.3 (and every tflite-runtime) cannot requantize 8-bit values to 16 bits, which any
    artifact with a 16-bit-activation layer does (its input is int8), though such a layer timed
    alone runs: profiled, the search would choose what the board then refuses to load."""
    a16 = sorted({str(p) for ps in target.precisions.values() for p in ps if not p.is_float and p.act_bits == 16})
    runtime, version = fingerprint.get("runtime"), str(fingerprint.get("runtime_version", ""))
    if not a16 or runtime not in ("ai_edge_litert", "tflite_runtime"):
        return None
    if runtime == "ai_edge_litert":
        try:
            if tuple(int(v) for v in version.split(".")[:3]) >= INT16_REQUANTIZE_SINCE:
                return None
        except ValueError:  # a development build: let the device say what it cannot load
            return None
    return (f"target {target.name}: the device's {runtime} {version} cannot requantize 8-bit values to 16 bits, "
            f"so an artifact with a {' or '.join(a16)} layer would not load there; upgrade ai-edge-litert on the "
            f"device to {'.'.join(map(str, INT16_REQUANTIZE_SINCE))} or newer, or remove {', '.join(a16)} from "
            "a copy of the target's [precisions]")


def check_runtime(target: Target, fingerprint: dict[str, Any]) -> None:
    """Refuse to profile a device whose runtime cannot run what the target offers (`runtime_problem`)."""
    problem = runtime_problem(target, fingerprint)
    if problem:
        raise DeviceError(problem)


@cache
def device_script() -> ModuleType:
    """tools/edgempq_device.py as a module: local backends time and run with the same code the
    device-side runner uses."""
    path = data_dir("tools") / "edgempq_device.py"
    spec = importlib.util.spec_from_file_location("edgempq_device", path)
    if spec is None or spec.loader is None:
        raise DeviceError(f"the device runner {path} is missing from this installation; reinstall edgempq")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def io_quantization(model: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """(input, output) of a one-input, one-output model: dtype, shape, scale, zero point (and
    the output's class count), read with the LiteRT interpreter on this machine."""
    from ai_edge_litert.interpreter import Interpreter

    try:
        it = Interpreter(model_content=model)
    except Exception as e:  # noqa: BLE001 - the runtime raises many types
        raise DeviceError(f"the artifact is not a loadable .tflite ({type(e).__name__}: {e})") from None
    ins, outs = it.get_input_details(), it.get_output_details()
    if len(ins) != 1 or len(outs) != 1:
        raise DeviceError(f"evaluation takes a model with one input and one output, this one has "
                          f"{len(ins)} and {len(outs)}")
    res = []
    for d in (ins[0], outs[0]):
        scale, zero = d["quantization"]
        res.append({"dtype": np.dtype(d["dtype"]), "shape": [int(v) for v in d["shape"]],
                    "scale": float(scale), "zero_point": int(zero), "classes": int(np.prod(d["shape"][1:]))})
    return res[0], res[1]


def parse_result(text: str, where: str) -> dict[str, Any]:
    """The JSON object the device runner printed (its last line), or a DeviceError."""
    lines = [ln for ln in text.strip().splitlines() if ln.startswith("{")]
    try:
        d = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        raise DeviceError(f"{where}: the device runner printed no result ({text.strip()[:200]!r})") from None
    if "error" in d:
        raise DeviceError(f"{where}: {d['error']}")
    return d


def timing_of(d: dict[str, Any]) -> Timing:
    """The Timing in a device runner's result (its median, p10, p90 and run count)."""
    return Timing(float(d["median_ms"]), float(d["p10_ms"]), float(d["p90_ms"]), int(d["runs"]))
