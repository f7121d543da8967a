"""Per-channel clipping chosen by the layer's output error on calibration data: each output
channel's bound is r x its largest weight magnitude, with the r in (0, 1] that minimises
E(ŵ x̂ - w x)² over the calibration columns (not the weights' own error, which ignores how
the inputs weigh each weight). Rounding is to nearest on that grid."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ...params import need
from ..moments import Moments
from .base import ALGORITHMS, LayerAlgorithm, rtn_codes


def clip_search(w: Tensor, m: Moments, qmin: int, qmax: int, coarse: int = 20, fine: int = 10) -> Tensor:
    """The per-channel step (groups, rows, 1) whose rounding errs least on the layer's output:
    `coarse` ratios over (0, 1], then `fine` around each channel's best."""
    top = w.abs().amax(-1, keepdim=True).clamp_min(1e-12)
    target = m.target(w)

    def best(ratios: Tensor) -> Tensor:  # ratios: (k, groups, rows, 1) -> the best per channel
        errs = torch.stack([m.row_error(rtn_codes(w, top * r / qmax, qmin, qmax) * (top * r / qmax), target)
                            for r in ratios])
        pick = errs.argmin(0).unsqueeze(0).unsqueeze(-1)
        return ratios.gather(0, pick)[0]

    grid = torch.linspace(1.0 / coarse, 1.0, coarse, dtype=w.dtype).reshape(-1, 1, 1, 1).expand(-1, *top.shape)
    r = best(grid)
    if fine > 0:
        offsets = torch.linspace(-1.0 / coarse, 1.0 / coarse, 2 * fine + 1, dtype=w.dtype).reshape(-1, 1, 1, 1)
        r = best((r.unsqueeze(0) + offsets).clamp(1.0 / (coarse * fine), 1.0))
    return top * r / qmax


@ALGORITHMS.register("mse")
class Mse(LayerAlgorithm):
    """Output-error clipping per output channel, round to nearest."""

    name = "mse"

    @dataclass(frozen=True)
    class Params:
        """The clipping search's coarse and fine steps, and which output it targets."""

        coarse: int = 20  # ratios tried over (0, 1]
        fine: int = 10  # then this many steps either side of each channel's best
        asym: bool = False  # target the float model's output (its inputs unquantized) instead of w x̂

        def __post_init__(self) -> None:
            need(self.coarse >= 1, "PTQ algorithm mse", "coarse", self.coarse, ">= 1")
            need(self.fine >= 0, "PTQ algorithm mse", "fine", self.fine, ">= 0")

    @property
    def need_float(self) -> bool:
        """The float model's inputs are needed for the asymmetric target."""
        return self.params.asym

    def solve(self, module: nn.Module, w: Tensor, m: Moments, qmin: int, qmax: int) -> tuple[Tensor, Tensor]:
        """The clipped per-channel steps of least output error, then round to nearest on them."""
        scale = clip_search(w, m, qmin, qmax, self.params.coarse, self.params.fine)
        return rtn_codes(w, scale, qmin, qmax), scale
