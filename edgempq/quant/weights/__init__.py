"""PTQ weight algorithms, one module each, registered by name: minmax, mse, gptq, adaround."""

from ...registry import load_entry_points
from . import adaround, gptq, minmax, mse  # noqa: F401 - each registers itself
from .base import ALGORITHMS, WeightAlgorithm, algorithm, algorithm_names, set_codes

load_entry_points("edgempq.ptq", ALGORITHMS)

__all__ = ["ALGORITHMS", "WeightAlgorithm", "algorithm", "algorithm_names", "set_codes"]
