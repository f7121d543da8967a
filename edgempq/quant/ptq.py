"""Apply a Policy to a model (a fake-quantized copy) and calibrate its activation ranges."""

from __future__ import annotations

import copy
from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..layers import layer_kind
from ..schema import Policy
from .fold import fold_batchnorm
from .modules import QUANT_TYPES, QuantConfig, quantize_module
from .quantizers import ActQuantizer, WeightQuantizer


def apply(model: nn.Module, policy: Policy, cfg: QuantConfig | None = None) -> nn.Module:
    """A fake-quantized copy of `model` in eval mode with BatchNorm folded; the input model is
    never changed. Activation ranges still need `calibrate`."""
    cfg = cfg or QuantConfig()
    modules = dict(model.named_modules())
    for name in policy.precisions:
        m = modules.get(name)
        if m is None:
            raise ConfigError(f"policy names layer {name!r}, which the model does not have")
        if not isinstance(m, nn.Conv2d | nn.Linear):
            raise ConfigError(
                f"policy layer {name!r} is a {type(m).__name__}; only Conv2d and Linear layers take a precision"
            )
        _, reason = layer_kind(m)
        if reason:
            raise ConfigError(f"policy sets a precision for layer {name!r}, which stays float: {reason}")
    q = copy.deepcopy(model).eval()
    if cfg.fold_bn:
        fold_batchnorm(q)
    for name, precision in policy.precisions.items():
        quantize_module(q.get_submodule(name), precision, cfg)
    return q


def quantizers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, ActQuantizer | WeightQuantizer)]


@torch.no_grad()
def calibrate(qmodel: nn.Module, batches: Iterable[Tensor | np.ndarray]) -> nn.Module:
    """PTQ: observe activation ranges over the calibration batches, then fix scale and zero
    point; weight scales are recomputed from the current weights. Returns `qmodel`."""
    acts = [m for m in qmodel.modules() if isinstance(m, ActQuantizer)]
    was_training = qmodel.training
    qmodel.eval()
    for m in acts:
        m.start_observing()
    seen = 0
    try:
        for xb in batches:
            qmodel(torch.as_tensor(xb, dtype=torch.float32))
            seen += 1
    finally:
        for m in acts:
            m.finish_observing()
        qmodel.train(was_training)
    if seen == 0:
        raise ConfigError("calibration got no data; give a non-empty calibration split")
    for m in qmodel.modules():
        if isinstance(m, QUANT_TYPES) and m.weight_quant is not None and not m.weight_quant.learnable:
            m.weight_quant.calibrate(m.weight)
    return qmodel


def batches(x: np.ndarray, batch_size: int) -> Iterable[Tensor]:
    for i in range(0, len(x), batch_size):
        yield torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size]))
