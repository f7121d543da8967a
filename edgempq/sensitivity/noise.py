"""How much each precision disturbs a layer, relative to the layer itself.

Weights: ‖Q_b(W) − W‖² / ‖W‖² with the deployment's per-channel quantizer on the BatchNorm-folded
weights (what deploy quantizes). Input activations: ‖Q_a(x) − x‖² / ‖x‖² with the deployment's
per-tensor quantizer at the activation bits, calibrated min-max on the sample batch. A float
precision disturbs nothing (f16 weights: their half-precision rounding). A relative error on the
input moves the output about as much as the same relative error on the weights, so the two add.

The bit objectives of OMPQ and CSMPQ weigh each layer's importance by this instead of by the bits
it loses (`bit_penalties`): a 3x3 depthwise conv loses far more at 2 bits than a 1x1 conv with
a thousand inputs, and a linear count of bits cannot see it. It is also the activation term every
proxy method needs when the target offers more than one activation width: 16-bit activations are
then chosen because they help, not because they are free."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from ..compute import on_cpu
from ..layers import weight_axis
from ..quant.fold import fold_batchnorm
from ..quant.quantizers import ActQuantizer, WeightQuantizer
from ..schema import Layer, Precision


def quant_error(weight: Tensor, p: Precision, axis: int = 0) -> float:
    """‖Q(W) − W‖² for the deployment's weight quantizer at `p` (per output channel, on dim
    `axis`; float: f16 rounding or 0)."""
    with torch.no_grad():
        if p.is_float:
            return float(((weight.half().float() - weight) ** 2).sum()) if p.weight_bits == 16 else 0.0
        q = WeightQuantizer(p.weight_bits, axis)
        q.calibrate(weight)
        return float(((q(weight) - weight) ** 2).sum())


Noise = dict[tuple[str, str], tuple[float, float]]  # (layer, precision) -> (weight, activation) relative error


@on_cpu()
@torch.no_grad()
def relative_noise(model: nn.Module, layers: list[Layer], precisions: dict[str, list[Precision]],
                   x: Tensor) -> Noise:
    """(weight, activation) relative error of every (layer, precision), the activations' on batch `x`."""
    folded = copy.deepcopy(model).eval()
    fold_batchnorm(folded)
    inputs = _layer_inputs(folded, [la.name for la in layers], x)
    out: Noise = {}
    for la in layers:
        module = folded.get_submodule(la.name)
        w = module.weight.detach()
        w_ref = float((w ** 2).sum()) or 1.0
        acts: dict[int, float] = {}
        for p in precisions[la.name]:
            a = 0.0 if p.is_float else acts.setdefault(p.act_bits, _act_error(inputs[la.name], p.act_bits))
            out[(la.name, str(p))] = (quant_error(w, p, weight_axis(module)) / w_ref, a)
    return out


def _layer_inputs(model: nn.Module, names: list[str], x: Tensor) -> dict[str, Tensor]:
    """Each named layer's input on `x`, one forward pass."""
    seen: dict[str, Tensor] = {}
    hooks = [model.get_submodule(n).register_forward_pre_hook(
        lambda _m, args, n=n: seen.setdefault(n, args[0].detach().clone())) for n in names]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _act_error(x: Tensor, bits: int) -> float:
    """Relative squared error of `x` through the deployment's activation quantizer at `bits`."""
    q = ActQuantizer(bits)
    q.start_observing()
    q(x)
    q.finish_observing()
    return float(((q(x) - x) ** 2).sum()) / (float((x ** 2).sum()) or 1.0)
