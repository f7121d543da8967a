"""The backend protocol: check a device, time a model on it, run a model on it."""

from __future__ import annotations

import importlib
import importlib.util
import json
from abc import ABC, abstractmethod
from functools import cache
from types import ModuleType
from typing import Any

import numpy as np

from ..errors import DeviceError
from ..registry import Registry
from ..resources import data_dir
from ..schema import Target, Timing

BACKENDS: Registry[type[Backend]] = Registry("backend")


class Backend(ABC):
    """Drives one kind of device. Use as a context manager (or call `close`) so that anything
    left on the device (remote temporary files) is removed."""

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
    """The backend object that drives `target` (its modules are imported on first use)."""
    from . import adb, litert, ssh, tflm  # noqa: F401 - registers them

    if target.template:
        raise DeviceError(f"target {target.name} is a template; copy its TOML file, set the device's "
                          "connection and remove `template = true`")
    return BACKENDS.get(target.backend)(target)


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
    return Timing(float(d["median_ms"]), float(d["p10_ms"]), float(d["p90_ms"]), int(d["runs"]))
