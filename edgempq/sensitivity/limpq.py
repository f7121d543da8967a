"""LIMPQ (Tang et al., ECCV 2022, arXiv 2203.08368): layer importance learned as the LSQ step
sizes of a network trained at every candidate precision at once.

Every searched layer gets one learnable LSQ step per candidate weight width and per candidate
activation width (per tensor), and each BatchNorm after it one copy per precision (switchable
BatchNorm). Each training step accumulates the gradients of every uniform precision (every
layer that can take it at it) and of one random mixed policy, clips every gradient element to
[−1, 1] and takes one SGD step (cosine learning rate). The learned steps are the importance
indicators: I^w_l(b), I^a_l(b); a wider width learns a finer step. Outlier erasure: scanning
widths from wide to narrow, a narrower width whose step came out finer than the next wider
one's, and every width below it, is marked (as the released code does, in cascade). The
penalty of (layer, w b_w a b_a) is the paper's objective term I^a(b_a) + α · I^w(b_w); erased
indicators cost `erased` × the largest indicator (the paper: 1e8). Float precisions are
lossless: penalty 0.

Departures: widths come from the precisions asked for (the paper: 6..2 for both); a weight
or activation step is not clamped to ≤ 1 (the paper's clamp saturates large activations);
inputs with negative values get a signed activation range (the paper's unsigned range assumes
ReLU outputs; its stem is kept float)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ..compute import computing, on_cpu, to_device
from ..data_parallel import (
    average_gradients,
    global_any,
    global_mean_abs,
    global_means,
    local_loss,
    shard,
    synced_batchnorm,
)
from ..errors import ConfigError
from ..layers import apply_weights
from ..metrics import target_loss
from ..progress import Progress
from ..quant.fold import set_module
from ..quant.quantizers import grad_scale, round_ste
from ..schema import Layer, Precision, Sensitivity
from .base import METHODS, Method, SensData, searchable


def lsq(x: Tensor, step: Tensor, qn: int, qp: int, numel: int | None = None) -> Tensor:
    """LSQ fake quantization: round(clamp(x / s, qn, qp)) · s, the step's gradient scaled by
    1 / sqrt(qp · numel), `numel` the elements of the whole batch (x's by default)."""
    s = grad_scale(step.clamp_min(1e-5), 1.0 / math.sqrt(qp * (numel or x.numel())))
    return round_ste(torch.clamp(x / s, qn, qp)) * s


class MultiBitLayer(nn.Module):
    """A Conv2d / Linear with one LSQ step per candidate weight and activation width; `use`
    selects the (weight, activation) widths of the next forward (None: float)."""

    def __init__(self, layer: nn.Module, weight_bits: list[int], act_bits: list[int]) -> None:
        super().__init__()
        self.layer = layer
        self.weight_bits, self.act_bits = list(weight_bits), list(act_bits)
        w = layer.weight.detach()
        mu, sigma = float(w.mean()), float(w.std())
        bound = max(abs(mu - 3 * sigma), abs(mu + 3 * sigma))
        self.step_w = nn.Parameter(torch.tensor([bound / 2 ** (b - 1) for b in weight_bits]))
        self.step_a = nn.Parameter(torch.ones(len(act_bits)))
        self.register_buffer("a_ready", torch.zeros(len(act_bits), dtype=torch.bool))
        self.register_buffer("a_signed", torch.zeros((), dtype=torch.bool))
        self.current: tuple[int, int] | None = None
        self.batch: int | None = None  # the whole batch's samples when a rank sees only its share

    def use(self, bits: tuple[int, int] | None, batch: int | None = None) -> None:
        """Select the (weight, activation) widths of the next forward passes (None runs the layer
        float) and the samples of the whole batch they are a share of (None: all of it)."""
        self.current, self.batch = bits, batch

    def forward(self, x: Tensor) -> Tensor:
        """The layer with its weight and input LSQ-quantized at the current widths (as is when float)."""
        w = self.layer.weight
        if self.current is not None:
            wb, ab = self.current
            i, j = self.weight_bits.index(wb), self.act_bits.index(ab)
            w = lsq(w, self.step_w[i], -(2 ** (wb - 1)), 2 ** (wb - 1) - 1)
            if not bool(self.a_ready[j]):  # lazily, on the first batch seen at this width (every rank's share)
                with torch.no_grad():
                    if not bool(self.a_ready.any()):
                        self.a_signed.fill_(global_any(x < 0))
                    qp = 2 ** (ab - 1) - 1 if bool(self.a_signed) else 2 ** ab - 1
                    self.step_a[j] = global_mean_abs(x) * 2 / math.sqrt(qp)
                    self.a_ready[j] = True
            numel = math.prod(x.shape[1:]) * self.batch if self.batch is not None else None
            if bool(self.a_signed):
                x = lsq(x, self.step_a[j], -(2 ** (ab - 1)), 2 ** (ab - 1) - 1, numel)
            else:
                x = lsq(x, self.step_a[j], 0, 2 ** ab - 1, numel)
        return apply_weights(self.layer, x, w, self.layer.bias)


class SwitchableBN(nn.Module):
    """One BatchNorm copy per precision of the layer before it (float uses its own copy)."""

    def __init__(self, bn: nn.BatchNorm2d | nn.BatchNorm1d, keys: list[str], owner: MultiBitLayer) -> None:
        super().__init__()
        import copy

        self.keys = list(keys)
        self.copies = nn.ModuleList(copy.deepcopy(bn) for _ in keys)
        self.float_bn = bn
        self.owner = owner

    def forward(self, x: Tensor) -> Tensor:
        """`x` through the BatchNorm copy of the owner's current precision."""
        if self.owner.current is None:
            return self.float_bn(x)
        wb, ab = self.owner.current
        return self.copies[self.keys.index(f"w{wb}a{ab}")](x)


def erase_outliers(importance: dict[int, float], erased: float) -> dict[int, float]:
    """Scanning from the widest width down: a narrower width whose indicator is below the next
    wider one's is an outlier, and so (in cascade) is every width below it."""
    out = dict(importance)
    widths = sorted(out, reverse=True)
    for wide, narrow in zip(widths, widths[1:], strict=False):
        if out[narrow] < out[wide]:
            out[narrow] = erased
    return out


@METHODS.register("limpq")
class LIMPQ(Method):
    """Learned importance indicators (LSQ steps) of a jointly trained multi-precision network."""

    name = "limpq"
    monotone_exception = "learned step sizes are not ordered by construction; outliers are erased, not reordered"

    @dataclass(frozen=True)
    class Params:
        epochs: int = 5  # ResNet-18's indicator training in the paper
        batch_size: int = 64  # 256 per GPU in the paper; a calibration split holds a few hundred samples
        lr: float = 0.01
        momentum: float = 0.9
        weight_decay: float = 2.5e-5
        label_smoothing: float = 0.1
        alpha: float = 2.0  # objective: I^a + alpha * I^w
        erased: float = 1e4  # an erased indicator costs this many times the largest one
        seed: int = 0

        def __post_init__(self) -> None:
            if self.epochs < 1 or self.batch_size < 1:
                raise ConfigError("limpq needs epochs >= 1 and batch_size >= 1")
            if self.lr <= 0 or self.alpha < 0 or self.erased <= 1 or not 0 <= self.label_smoothing < 1:
                raise ConfigError("limpq needs lr > 0, alpha >= 0, erased > 1 and 0 <= label_smoothing < 1")

    def compute(self, model: nn.Module, layers: list[Layer], precisions: dict[str, list[Precision]],
                data: SensData, on_step: Progress | None = None) -> Sensitivity:
        """Train the multi-precision network and read its learned steps out as the paper's objective terms."""
        p = self.params
        torch.manual_seed(p.seed)
        todo = searchable(layers, precisions)
        scored = [la for la in todo if any(not q.is_float for q in precisions[la.name])]
        ints = {la.name: [q for q in precisions[la.name] if not q.is_float] for la in scored}
        with on_cpu():  # built on the CPU, moved to the compute device to train
            net, multi = _multi_precision(model, ints)  # a copy: the caller's model is never changed
        x_all = torch.from_numpy(np.ascontiguousarray(data.inputs)).float()
        y_all = data.targets()
        with computing(net):  # the learned steps are read back on the CPU
            training = _Training(net, multi, ints, p, len(x_all))
            losses = training.run(x_all, y_all, on_step)
        for m in multi.values():
            m.use(None)
        raw = _indicators(multi)
        top = max((v for w, a in raw.values() for v in (*w.values(), *a.values())), default=1.0)
        big = p.erased * top
        erased = {n: (erase_outliers(w, big), erase_outliers(a, big)) for n, (w, a) in raw.items()}
        info = {"indicators": {n: {"weight": {str(b): v for b, v in w.items()},
                                   "activation": {str(b): v for b, v in a.items()}} for n, (w, a) in raw.items()},
                "erased": sorted(f"{n} {kind}{b}" for n, (w, a) in erased.items()
                                 for kind, d in (("w", w), ("a", a)) for b, v in d.items() if v == big),
                "final_loss": float(np.mean(losses[-training.per_epoch:])) if losses else None,
                "steps": len(losses)}
        return Sensitivity(self.name, _penalties(todo, precisions, erased, p.alpha), info=info)


def _multi_precision(model: nn.Module, ints: dict[str, list[Precision]]) -> tuple[nn.Module, dict[str, MultiBitLayer]]:
    """A copy of `model` with a MultiBitLayer per searched layer and a SwitchableBN after each."""
    import copy

    net = copy.deepcopy(model)
    multi: dict[str, MultiBitLayer] = {}
    for name, qs in ints.items():
        multi[name] = MultiBitLayer(net.get_submodule(name), sorted({q.weight_bits for q in qs}),
                                    sorted({q.act_bits for q in qs}))
        set_module(net, name, multi[name])
    for bn_name, layer in _bn_after(net, multi):
        keys = [f"w{q.weight_bits}a{q.act_bits}" for q in ints[layer]]
        set_module(net, bn_name, SwitchableBN(net.get_submodule(bn_name), keys, multi[layer]))
    return net, multi


class _Training:
    """The indicator training of one LIMPQ run: SGD with a cosine learning rate, every uniform
    precision and one random mixed policy a step."""

    def __init__(self, net: nn.Module, multi: dict[str, MultiBitLayer], ints: dict[str, list[Precision]],
                 params: LIMPQ.Params, samples: int) -> None:
        p = self.params = params
        self.net, self.multi, self.ints = net, multi, ints
        self.rng = np.random.default_rng(p.seed)
        self.uniform = sorted({str(q) for qs in ints.values() for q in qs})
        self.per_epoch = math.ceil(samples / p.batch_size)
        self.steps = p.epochs * self.per_epoch
        self.opt = torch.optim.SGD(net.parameters(), lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=self.steps, eta_min=1e-5)

    def run(self, x_all: Tensor, y_all: Tensor, on_step: Progress | None) -> list[float]:
        """Every epoch's steps over shuffled batches; the mean loss of each step. Under torchrun
        each rank takes its share of every batch and the gradients are averaged."""
        p = self.params
        gen = torch.Generator().manual_seed(p.seed)  # batches are drawn on the CPU, then moved
        self.net.train()
        losses: list[float] = []
        with synced_batchnorm(self.net):
            for _ in range(p.epochs):
                order = torch.randperm(len(x_all), generator=gen, device=gen.device)
                for i in range(0, len(x_all), p.batch_size):
                    idx = order[i:i + p.batch_size]
                    losses.append(self.step(x_all[idx], y_all[idx]))
                    if on_step:
                        on_step(len(losses) - 1, self.steps, f"loss {losses[-1]:.3f}")
        return losses

    def step(self, xb: Tensor, yb: Tensor) -> float:
        """One SGD step on the summed gradients of every configuration; their mean loss."""
        self.opt.zero_grad()
        batch, part = len(xb), shard(len(xb))
        xb, yb = to_device(xb[part.positions], yb[part.positions])
        losses = []
        configs = self.configs()
        for cfg in configs:
            for n, m in self.multi.items():
                q = cfg[n]
                m.use(None if q is None else (q.weight_bits, q.act_bits), batch)
            out = self.net(xb)
            loss = (nn.functional.cross_entropy(out, yb, label_smoothing=self.params.label_smoothing)
                    if not yb.dtype.is_floating_point else target_loss(out, yb))
            local_loss(loss, part, out).backward()
            losses.append(loss.item())
        average_gradients(list(self.net.parameters()))
        for prm in self.net.parameters():
            if prm.grad is not None:
                prm.grad.clamp_(-1.0, 1.0)
        self.opt.step()
        self.sched.step()
        return sum(global_means(losses, part)) / len(configs)

    def configs(self) -> list[dict[str, Precision | None]]:
        """Each uniform precision (None where a layer cannot take it: float), then one random mixed policy."""
        ints = self.ints
        configs = [{n: next((q for q in qs if str(q) == u), None) for n, qs in ints.items()} for u in self.uniform]
        configs.append({n: qs[int(self.rng.integers(len(qs)))] for n, qs in ints.items()})
        return configs


_Steps = tuple[dict[int, float], dict[int, float]]  # a layer's (weight, activation) indicators by width


def _indicators(multi: dict[str, MultiBitLayer]) -> dict[str, _Steps]:
    """Each layer's learned (weight, activation) steps by width, as the forward pass uses them (clamped at 1e-5)."""
    return {n: ({b: float(v) for b, v in zip(m.weight_bits, m.step_w.detach().clamp_min(1e-5), strict=True)},
                {b: float(v) for b, v in zip(m.act_bits, m.step_a.detach().clamp_min(1e-5), strict=True)})
            for n, m in multi.items()}


def _penalties(todo: list[Layer], precisions: dict[str, list[Precision]], erased: dict[str, _Steps],
               alpha: float) -> dict[tuple[str, str], float]:
    """I^a(b_a) + α · I^w(b_w) per (layer, precision); 0 for float precisions and unsearched layers."""
    penalties = {}
    for la in todo:
        for q in precisions[la.name]:
            if q.is_float or la.name not in erased:
                penalties[(la.name, str(q))] = 0.0
            else:
                iw, ia = erased[la.name]
                penalties[(la.name, str(q))] = ia[q.act_bits] + alpha * iw[q.weight_bits]
    return penalties


def _bn_after(model: nn.Module, multi: dict[str, MultiBitLayer]) -> list[tuple[str, str]]:
    """(BatchNorm name, searched layer name) for every BatchNorm fed directly by a searched layer."""
    import torch.fx

    class Leaf(torch.fx.Tracer):
        def is_leaf_module(self, m: nn.Module, name: str) -> bool:
            return isinstance(m, MultiBitLayer) or super().is_leaf_module(m, name)

    try:
        graph = Leaf().trace(model)
    except Exception:  # noqa: BLE001 - untraceable: no switchable BatchNorm, the layers still learn
        return []
    modules = dict(model.named_modules())
    out = []
    for n in graph.nodes:
        if n.op == "call_module" and isinstance(modules.get(n.target), nn.BatchNorm1d | nn.BatchNorm2d):
            src = n.args[0] if n.args else None
            if getattr(src, "op", None) == "call_module" and src.target in multi:
                out.append((n.target, src.target))
    return out
