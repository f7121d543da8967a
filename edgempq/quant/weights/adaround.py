"""AdaRound (Nagel et al., ICML 2020) and its block form, BRECQ (Li et al., ICLR 2021): learn,
for every weight, whether it rounds down or up, by minimising the reconstruction error of a
layer's (or a block's) output plus a regulariser that drives each soft choice to 0 or 1.

Each weight is s * clamp(floor(w / s) + h(V), qmin, qmax) with the rectified sigmoid
h(V) = clip(sigmoid(V)(ζ - γ) + γ, 0, 1), ζ = 1.1, γ = -0.1, V initialised so that h(V) is the
fractional part of w / s (nearest rounding's starting point). Loss: reconstruction +
λ Σ (1 - |2h(V) - 1|^β), β annealed from 20 to 2 after a warm-up of 20 % of the iterations
without the regulariser (the papers' defaults). At the end each weight rounds up where V ≥ 0.

* `granularity=layer`: the reconstruction is E||ŵ x̂ - w x||² summed over output channels, in
  closed form from the layer's input moments (x̂ the quantized model's inputs, x the float
  model's: the papers' asymmetric reconstruction), so every step sees all calibration data.
* `granularity=block` (BRECQ): a block (a residual block, an inverted residual) is run on
  `batch_size` calibration samples per step, its quantized inputs against the float block's
  outputs, all its layers' roundings learned together."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ...errors import ConfigError
from ...params import need
from ..moments import Moments, channel_scale, collect, from_matrix, weight_matrix
from ..stream import Unit
from .base import ALGORITHMS, WeightAlgorithm, rtn_codes, set_codes, unaffordable
from .mse import clip_search

ZETA, GAMMA = 1.1, -0.1


def soft(v: Tensor) -> Tensor:
    """The rectified sigmoid h(V): each weight's soft rounding, 0 (down) to 1 (up)."""
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def initial_v(w: Tensor, scale: Tensor) -> Tensor:
    """V with h(V) = the fractional part of w / scale."""
    rest = w / scale - torch.floor(w / scale)
    return -torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1.0)


@dataclass(frozen=True)
class Schedule:
    """The regulariser's weight and temperature at each step."""

    iters: int
    weight: float
    b_start: float
    b_end: float
    warmup: float

    def regulariser(self, step: int, h: Tensor) -> Tensor:
        """λ Σ (1 - |2h - 1|^β) at `step`, β annealed; zero during the warm-up."""
        start = self.warmup * self.iters
        if step < start:
            return h.new_zeros(())
        rel = (step - start) / max(1.0, self.iters - start)
        beta = self.b_end + (self.b_start - self.b_end) * max(0.0, 1.0 - rel)
        return self.weight * (1.0 - (2.0 * h - 1.0).abs().pow(beta)).sum()


class Rounding(nn.Module):
    """Stands in for a layer's weight quantizer while its rounding is learned."""

    def __init__(self, w: Tensor, scale: Tensor, qmin: int, qmax: int, module: nn.Module) -> None:
        super().__init__()
        w, scale = w.float(), scale.float()  # learned in float32: the closed form's matmuls dominate
        self.base, self.scale, self.qmin, self.qmax = torch.floor(w / scale), scale, qmin, qmax
        self.to_weight = lambda m: from_matrix(module, m)  # not a submodule: the layer is not Rounding's
        self.v = nn.Parameter(initial_v(w, scale))

    def soft_weight(self) -> Tensor:
        """The weight matrix with the current soft rounding, clamped to the integer range."""
        return torch.clamp(self.base + soft(self.v), self.qmin, self.qmax) * self.scale

    def forward(self, _w: Tensor) -> Tensor:
        """The soft-rounded weight in the layer's shape (the layer's own weight is ignored)."""
        return self.to_weight(self.soft_weight()).float()

    def step_value(self) -> Tensor:
        """The per-channel step, flat, as a weight quantizer gives it."""
        return self.scale.reshape(-1).float()

    def codes(self) -> Tensor:
        """The hard rounding: each weight up where V >= 0, down elsewhere."""
        return torch.clamp(self.base + (self.v.detach() >= 0).to(self.base.dtype), self.qmin, self.qmax)


class _Reconstruction(torch.autograd.Function):
    """Σ_rows ŵ H ŵᵀ - 2 ŵ · cross (the layer's output error but for a constant), with the
    gradient 2(ŵ H - cross) from the one product ŵ H the forward pass computes (autograd would
    multiply by H twice)."""

    @staticmethod
    def forward(ctx: Any, w_hat: Tensor, h: Tensor, cross: Tensor) -> Tensor:
        wh = w_hat @ h
        ctx.save_for_backward(wh, cross)
        return (wh * w_hat).sum() - 2.0 * (w_hat * cross).sum()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        wh, cross = ctx.saved_tensors
        return grad * 2.0 * (wh - cross), None, None


def _layer_round(r: Rounding, m: Moments, w: Tensor, sched: Schedule, lr: float) -> None:
    """Learn the rounding of one layer on the closed-form reconstruction error (float32)."""
    m32 = Moments(m.qq.float(), None if m.qf is None else m.qf.float(), None if m.ff is None else m.ff.float())
    cross, _ = m32.target(w.float())
    opt = torch.optim.Adam([r.v], lr=lr)
    for step in range(sched.iters):
        h = soft(r.v)
        rec = _Reconstruction.apply(torch.clamp(r.base + h, r.qmin, r.qmax) * r.scale, m32.qq, cross)
        loss = rec + sched.regulariser(step, h)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def _cat(batches: list[tuple[Tensor, ...]]) -> list[Tensor]:
    return [torch.cat([b[k] for b in batches]) for k in range(len(batches[0]))]


def _block_round(unit: Unit, roundings: list[Rounding], sched: Schedule, p: AdaRound.Params, seed: int) -> None:
    """Learn the roundings of a block's layers together on mini-batches of its outputs."""
    ins, outs = _cat(unit.inputs), _cat(unit.float_outputs)
    n = len(ins[0])
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam([r.v for r in roundings], lr=p.lr)
    for step in range(sched.iters):
        idx = torch.randint(0, n, (min(p.batch_size, n),), generator=gen)
        pred = unit.run(tuple(t[idx] for t in ins))
        rec = sum((a - b[idx]).pow(2).flatten(2).sum(1).mean() if a.dim() > 2 else (a - b[idx]).pow(2).sum(1).mean()
                  for a, b in zip(pred, outs, strict=True))
        loss = rec + sum(sched.regulariser(step, soft(r.v)) for r in roundings)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


@ALGORITHMS.register("adaround")
class AdaRound(WeightAlgorithm):
    """Learned rounding by layer-wise (AdaRound) or block-wise (BRECQ) reconstruction."""

    name = "adaround"

    @dataclass(frozen=True)
    class Params:
        """AdaRound's settings (the papers' defaults, except where noted), and BRECQ's granularity."""

        granularity: str = "layer"  # or block (BRECQ)
        iters: int = 1000  # steps per layer or block (the papers: 10 000 / 20 000 mini-batches on a GPU)
        lr: float = 1e-2  # Adam, on V (the papers' 1e-3 is for mini-batches; every step here sees all data)
        weight: float = 0.01  # λ of the rounding regulariser
        b_start: float = 20.0
        b_end: float = 2.0
        warmup: float = 0.2
        batch_size: int = 32  # block: calibration samples per step
        grid: str = "minmax"  # or mse (BRECQ starts from an MSE-fitted step; min-max measured better here)
        asym: bool = True  # reconstruct the float model's outputs from the quantized inputs

        def __post_init__(self) -> None:
            if self.granularity not in ("layer", "block"):
                raise ConfigError(f"adaround granularity must be layer or block, not {self.granularity!r}")
            if self.grid not in ("minmax", "mse"):
                raise ConfigError(f"adaround grid must be minmax or mse, not {self.grid!r}")
            who = "PTQ algorithm adaround"
            need(self.iters >= 1, who, "iters", self.iters, ">= 1")
            need(self.batch_size >= 1, who, "batch_size", self.batch_size, ">= 1")
            need(self.lr > 0, who, "lr", self.lr, "> 0")
            need(self.weight >= 0, who, "weight", self.weight, ">= 0")
            need(0 <= self.warmup < 1, who, "warmup", self.warmup, "in [0, 1): the share of iterations before "
                 "the rounding term starts")
            need(self.b_end > 0, who, "b_end", self.b_end, "> 0")
            need(self.b_start >= self.b_end, who, "b_start", self.b_start,
                 f">= b_end={self.b_end}: the temperature anneals from b_start down to b_end")
            if self.granularity == "block" and not self.asym:
                raise ConfigError("parameter asym=False of PTQ algorithm adaround applies to granularity=layer "
                                  "only: block reconstruction (BRECQ) always reconstructs the float model's block "
                                  "outputs from the quantized inputs; drop asym=False")

    @property
    def granularity(self) -> str:
        """`layer` (AdaRound) or `block` (BRECQ), as configured."""
        return self.params.granularity

    @property
    def need_float(self) -> bool:
        """The float model's values are needed for the asymmetric or the block reconstruction."""
        return self.params.asym or self.params.granularity == "block"

    def _schedule(self) -> Schedule:
        p = self.params
        return Schedule(p.iters, p.weight, p.b_start, p.b_end, p.warmup)

    def quantize(self, unit: Unit, qmodel: nn.Module, seed: int = 0) -> dict[str, dict[str, float]]:
        """Learn the rounding of the unit's layer (or of its block's layers together) and fix it."""
        if self.params.granularity == "block":
            return self._quantize_block(unit, qmodel, seed)
        return self._quantize_layer(unit, qmodel, seed)

    def _grid(self, module: nn.Module, w: Tensor, m: Moments | None) -> Tensor:
        """The per-channel step (groups, rows, 1) the rounding is learned on."""
        wq = module.weight_quant
        return clip_search(w, m, wq.qmin, wq.qmax) if self.params.grid == "mse" else channel_scale(module)

    def _quantize_layer(self, unit: Unit, qmodel: nn.Module, seed: int) -> dict[str, dict[str, float]]:
        (name,) = unit.layers
        module = qmodel.get_submodule(name)
        why = unaffordable(name, module, 6)  # three moments, their float32 copies
        if why:
            return {name: {"note": why}}
        m = collect(module, unit.inputs, unit.float_inputs if self.params.asym else None, seed)
        w = weight_matrix(module)
        scale = self._grid(module, w, m)
        wq = module.weight_quant
        rtn = rtn_codes(w, channel_scale(module), wq.qmin, wq.qmax) * channel_scale(module)
        r = Rounding(w, scale, wq.qmin, wq.qmax, module)
        with torch.enable_grad():
            _layer_round(r, m, w, self._schedule(), self.params.lr)
        codes = r.codes().double()
        set_codes(module, codes, scale)
        return {name: {"rtn_error": m.relative_error(rtn, w), "error": m.relative_error(codes * scale, w)}}

    def _quantize_block(self, unit: Unit, qmodel: nn.Module, seed: int) -> dict[str, dict[str, float]]:
        modules = [qmodel.get_submodule(n) for n in unit.layers]
        before = block_error(unit)
        inputs = layer_inputs(unit, modules) if self.params.grid == "mse" else [None] * len(modules)
        roundings = []
        for mod, ins in zip(modules, inputs, strict=True):
            w = weight_matrix(mod)
            scale = self._grid(mod, w, None if ins is None else collect(mod, ins, None, seed))
            roundings.append(Rounding(w.float(), scale.float(), mod.weight_quant.qmin, mod.weight_quant.qmax, mod))
        with _learning(qmodel, modules, roundings):
            _block_round(unit, roundings, self._schedule(), self.params, seed)
        for mod, r in zip(modules, roundings, strict=True):
            set_codes(mod, r.codes().double(), r.scale.double())
        info = {"rtn_error": before, "error": block_error(unit)}
        if len(unit.layers) > 1:
            info["block"] = ",".join(unit.layers)
        return {n: dict(info) for n in unit.layers}


@contextlib.contextmanager
def _learning(qmodel: nn.Module, modules: list[nn.Module], roundings: list[Rounding]) -> Iterator[None]:
    """While a block's roundings are learned: each layer's weight quantizer replaced by its
    Rounding, and the model's own parameters frozen (only V learns); all restored after."""
    frozen = [(p, p.requires_grad) for p in qmodel.parameters()]
    quantizers = [m.weight_quant for m in modules]
    try:
        for p, _ in frozen:
            p.requires_grad_(False)
        for mod, r in zip(modules, roundings, strict=True):
            mod.weight_quant = r
        with torch.enable_grad():
            yield
    finally:
        for mod, wq in zip(modules, quantizers, strict=True):
            mod.weight_quant = wq
        for p, flag in frozen:
            p.requires_grad_(flag)


@torch.no_grad()
def block_error(unit: Unit) -> float:
    """E||ŷ - y||² / E||y||² of the unit's outputs over the calibration batches."""
    num = den = 0.0
    for ins, outs in zip(unit.inputs, unit.float_outputs, strict=True):
        for a, b in zip(unit.run(ins), outs, strict=True):
            num += float((a - b).pow(2).sum())
            den += float(b.pow(2).sum())
    return num / max(den, 1e-30)


@torch.no_grad()
def layer_inputs(unit: Unit, modules: list[nn.Module]) -> list[list[tuple[Tensor, ...]]]:
    """Each layer's inputs inside the quantized block, per calibration batch."""
    seen: list[list[tuple[Tensor, ...]]] = [[] for _ in modules]
    handles = [m.register_forward_pre_hook(lambda mod, a, k=k: seen[k].append(tuple(t.detach() for t in a)))
               for k, m in enumerate(modules)]
    try:
        for ins in unit.inputs:
            unit.run(ins)
    finally:
        for h in handles:
            h.remove()
    return seen
