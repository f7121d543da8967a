"""Local LiteRT (ai-edge-litert) interpreter on this machine."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import DeviceError
from ..schema import Timing
from .base import Backend, Evaluation, backend, device_script, timing_of


@backend("litert")
class LiteRTBackend(Backend):
    def _call(self, fn: str, *args: Any) -> Any:
        mod = device_script()
        try:
            return getattr(mod, fn)(*args)
        except mod.DeviceError as e:
            raise DeviceError(f"target {self.target.name}: {e}") from None
        except Exception as e:  # noqa: BLE001 - the runtime raises many types while invoking
            raise DeviceError(f"target {self.target.name}: the runtime failed ({type(e).__name__}: {e})") from None

    def check(self) -> dict[str, Any]:
        return {**self._call("info", self.target.threads), "backend": "litert"}

    def time(self, model: bytes, runs: int | None = None, warmup: int | None = None) -> Timing:
        runs, warmup = self._runs(runs, warmup)
        return timing_of(self._call("time_model", model, self.target.threads, warmup, runs, self.target.max_seconds))

    def run(self, model: bytes, inputs: list[np.ndarray]) -> list[np.ndarray]:
        return self._call("run_model", model, inputs, self.target.threads)

    def evaluate(self, model: bytes, x: np.ndarray, y: np.ndarray) -> Evaluation:
        result, logits = self._call("evaluate", model, x, y, self.target.threads)
        return Evaluation.of(logits, y, float(result["seconds"]))
