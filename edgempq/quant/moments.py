"""A layer's weights as matrices and its inputs as the columns they multiply, and the second
moments of those columns: all that the layer-wise PTQ algorithms (output-error clipping, GPTQ,
AdaRound) need to know of the calibration data.

Shapes are batched over groups: a conv or linear layer is one group of (rows = output channels,
d = inputs per output); a depthwise conv is one group per channel, of d = kh * kw. A layer's
output error for a weight change ΔW is then Σ_g tr(ΔW_g H_g ΔW_gᵀ), H = E[x xᵀ] over columns."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

MAX_COLUMNS = 65536  # columns (positions x samples) kept per layer; more are sampled at random


def statistics_bytes(module: nn.Module, matrices: int) -> int:
    """Memory `matrices` (groups, d, d) float64 moments of the layer take."""
    d = inputs_per_output(module)
    return matrices * groups(module) * d * d * 8


def inputs_per_output(module: nn.Module) -> int:
    """How many inputs each output of the layer multiplies by a weight (one group's)."""
    w = module.weight
    return w[:, 0].numel() if isinstance(module, nn.ConvTranspose2d) else w[0].numel()


def groups(module: nn.Module) -> int:
    """How many independent weight groups a layer has (a conv's `groups`, 1 for a linear)."""
    return module.groups if isinstance(module, nn.Conv1d | nn.Conv2d | nn.ConvTranspose2d) else 1


def _as_conv(w: Tensor) -> Tensor:
    """A transposed conv's (in, out, kh, kw) weight as the (out, in, kh, kw) kernel of the conv
    it equals on its zero-inserted input (flipped in space); its own inverse."""
    return w.transpose(0, 1).flip(2, 3)


def weight_matrix(module: nn.Module, w: Tensor | None = None) -> Tensor:
    """The weight as (groups, rows, d), float64, in the order `columns` lays the inputs out."""
    w = (module.weight if w is None else w).detach()
    if isinstance(module, nn.ConvTranspose2d):
        w = _as_conv(w)
    g = groups(module)
    return w.reshape(g, w.shape[0] // g, -1).double()


def from_matrix(module: nn.Module, m: Tensor) -> Tensor:
    """Back from (groups, rows, d) to the layer's weight shape and dtype (differentiable)."""
    shape = module.weight.shape
    if isinstance(module, nn.ConvTranspose2d):
        return _as_conv(m.reshape(shape[1], shape[0], *shape[2:])).to(module.weight.dtype)
    return m.reshape(shape).to(module.weight.dtype)


def channel_scale(module: nn.Module, scale: Tensor | None = None) -> Tensor:
    """A per-output-channel step as (groups, rows, 1), float64."""
    s = module.weight_quant.step_value() if scale is None else scale
    g = groups(module)
    return s.reshape(g, -1, 1).double()


def _geometry(module: nn.Module) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """(kernel, stride, dilation) as 2-D pairs: a Conv1d is a conv of height 1, a transposed conv
    the stride-1 conv it equals on its zero-inserted input."""
    if isinstance(module, nn.Conv1d):
        return (1, module.kernel_size[0]), (1, module.stride[0]), (1, module.dilation[0])
    if isinstance(module, nn.ConvTranspose2d):
        return tuple(module.kernel_size), (1, 1), tuple(module.dilation)
    return tuple(module.kernel_size), tuple(module.stride), tuple(module.dilation)


def _zero_inserted(module: nn.ConvTranspose2d, x: Tensor) -> Tensor:
    """A transposed conv's input as the conv it equals reads it: stride - 1 zeros between
    neighbours, then dilation x (kernel - 1) - padding zeros around (output_padding more at the
    bottom and right; a negative amount crops)."""
    (sh, sw), (ph, pw), (oh, ow) = module.stride, module.padding, module.output_padding
    n, c, h, w = x.shape
    z = x.new_zeros(n, c, (h - 1) * sh + 1, (w - 1) * sw + 1)
    z[:, :, ::sh, ::sw] = x
    eh, ew = (d * (k - 1) for d, k in zip(module.dilation, module.kernel_size, strict=True))
    return nn.functional.pad(z, (ew - pw, ew - pw + ow, eh - ph, eh - ph + oh))


def _padded(module: nn.Module, x: Tensor) -> tuple[Tensor, tuple[int, ...]]:
    """The input padded as the conv pads it, and the padding left for unfold; a Conv1d's input
    comes back 4-D (height 1), with its padding as (0, p)."""
    if isinstance(module, nn.ConvTranspose2d):
        return _zero_inserted(module, x), (0, 0)
    xp, pad = _padded_own(module, x)
    if isinstance(module, nn.Conv1d):
        return xp.unsqueeze(2), (0, pad[0])
    return xp, pad


def _padded_own(module: nn.Conv1d | nn.Conv2d, x: Tensor) -> tuple[Tensor, tuple[int, ...]]:
    """The input padded as the conv pads it (in its own rank), and the padding left for unfold."""
    if isinstance(module.padding, str):  # "same" / "valid"
        if module.padding == "valid":
            return x, (0,) * (x.dim() - 2)
        pads = []
        for k, d in zip(reversed(module.kernel_size), reversed(module.dilation), strict=True):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        return nn.functional.pad(x, pads, mode=mode), (0,) * (x.dim() - 2)
    if module.padding_mode != "zeros":
        return (nn.functional.pad(x, module._reversed_padding_repeated_twice, mode=module.padding_mode),
                (0,) * (x.dim() - 2))
    return x, tuple(module.padding)


def columns(module: nn.Module, x: Tensor, pick: Tensor | None = None) -> Tensor:
    """The inputs each output multiplies by its weights, as (groups, columns, d) float32; with
    `pick` (indices into the columns, as `column_count` counts them), only those columns,
    gathered without unfolding the whole input."""
    x = x.detach().float()
    if isinstance(module, nn.Linear):
        flat = x.reshape(-1, x.shape[-1])
        return (flat if pick is None else flat[pick]).unsqueeze(0)
    xp, pad = _padded(module, x)
    g = groups(module)
    (kh, kw), (sh, sw), (dh, dw) = _geometry(module)
    if pick is None:
        u = nn.functional.unfold(xp, (kh, kw), (dh, dw), pad, (sh, sw))  # N, C*k, L
        n, ck, length = u.shape
        return u.reshape(n, g, ck // g, length).permute(1, 0, 3, 2).reshape(g, n * length, ck // g)
    xp = nn.functional.pad(xp, (pad[1], pad[1], pad[0], pad[0]))
    ho, wo = _out_size(module, x)
    n_idx, rest = pick // (ho * wo), pick % (ho * wo)
    oh, ow = rest // wo, rest % wo
    patches = torch.stack([xp[n_idx, :, oh * sh + i * dh, ow * sw + j * dw] for i in range(kh) for j in range(kw)], -1)
    k, c = patches.shape[:2]  # columns, channels, kernel positions
    return patches.reshape(k, g, (c // g) * kh * kw).permute(1, 0, 2)


def _out_size(module: nn.Module, x: Tensor) -> tuple[int, int]:
    xp, pad = _padded(module, x)
    kernel, stride, dilation = _geometry(module)
    return tuple((xp.shape[2 + i] + 2 * pad[i] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1
                 for i in range(2))


def column_count(module: nn.Module, x: Tensor) -> int:
    """How many columns `columns` gives for the batch `x`."""
    if isinstance(module, nn.Linear):
        return x.numel() // x.shape[-1]
    ho, wo = _out_size(module, x)
    return x.shape[0] * ho * wo


@dataclass
class Moments:
    """Running means over columns: qq = E[x̂ x̂ᵀ] of the quantized model's inputs (after the
    layer's own input quantizer), qf = E[x̂ xᵀ] and ff = E[x xᵀ] with the float model's."""

    qq: Tensor
    qf: Tensor | None = None
    ff: Tensor | None = None
    count: int = 0

    def target(self, w: Tensor) -> tuple[Tensor, Tensor]:
        """(w E[x x̂ᵀ], E||w x||² per row) for float weights w: the parts of `row_error` that do
        not depend on ŵ, computed once (float inputs when known, else the quantized ones)."""
        qf = self.qq if self.qf is None else self.qf
        ff = self.qq if self.ff is None else self.ff
        return w @ qf.transpose(1, 2), ((w @ ff) * w).sum(-1)

    def row_error(self, w_hat: Tensor, target: tuple[Tensor, Tensor]) -> Tensor:
        """E(ŵ x̂ - w x)² per output channel, (groups, rows), with `target` = self.target(w)."""
        cross, power = target
        return ((w_hat @ self.qq) * w_hat).sum(-1) - 2 * (w_hat * cross).sum(-1) + power

    def relative_error(self, w_hat: Tensor, w: Tensor) -> float:
        """E||ŵ x̂ - w x||² / E||w x||² over the whole layer."""
        t = self.target(w)
        return float(self.row_error(w_hat, t).sum() / t[1].sum().clamp_min(1e-30))


@torch.no_grad()
def collect(module: nn.Module, inputs: list[tuple[Tensor, ...]], float_inputs: list[tuple[Tensor, ...]] | None,
            seed: int = 0, max_columns: int = MAX_COLUMNS) -> Moments:
    """The layer's input moments over every calibration batch; with `float_inputs`, also the
    cross and float moments. Columns beyond `max_columns` are sampled at random (seeded), the
    same ones from both models."""
    gen = torch.Generator().manual_seed(seed)
    aq = getattr(module, "act_quant", None)
    total = sum(len(b[0]) for b in inputs)
    acc: dict[str, Tensor] = {}
    count = 0
    for k, batch in enumerate(inputs):
        x = batch[0] if aq is None else aq(batch[0]).detach()
        keep, have = math.ceil(max_columns * len(batch[0]) / total), column_count(module, x)
        pick = torch.randperm(have, generator=gen)[:keep] if have > keep else None
        q = columns(module, x, pick)
        f = columns(module, float_inputs[k][0], pick) if float_inputs is not None else None
        for key, a, b in (("qq", q, q), ("qf", q, f), ("ff", f, f)):
            if a is not None and b is not None:
                acc[key] = acc.get(key, 0) + (a.transpose(1, 2) @ b).double()
        count += q.shape[1]
    return Moments(*(acc[k] / count if k in acc else None for k in ("qq", "qf", "ff")), count=count)
