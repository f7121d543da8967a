"""PTQ weight algorithms, one module each, registered by name: minmax, mse, gptq, adaround."""

from . import adaround, gptq, minmax, mse  # noqa: F401 - each registers itself
from .base import ALGORITHMS, WeightAlgorithm, algorithm, algorithm_names, set_codes

__all__ = ["ALGORITHMS", "WeightAlgorithm", "algorithm", "algorithm_names", "set_codes"]
