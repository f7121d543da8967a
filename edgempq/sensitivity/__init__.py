"""Sensitivity methods, one module each, registered by name: `compute(name, ...)` runs one."""

from . import clado, csmpq, gmpq, hawq, limpq, measured, ompq  # noqa: F401 - each registers itself
from .base import METHODS, Method, SensData, compute, get_method, method_names, parse_params

__all__ = ["METHODS", "Method", "SensData", "compute", "get_method", "method_names", "parse_params"]
