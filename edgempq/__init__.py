"""edgempq: hardware-in-the-loop mixed-precision quantization for phones, boards and MCUs.

The public API is imported lazily, so `import edgempq` (and the CLI's --help) stays fast."""

from __future__ import annotations

import importlib
from typing import Any

from . import backends  # noqa: F401 - the backends register their names (light: no torch)

__version__ = "0.1.0"

_API = {
    "EdgeMPQError": "errors", "ConfigError": "errors", "ModelError": "errors", "DataError": "errors",
    "Precision": "schema", "Layer": "schema", "Policy": "schema", "Budget": "schema",
    "load_model": "models", "load_data": "data", "trace": "layers",
    "policy_bops": "layers", "policy_weight_bytes": "layers",
    "apply": "quant", "calibrate": "quant", "quantize": "quant", "finetune": "quant", "QuantConfig": "quant",
    "PTQReport": "quant",
    "TrainConfig": "train", "fit": "train", "accuracy": "metrics",
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module 'edgempq' has no attribute {name!r}")
