"""Quantization-aware finetuning: LSQ steps and weights trained together, briefly."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
from torch import nn

from ..train import TrainConfig, TrainResult, fit
from .quantizers import ActQuantizer, WeightQuantizer

QAT_DEFAULTS = TrainConfig(epochs=1, batch_size=64, lr=1e-4, weight_decay=0.0, optimizer="adam")


def finetune(
    qmodel: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    epochs: int,
    cfg: TrainConfig = QAT_DEFAULTS,
    on_step: Callable[[int, int, float], None] | None = None,
) -> TrainResult:
    """Finetune a calibrated fake-quantized model in place for `epochs` (the rest of `cfg`
    kept): every quantizer's step becomes a learnable LSQ parameter initialised from
    calibration; zero points stay fixed. No validation split: the result has no scores. The
    loss is `cfg.task`'s."""
    for m in qmodel.modules():
        if isinstance(m, ActQuantizer | WeightQuantizer):
            m.make_learnable()
    return fit(qmodel, x, y, replace(cfg, epochs=epochs), on_step=on_step)
