"""LayerNorm and GroupNorm written out with ops onnx2tf converts, for export only.

onnx2tf fails on ONNX's LayerNormalization over token features and on GroupNorm's
InstanceNormalization (it reshapes across the channel axis, which the NHWC layout splits). The
exported copy computes the same values per channel instead: means over the normalised axes, for
GroupNorm the channel means averaged over each group by a fixed block matrix, then
(x − mean) · rsqrt(var + eps) · weight + bias. The PyTorch model and the simulation keep the
original modules; the float graph computes what they compute (to float rounding)."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn


class ExportLayerNorm(nn.Module):
    """nn.LayerNorm over the last `dims` axes as means, subtraction and rsqrt."""

    def __init__(self, norm: nn.LayerNorm) -> None:
        super().__init__()
        self.dims = tuple(range(-len(norm.normalized_shape), 0))
        self.eps = norm.eps
        self.weight = None if norm.weight is None else nn.Parameter(norm.weight.detach().clone())
        self.bias = None if norm.bias is None else nn.Parameter(norm.bias.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        """(x − mean) / sqrt(var + eps), then the affine weight and bias."""
        mean = x.mean(self.dims, keepdim=True)
        d = x - mean
        y = d * torch.rsqrt((d * d).mean(self.dims, keepdim=True) + self.eps)
        if self.weight is not None:
            y = y * self.weight
        return y + self.bias if self.bias is not None else y


class ExportGroupNorm(nn.Module):
    """nn.GroupNorm on N x C x ... as per-channel moments averaged over each group by a C x G
    pooling matrix and spread back by a G x C one: no reshape across the channel axis."""

    def __init__(self, norm: nn.GroupNorm) -> None:
        super().__init__()
        c, g = norm.num_channels, norm.num_groups
        member = (torch.arange(c)[:, None] // (c // g) == torch.arange(g)[None, :]).float()  # C x G
        self.register_buffer("pool", member / (c // g))
        self.register_buffer("spread", member.t().contiguous())
        self.eps = norm.eps
        self.weight = None if norm.weight is None else nn.Parameter(norm.weight.detach().clone())
        self.bias = None if norm.bias is None else nn.Parameter(norm.bias.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        """Each group's mean and variance over its channels and positions, then the per-channel affine."""
        spatial = tuple(range(2, x.dim()))
        shape = (x.shape[0], x.shape[1]) + (1,) * len(spatial)

        def moment(t: Tensor) -> Tensor:  # N x C: the channel's group's mean of t
            per_channel = t.mean(spatial) if spatial else t
            return (per_channel @ self.pool @ self.spread).reshape(shape)

        mean = moment(x)
        d = x - mean
        var = moment(d * d)
        y = d * torch.rsqrt(var + self.eps)
        per_channel = (1, -1) + (1,) * len(spatial)
        if self.weight is not None:
            y = y * self.weight.reshape(per_channel)
        return y + self.bias.reshape(per_channel) if self.bias is not None else y


def written_out(module: nn.Module) -> nn.Module:
    """`module` itself when it has no LayerNorm or GroupNorm, else a copy with each one replaced
    (under its own name) by its written-out equivalent."""
    from ..quant.fold import set_module

    names = [n for n, m in module.named_modules() if isinstance(m, nn.LayerNorm | nn.GroupNorm)]
    if not names:
        return module
    out = copy.deepcopy(module)
    for name in names:
        norm = out.get_submodule(name)
        set_module(out, name, ExportLayerNorm(norm) if isinstance(norm, nn.LayerNorm) else ExportGroupNorm(norm))
    return out
