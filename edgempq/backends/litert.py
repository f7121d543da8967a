"""Local LiteRT (ai-edge-litert) interpreter on this machine."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import DeviceError
from ..schema import Timing
from .base import Backend, Evaluation, backend, device_script, timing_of


@backend("litert")
class LiteRTBackend(Backend):
    """This machine's LiteRT interpreter, driven in-process through the device runner's code."""

    def _call(self, fn: str, *args: Any) -> Any:
        mod = device_script()
        try:
            return getattr(mod, fn)(*args)
        except mod.DeviceError as e:
            raise DeviceError(f"target {self.target.name}: {e}") from None
        except Exception as e:  # noqa: BLE001 - the runtime raises many types while invoking
            raise DeviceError(f"target {self.target.name}: the runtime failed ({type(e).__name__}: {e})") from None

    def check(self) -> dict[str, Any]:
        """This machine's CPU and the LiteRT version, at the target's thread count."""
        return {**self._call("info", self.target.threads), "backend": "litert"}

    def time(self, model: bytes, runs: int | None = None, warmup: int | None = None) -> Timing:
        """Latency of `model` here, timed as the device runner times it."""
        runs, warmup = self._runs(runs, warmup)
        return timing_of(self._call("time_model", model, self.target.threads, warmup, runs, self.target.max_seconds))

    def run(self, model: bytes, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Outputs of `model` here, one invoke per sample."""
        return self._call("run_model", model, inputs, self.target.threads)

    def evaluate(self, model: bytes, x: np.ndarray, y: np.ndarray) -> Evaluation:
        """The device runner's eval mode, in-process: top-1 and top-5 of `model` on (`x`, `y`)."""
        result, logits = self._call("evaluate", model, x, y, self.target.threads)
        return Evaluation.of(logits, y, float(result["seconds"]))
