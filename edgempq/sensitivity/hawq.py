"""HAWQ (Dong et al.; V2/V3 form), the classic baseline: a layer is as sensitive as the
curvature of the loss along its weights times how far quantization moves them.

The average Hessian trace per parameter of each layer, Tr(H_l) / P_l, is estimated with
Hutchinson's method (E[vᵀHv] = Tr(H) for Rademacher v, Hv by double backpropagation), on the
BatchNorm-folded model, because the folded weights are what deployment quantizes. The penalty of
a precision is Tr(H_l)/P_l × ‖Q_b(W_l) − W_l‖², with Q_b the deployment's weight quantizer, plus
the same for the input activations' relative error (`noise`)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..compute import computing, to_device
from ..distributed import gather_items, ranks, share
from ..errors import ConfigError
from ..metrics import target_loss
from ..progress import Progress
from ..quant.fold import fold_batchnorm
from ..schema import Layer, Precision, Sensitivity
from .base import METHODS, Method, SensData, noise_penalties, searchable
from .noise import relative_noise


def hutchinson_traces(loss_fn: Callable[[], Tensor], params: list[Tensor], probes: int, tol: float,
                      generator: torch.Generator, on_probe: Callable[[int], None] | None = None) -> list[float]:
    """Tr of the Hessian block of each parameter tensor: the mean of vᵀHv over Rademacher
    probes, stopping early once the total changes by less than `tol` (relative).

    Under torchrun the probes go round the ranks: every rank draws each probe from `generator`
    in turn (so the draws are one process's) and computes its own, the products are gathered and
    the stop is checked probe by probe, so the result and the generator's state after it are
    those of one process."""
    loss = loss_fn()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    sums = [0.0] * len(params)
    last = None
    for first in range(0, probes, ranks()):
        block = range(first, min(first + ranks(), probes))
        states, mine = [], {}
        for i in range(len(block)):
            # drawn on the generator's device (the CPU), so any compute device draws the same probes
            vs = [(torch.randint(0, 2, p.shape, generator=generator, device=generator.device) * 2 - 1).to(p)
                  for p in params]
            states.append(generator.get_state())
            if i in share(len(block)):
                hvs = torch.autograd.grad(grads, params, grad_outputs=vs, retain_graph=True)
                mine[i] = [float((v * hv).sum()) for v, hv in zip(vs, hvs, strict=True)]
        for i, (k, products) in enumerate(zip(block, gather_items(len(block), mine), strict=True)):
            sums = [s + v for s, v in zip(sums, products, strict=True)]
            total = sum(sums) / (k + 1)
            if on_probe:
                on_probe(k)
            if last is not None and k >= 2 and abs(total - last) <= tol * (abs(last) + 1e-12):
                generator.set_state(states[i])  # as if the later probes of the block were never drawn
                return [s / (k + 1) for s in sums]
            last = total
    return [s / probes for s in sums]


def auto_probes(macs: int) -> int:
    """Probes for `probes=0`: 100 (HAWQ-V3's cap), or as many as take about 150 s on a
    2-core CPU (one probe ≈ 12 s per 60 GMACs of the batch, measured), never under 12; fixed by
    the model and batch, so the result stays deterministic."""
    per_probe_s = 12.0 * macs / 60e9
    return int(min(100, max(12, 150 / per_probe_s if per_probe_s > 0 else 100)))


def floored(avg: dict[str, float]) -> dict[str, float]:
    """Each layer's trace per weight, a non-positive estimate raised to the least positive one.

    Near a minimum the estimate of a flat layer's trace falls below 0 by the probes' noise (on
    MNIST MobileNet the classifier's, whose true trace cannot be negative: cross-entropy is convex
    in its weights). Taken as 0 it made every width of the layer free, so the classifier went to
    2 bits even with no budget; as the least sensitive measured layer it is first to narrow, its
    widths still ordered by their error."""
    positive = [t for t in avg.values() if t > 0]
    least = min(positive) if positive else 1.0
    return {n: t if t > 0 else least for n, t in avg.items()}


@METHODS.register("hawq")
class HAWQ(Method):
    """HAWQ Hessian-trace sensitivity. The paper scores weight precision only; here the input
    activations' relative error at each width adds to the weights' (`act_share`), so that a
    target's 16-bit activations score better than its 8-bit ones. A non-positive trace estimate (a
    non-convex point, or the probes' noise on a flat layer) is raised to the least positive one
    (`floored`) and listed in `info`."""

    name = "hawq"

    @dataclass(frozen=True)
    class Params:
        probes: int = 0  # 0 = auto: HAWQ-V3's 100, fewer (at least 12) when a batch is heavy
        tol: float = 1e-3  # HAWQ-V3's stopping tolerance
        batches: int = 1
        batch_size: int = 32
        act_share: float = 1.0  # the input's relative error against the weights' (0: weights only, as the paper)
        seed: int = 0

        def __post_init__(self) -> None:
            if self.probes < 0 or self.batches < 1 or self.batch_size < 1 or self.tol < 0 or self.act_share < 0:
                raise ConfigError("hawq needs probes >= 0 (0 = auto), batches and batch_size >= 1, tol >= 0 and "
                                  "act_share >= 0")

    def compute(self, model: nn.Module, layers: list[Layer], precisions: dict[str, list[Precision]],
                data: SensData, on_step: Progress | None = None) -> Sensitivity:
        """Estimate each layer's Hessian trace per weight and weigh each precision's quantization error by it."""
        p = self.params
        todo = searchable(layers, precisions)
        model = copy.deepcopy(model).eval()  # folded and given gradients here, never the caller's
        fold_batchnorm(model)
        for q in model.parameters():
            q.requires_grad_(False)
        for la in todo:
            model.get_submodule(la.name).weight.requires_grad_(True)
        gen = torch.Generator().manual_seed(p.seed)
        n = min(len(data.inputs), p.batches * p.batch_size)
        probes = p.probes or auto_probes(sum(la.macs for la in todo) * n)
        x_all, y_all = data.batch(n, p.seed)
        with computing(model):  # the noise terms below are the CPU's, as deploy quantizes there
            weights = [model.get_submodule(la.name).weight for la in todo]  # the tensors on the device
            traces = self._traces(model, weights, (x_all, y_all), probes, gen, on_step)
        avg = {la.name: t / la.weight_count for la, t in zip(todo, traces, strict=True)}
        # Tr(H)/P × ‖Q(W) − W‖² = Tr(H)/P × ‖W‖² × the relative error, and the input's relative
        # error moves the output as much as the same relative error on the weights
        used = floored(avg)
        coef = {la.name: used[la.name] * float((model.get_submodule(la.name).weight.detach() ** 2).sum())
                for la in todo}
        errors = relative_noise(model, todo, precisions, x_all[:p.batch_size])
        penalties = noise_penalties(precisions, coef, errors, p.act_share, normalise=False)
        trace = {la.name: t for la, t in zip(todo, traces, strict=True)}
        return Sensitivity(self.name, penalties, info={"trace": trace, "avg_trace": avg, "probes": probes,
                                                       "nonpositive_trace": [n for n, t in avg.items() if t <= 0]})

    def _traces(self, model: nn.Module, weights: list[Tensor], batch: tuple[Tensor, Tensor], probes: int,
                gen: torch.Generator, on_step: Progress | None) -> list[float]:
        """Each weight tensor's Hessian trace over the samples, batch by batch (each batch's
        traces weighted by its share of the samples)."""
        p = self.params
        x_all, y_all = batch
        n = len(x_all)
        traces = [0.0] * len(weights)
        steps = probes * ((n + p.batch_size - 1) // p.batch_size)
        done = 0
        for start in range(0, n, p.batch_size):
            x, y = to_device(x_all[start:start + p.batch_size], y_all[start:start + p.batch_size])

            def tick(_k: int, done_before: int = done) -> None:
                if on_step:
                    on_step(done_before + _k + 1, steps, "probes")

            tr = hutchinson_traces(lambda x=x, y=y: target_loss(model(x), y), weights, probes, p.tol, gen, tick)
            traces = [a + b * len(x) / n for a, b in zip(traces, tr, strict=True)]
            done += probes
        return traces
