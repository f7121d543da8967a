"""GPTQ (Frantar et al., arXiv 2210.17323): quantize a layer's weights one input column at a
time and spread each column's rounding error over the columns not yet quantized, weighted by
the inverse Hessian H⁻¹ of the layer's output error (H = E[x̂ x̂ᵀ] of its calibration inputs,
those of the already quantized earlier layers). Exact for the quadratic error, one Cholesky
factorisation per layer, lazy blocked updates (blocks of `block_size` columns), damping of
`damp` x the mean diagonal. `act_order` takes the columns in order of decreasing H_ii (the
reference code's --act-order); with one fixed grid per output channel it costs nothing.

The grid (one step per output channel) is fixed before the rounding: min-max (the reference
code's), or the output-error clipping of the `mse` algorithm (`grid=mse`; measured worse with
GPTQ on the benchmark models: clipping leaves the error feedback less room)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ...errors import ConfigError
from ...params import need
from ..moments import Moments, channel_scale
from .base import ALGORITHMS, LayerAlgorithm
from .mse import clip_search


def _inverse_factor(h: Tensor, damp: float) -> Tensor:
    """The upper Cholesky factor U of (H + λI)⁻¹ = UᵀU per group, λ = damp x mean diag; λ grows
    tenfold for a group whose H is still not positive definite (rank-deficient calibration
    data). With R upper and H = RRᵀ (the lower factor of H with rows and columns reversed), U is
    R⁻¹: one factorisation and one triangular inverse."""
    d = h.shape[-1]
    eye = torch.eye(d, dtype=h.dtype)
    lam = damp * torch.diagonal(h, dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12)
    for _ in range(8):
        lower, info = torch.linalg.cholesky_ex((h + lam[:, None, None] * eye).flip(-1, -2))
        if not bool(info.any()):
            return torch.linalg.solve_triangular(lower.flip(-1, -2), eye.expand_as(h), upper=True)
        lam = lam * 10
    raise ConfigError("GPTQ: a layer's calibration inputs are degenerate even after damping; use ptq=mse")


def _permute(w: Tensor, h: Tensor, perm: Tensor) -> tuple[Tensor, Tensor]:
    d = h.shape[-1]
    w = w.gather(2, perm[:, None, :].expand(-1, w.shape[1], -1))
    h = h.gather(1, perm[:, :, None].expand(-1, -1, d)).gather(2, perm[:, None, :].expand(-1, d, -1))
    return w, h


def gptq_codes(w: Tensor, h: Tensor, scale: Tensor, qmin: int, qmax: int,
               params: Gptq.Params | None = None) -> Tensor:
    """Integer codes (groups, rows, d) for weights `w` (groups, rows, d) on the grid `scale`
    (groups, rows, 1) that keep E||(ŵ - w) x̂||² small, for the input moment `h` (groups, d, d);
    `params` gives the block size, damping and column order (its `grid` is the caller's)."""
    p = params if params is not None else Gptq.Params()
    block_size, damp, act_order = p.block_size, p.damp, p.act_order
    w, h = w.clone(), h.clone()
    dead = torch.diagonal(h, dim1=-2, dim2=-1) == 0  # inputs that are always 0: their weights do not matter
    torch.diagonal(h, dim1=-2, dim2=-1)[dead] = 1.0
    w = w.masked_fill(dead[:, None, :], 0.0)
    perm = torch.argsort(torch.diagonal(h, dim1=-2, dim2=-1), dim=-1, descending=True) if act_order else None
    if perm is not None:
        w, h = _permute(w, h, perm)
    # factorised in float64 (once per layer), updated in float32 (the d x rows work per column)
    u = _inverse_factor(h, damp).float()
    w, s = w.float(), scale[..., 0].float()
    codes = torch.zeros_like(w)
    for i1 in range(0, w.shape[-1], block_size):
        i2 = min(i1 + block_size, w.shape[-1])
        part, errs, ub = w[..., i1:i2].clone(), torch.zeros_like(w[..., i1:i2]), u[:, i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = part[..., i]
            q = torch.clamp(torch.round(col / s), qmin, qmax)
            codes[..., i1 + i] = q
            err = (col - q * s) / ub[:, i, i][:, None]
            part[..., i:] -= err[..., None] * ub[:, i, i:][:, None, :]
            errs[..., i] = err
        w[..., i2:] -= errs @ u[:, i1:i2, i2:]
    if perm is not None:
        codes = codes.gather(2, torch.argsort(perm, dim=-1)[:, None, :].expand(-1, codes.shape[1], -1))
    return codes.double()


@ALGORITHMS.register("gptq")
class Gptq(LayerAlgorithm):
    """Hessian-based sequential rounding with error feedback, per layer."""

    name = "gptq"

    @dataclass(frozen=True)
    class Params:
        """GPTQ's settings: columns per lazy block, damping, column order, and the grid."""

        block_size: int = 128
        damp: float = 0.01
        act_order: bool = True
        grid: str = "minmax"  # or mse: the per-channel step the rounding works on

        def __post_init__(self) -> None:
            need(self.block_size >= 1, "PTQ algorithm gptq", "block_size", self.block_size, ">= 1")
            need(self.damp > 0, "PTQ algorithm gptq", "damp", self.damp,
                 "> 0 (a share of the Hessian's mean diagonal, 0.01 in the paper)")
            if self.grid not in ("minmax", "mse"):
                raise ConfigError(f"gptq grid must be minmax or mse, not {self.grid!r}")

    def solve(self, module: nn.Module, w: Tensor, m: Moments, qmin: int, qmax: int) -> tuple[Tensor, Tensor]:
        """The per-channel grid (min-max or `mse`), then GPTQ's codes on it."""
        p = self.params
        scale = clip_search(w, m, qmin, qmax) if p.grid == "mse" else channel_scale(module)
        return gptq_codes(w, m.qq, scale, qmin, qmax, p), scale
