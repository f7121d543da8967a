"""The values that flow between the stages (frozen dataclasses with JSON round-trips)."""

from .core import (
    DEPLOYABLE,
    SCHEMA_VERSION,
    SEARCHABLE_KINDS,
    Budget,
    JsonDoc,
    Layer,
    Policy,
    Precision,
)
from .device import Target, Timing
from .profile import CostRow, CostTable, Probe
from .sensitivity import Sensitivity

__all__ = ["DEPLOYABLE", "SCHEMA_VERSION", "SEARCHABLE_KINDS", "Budget", "CostRow", "CostTable", "JsonDoc",
           "Layer", "Policy", "Precision", "Probe", "Sensitivity", "Target", "Timing"]
