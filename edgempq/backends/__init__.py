"""Ways of reaching a device, one module each, registered by name (the target's `backend`)."""

from ..registry import load_entry_points
from . import adb, litert, ssh, tflm  # noqa: F401 - each registers itself
from .base import BACKENDS, Backend, backend, backend_for

load_entry_points("edgempq.backends", BACKENDS)

__all__ = ["BACKENDS", "Backend", "backend", "backend_for"]
