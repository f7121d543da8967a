"""Fake quantization in PyTorch: quantizers, applying a Policy, PTQ calibration, QAT."""

from .modules import QConv2d, QLinear, QuantConfig
from .ptq import apply, batches, calibrate
from .qat import finetune
from .quantizers import ActQuantizer, WeightQuantizer

__all__ = ["ActQuantizer", "QConv2d", "QLinear", "QuantConfig", "WeightQuantizer", "apply",
           "batches", "calibrate", "finetune"]
