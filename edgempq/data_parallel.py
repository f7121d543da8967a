"""Data-parallel training under torchrun: each rank takes its share of every batch and the
gradients are averaged, so the ranks train one model that equals one process's (within float
tolerance: only the order of the sums differs).

The batch size stays the global one: a `Shard` gives this rank its samples of a batch (every
size-th from its rank, as torch's DistributedSampler deals them) and the factor that turns the
mean loss of its samples into its part of the global mean, so the gradient average
DistributedDataParallel (or `average_gradients`) takes is the one-process gradient even when a
batch does not divide evenly. Every rank draws the same shuffles and augmentations for the whole
batch. BatchNorm in training mode normalises over the whole batch (`synced_batchnorm`), as one
process does: torch's SyncBatchNorm runs on GPUs only, this one on any device. Without torchrun
everything here is the identity."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from . import distributed


@dataclass(frozen=True)
class Shard:
    """This rank's part of one global batch: its positions in the batch and its loss factor."""

    positions: Tensor
    scale: float

    @property
    def empty(self) -> bool:
        """Whether this rank has no sample of the batch (a batch smaller than the world)."""
        return len(self.positions) == 0


def shard(batch: int) -> Shard:
    """This rank's samples of a global batch of `batch` and the factor world · n_local / n_global."""
    size = distributed.ranks()
    rank = distributed.world().rank if size > 1 else 0
    positions = torch.arange(rank, batch, size, device="cpu")  # indexes the batches drawn on the CPU
    return Shard(positions, size * len(positions) / batch)


def local_loss(loss: Tensor, part: Shard, *outputs: Tensor) -> Tensor:
    """The loss this rank back-propagates: its mean loss scaled to its part of the global mean,
    or, when it has no sample, a zero joined to the graph of its (empty) `outputs`, so that
    every rank runs the same backward and its collectives."""
    if part.empty:
        return sum(o.sum() for o in outputs) * 0.0
    return loss * part.scale


def wrap(model: nn.Module) -> nn.Module:
    """`model` in DistributedDataParallel when several processes train it, else as it is."""
    if not distributed.active():
        return model
    on = next((p.device for p in model.parameters()), torch.device("cpu"))
    return nn.parallel.DistributedDataParallel(model, device_ids=[on.index] if on.type == "cuda" else None)


def average_gradients(params: Sequence[nn.Parameter]) -> None:
    """Average the gradients of `params` over the ranks in one all-reduce (for training steps
    DistributedDataParallel cannot follow: several backward passes a step, parts of the network
    unused in each, gradients of gradients)."""
    if not distributed.active():
        return
    import torch.distributed as dist

    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= distributed.ranks()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def global_sum(values: Tensor) -> Tensor:
    """`values` summed over the ranks (no gradient)."""
    if not distributed.active():
        return values
    import torch.distributed as dist

    out = values.detach().clone()
    dist.all_reduce(out)
    return out


def global_mean_abs(x: Tensor) -> Tensor:
    """The mean of |x| over every rank's samples (no gradient)."""
    both = global_sum(torch.stack([x.detach().abs().sum().double(),
                                   torch.tensor(float(x.numel()), dtype=torch.float64, device=x.device)]))
    return (both[0] / both[1].clamp_min(1)).to(x.dtype)


def global_any(x: Tensor) -> bool:
    """Whether `x` (a boolean tensor) holds a True on any rank."""
    return bool(global_sum(x.any().double().reshape(1)) > 0)


def global_means(values: Sequence[float], part: Shard) -> list[float]:
    """Per-batch means of the ranks' shares (each rank's mean weighted by its share) as one
    process would have them: for the losses a step reports."""
    if not distributed.active():
        return list(values)
    weights = torch.tensor([0.0 if part.empty else v * part.scale for v in values], dtype=torch.float64, device="cpu")
    return (global_sum(weights) / distributed.ranks()).tolist()


def agree(model: nn.Module) -> None:
    """Make every rank hold rank 0's parameters and buffers (after training, so float noise in
    the reductions cannot leave the ranks a bit apart)."""
    if not distributed.active():
        return
    import torch.distributed as dist

    for t in [*model.parameters(), *model.buffers()]:
        dist.broadcast(t.data, 0)


class _AllReduceSum(torch.autograd.Function):
    """A sum over the ranks that gradients flow through (their gradients summed over the ranks in
    turn; differentiable again for a gradient of a gradient)."""

    @staticmethod
    def forward(ctx: object, t: Tensor) -> Tensor:  # noqa: D102
        import torch.distributed as dist

        out = t.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: object, grad: Tensor) -> Tensor:  # noqa: D102
        return _AllReduceSum.apply(grad)


class SyncBatchNorm(nn.Module):
    """A BatchNorm whose batch statistics in training are over every rank's samples: the batch
    one process would see. It uses the wrapped BatchNorm's own parameters and running buffers."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        self.bn = bn

    def forward(self, x: Tensor) -> Tensor:
        """Batch statistics over all ranks in training; the wrapped BatchNorm otherwise."""
        bn = self.bn
        if not distributed.active() or not (bn.training or bn.running_mean is None):
            return bn(x)
        all_reduce = _AllReduceSum.apply
        dims = [d for d in range(x.dim()) if d != 1]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = global_sum(torch.tensor(float(x.numel() // max(x.shape[1], 1)), dtype=x.dtype, device=x.device))
        mean = all_reduce(x.sum(dims)) / count
        var = all_reduce(((x - mean.view(shape)) ** 2).sum(dims)) / count
        if bn.training and bn.running_mean is not None:
            self._track(mean.detach(), var.detach(), count)
        y = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + bn.eps)
        if bn.affine:
            y = y * bn.weight.view(shape) + bn.bias.view(shape)
        return y

    @torch.no_grad()
    def _track(self, mean: Tensor, var: Tensor, count: Tensor) -> None:
        bn = self.bn
        bn.num_batches_tracked.add_(1)
        m = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
        unbiased = var * count / (count - 1).clamp_min(1)
        bn.running_mean.mul_(1 - m).add_(mean, alpha=m)
        bn.running_var.mul_(1 - m).add_(unbiased, alpha=m)


def _batchnorms(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    return [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
            if isinstance(child, nn.modules.batchnorm._BatchNorm)]


@contextmanager
def synced_batchnorm(model: nn.Module) -> Iterator[nn.Module]:
    """`model` with each BatchNorm normalising over every rank's samples while training, put
    back as it was on exit (its parameters and running statistics are the same tensors)."""
    swapped = _batchnorms(model) if distributed.active() else []
    for parent, name, bn in swapped:
        setattr(parent, name, SyncBatchNorm(bn))
    try:
        yield model
    finally:
        for parent, name, bn in swapped:
            setattr(parent, name, bn)
