"""PTQ weight algorithms, one module each, registered by name: minmax, mse, gptq, adaround."""

from .base import ALGORITHMS, WeightAlgorithm, algorithm, algorithm_names, set_codes

__all__ = ["ALGORITHMS", "WeightAlgorithm", "algorithm", "algorithm_names", "set_codes"]
