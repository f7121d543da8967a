"""TFLite Micro's interpreter (reference kernels) on this machine: what a microcontroller runs,
with the arena its memory planner needs measured."""

from __future__ import annotations

import re
from importlib import metadata
from typing import Any

import numpy as np

from ..errors import DeviceError
from ..quiet import captured_output
from ..schema import Timing
from .base import Backend, backend, device_script

_MAX_ARENA = 1 << 30


@backend("tflm")
class TFLMBackend(Backend):
    """TFLite Micro's reference interpreter on this machine, with the arena each model needs."""

    microcontroller = True

    def __init__(self, target: Any) -> None:
        super().__init__(target)
        self._arena: dict[int, int] = {}

    def _fit(self, model: bytes) -> Any:
        """An interpreter with an arena big enough for `model` (doubling until it allocates);
        a kernel that refuses the model is a DeviceError quoting TFLM's reason."""
        from tflite_micro.python.tflite_micro import runtime

        arena = max(1 << 20, 16 * len(model))
        while True:
            with captured_output() as said:
                try:
                    return runtime.Interpreter.from_bytes(model, arena_size=arena)
                except RuntimeError:
                    pass
            text = said[0]
            if "Failed to resize buffer" not in text or arena >= _MAX_ARENA:
                reason = next((ln for ln in text.splitlines() if ln.strip() and "failed to prepare" not in ln),
                              "allocation failed")
                raise DeviceError(f"TFLite Micro cannot run this model: {reason.strip()}")
            arena *= 2

    def check(self) -> dict[str, Any]:
        """This machine's CPU and the tflite-micro version (TFLM runs one thread)."""
        try:
            version = metadata.version("tflite-micro")
        except metadata.PackageNotFoundError:
            raise DeviceError("the tflite-micro package is not installed; reinstall edgempq") from None
        return {"cpu": device_script().cpu_model(), "runtime": "tflite_micro", "runtime_version": version,
                "threads": 1, "backend": "tflm"}

    def ram_bytes(self, model: bytes) -> int:
        """Arena bytes the model needs, as TFLM's recording allocator reports them."""
        key = hash(model)
        if key not in self._arena:
            it = self._fit(model)
            with captured_output() as out:
                it.print_allocations()
            m = re.search(r"Arena allocation total (\d+) bytes", out[0])
            if not m:
                raise DeviceError("TFLite Micro did not report its arena size")
            self._arena[key] = int(m.group(1))
        return self._arena[key]

    def time(self, model: bytes, runs: int | None = None, warmup: int | None = None) -> Timing:
        """Latency of `model` on random inputs, invoked in TFLM's interpreter."""
        runs, warmup = self._runs(runs, warmup)
        it = self._fit(model)
        for i, x in enumerate(self._sample_inputs(it, model)):
            it.set_input(x, i)
        r = device_script().timed_invokes(it.invoke, warmup, runs, self.target.max_seconds)
        return Timing.from_samples(r["samples_ms"])

    @staticmethod
    def _io_counts(model: bytes) -> tuple[int, int]:
        """Number of model inputs and outputs (TFLM's Python API has no count to ask)."""
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_content=model)
        return len(it.get_input_details()), len(it.get_output_details())

    def _inputs_details(self, it: Any, model: bytes) -> list[dict]:
        return [it.get_input_details(i) for i in range(self._io_counts(model)[0])]

    def _sample_inputs(self, it: Any, model: bytes) -> list[np.ndarray]:
        rng = np.random.default_rng(0)
        xs = []
        for d in self._inputs_details(it, model):
            dt = np.dtype(d["dtype"])
            shape = tuple(int(s) for s in d["shape"])
            xs.append(rng.standard_normal(shape).astype(dt) if np.issubdtype(dt, np.floating)
                      else rng.integers(-128, 128, shape).astype(dt))
        return xs

    def run(self, model: bytes, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Outputs of `model` in TFLM, one invoke per sample, inputs checked against the model's."""
        it = self._fit(model)
        details = self._inputs_details(it, model)
        if len(details) != len(inputs):
            raise DeviceError(f"the model takes {len(details)} input(s), {len(inputs)} given")
        for d, x in zip(details, inputs, strict=True):
            want = tuple(int(v) for v in d["shape"][1:])
            if np.dtype(x.dtype) != np.dtype(d["dtype"]) or tuple(x.shape[1:]) != want:
                raise DeviceError(f"an input must be {np.dtype(d['dtype'])} with samples of shape {want}, "
                                  f"got {x.dtype} {tuple(x.shape)}")
        if not inputs or len(inputs[0]) == 0:
            raise DeviceError("the inputs hold no samples")
        outs: list[list[np.ndarray]] = [[] for _ in range(self._io_counts(model)[1])]
        for i in range(len(inputs[0])):
            for k, x in enumerate(inputs):
                it.set_input(np.ascontiguousarray(x[i : i + 1]), k)
            it.invoke()
            for j, o in enumerate(outs):
                o.append(np.array(it.get_output(j)))
            it.reset()
        return [np.concatenate(o) for o in outs]
