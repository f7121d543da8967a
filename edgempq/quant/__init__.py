"""Fake quantization in PyTorch: quantizers, applying a Policy, PTQ (calibration and the weight
algorithms of `quant.weights`), QAT."""

from .modules import DEFAULT_WEIGHTS, QConv1d, QConv2d, QConvTranspose2d, QLinear, QuantConfig
from .ptq import PTQReport, apply, batches, calibrate, quantize
from .qat import finetune
from .quantizers import ActQuantizer, WeightQuantizer

__all__ = ["DEFAULT_WEIGHTS", "PTQReport", "ActQuantizer", "QConv1d", "QConv2d", "QConvTranspose2d", "QLinear",
           "QuantConfig", "WeightQuantizer", "apply", "batches", "calibrate", "finetune", "quantize"]
