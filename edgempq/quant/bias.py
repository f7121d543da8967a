"""Empirical bias correction (Nagel et al., ICCV 2019, "Data-free quantization", its empirical
form): after a layer's weights are quantized, the mean of each of its output channels over the
calibration data is moved back to the float model's, by adding the difference to its bias. The
float model runs on float inputs, the quantized one on the quantized earlier layers' outputs, so
the shift the earlier layers caused is corrected too."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..layers import CONV_TYPES
from .stream import Unit


def _channel_dim(y: Tensor, module: nn.Module) -> int:
    return 1 if isinstance(module, CONV_TYPES) else y.dim() - 1


def _channel_mean(y: Tensor, module: nn.Module) -> Tensor:
    c = _channel_dim(y, module)
    return y.double().mean([d for d in range(y.dim()) if d != c])


@torch.no_grad()
def float_statistics(fmodel: nn.Module, xs: list[Tensor], names: tuple[str, ...]) -> dict[str, tuple[Tensor, float]]:
    """Per layer, the float model's output mean per channel and its overall standard deviation
    over the calibration batches: one forward pass, nothing kept but the sums."""
    sums: dict[str, list] = {n: [0.0, 0.0, 0.0, 0] for n in names}  # channel sums, total, total of squares, count
    mods = {fmodel.get_submodule(n): n for n in names}

    def hook(m: nn.Module, _args: tuple, out: Tensor) -> None:
        s = sums[mods[m]]
        n = out.numel() // out.shape[_channel_dim(out, m)]
        s[0] = s[0] + _channel_mean(out, m) * n
        s[1] += float(out.double().sum())
        s[2] += float(out.double().pow(2).sum())
        s[3] += n

    handles = [m.register_forward_hook(hook) for m in mods]
    try:
        for x in xs:
            fmodel(x)
    finally:
        for h in handles:
            h.remove()
    out = {}
    for name, (ch, tot, sq, n) in sums.items():
        count = n * len(ch) if isinstance(ch, Tensor) else 1
        var = max(sq / max(count, 1) - (tot / max(count, 1)) ** 2, 0.0)
        out[name] = (ch / max(n, 1), var ** 0.5)
    return out


@torch.no_grad()
def correct_bias(unit: Unit, qmodel: nn.Module, stats: dict[str, tuple[Tensor, float]]) -> dict[str, dict]:
    """Correct the bias of the unit's one layer in place, towards the float model's channel
    means in `stats`; returns the largest shift relative to the float outputs' spread, or why
    the layer was left alone."""
    (name,) = unit.layers
    module = qmodel.get_submodule(name)
    if module.bias is None:
        return {name: {"bias_correction": "skipped: the layer has no bias (adding one would change its size)"}}
    n = sum(len(b[0]) for b in unit.inputs)
    q_mean = sum(_channel_mean(unit.run(ins)[0], module) * len(ins[0]) for ins in unit.inputs) / n
    f_mean, f_std = stats[name]
    shift = f_mean - q_mean
    # added to the bias as the kernel adds it (already on its integer grid), so that rounding the
    # new bias moves it by the whole steps nearest the shift
    module.bias.copy_(module._qbias().detach() + shift.to(module.bias.dtype))
    return {name: {"bias_shift": float(shift.abs().max() / max(f_std, 1e-12))}}
