"""Sensitivity methods, one module each, registered by name: `compute(name, ...)` runs one
(`RunOptions`: its parameters, the model hash to record, a progress callback)."""

from ..registry import load_entry_points
from . import clado, csmpq, gmpq, hawq, limpq, measured, ompq  # noqa: F401 - each registers itself
from .base import METHODS, Method, RunOptions, SensData, compute, get_method, method_names, parse_params

load_entry_points("edgempq.methods", METHODS)

__all__ = ["METHODS", "Method", "RunOptions", "SensData", "compute", "get_method", "method_names", "parse_params"]
