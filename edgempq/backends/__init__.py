"""Ways of reaching a device, one module each, registered by name (the target's `backend`)."""

from . import adb, litert, ssh, tflm  # noqa: F401 - each registers itself
from .base import BACKENDS, Backend, backend_for

__all__ = ["BACKENDS", "Backend", "backend_for"]
