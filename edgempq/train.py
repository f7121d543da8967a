"""Training: float training of zoo models (`edgempq train`) and the QAT finetune, on the compute
device (edgempq.compute), data-parallel under torchrun."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from . import compute
from .errors import ConfigError
from .metrics import scores, task_loss
from .progress import Progress


@dataclass(frozen=True)
class TrainConfig:
    """SGD with Nesterov momentum, warm-up then cosine decay; random shifts of up to
    `augment_shift` pixels are the only augmentation (digits must not be flipped), for the
    tasks whose targets do not move with the input (classify, reconstruct). `task` picks the
    loss (see metrics.task_loss)."""

    epochs: int = 8
    batch_size: int = 64
    lr: float = 0.1
    weight_decay: float = 5e-4
    optimizer: str = "sgd"  # sgd | adam
    augment_shift: int = 2
    seed: int = 0
    task: str = "classify"

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("epochs and batch size must be at least 1")
        if not self.lr > 0:
            raise ConfigError(f"learning rate must be positive, not {self.lr}")
        if self.optimizer not in ("sgd", "adam"):
            raise ConfigError(f"optimizer must be sgd or adam, not {self.optimizer!r}")


@dataclass(frozen=True)
class TrainResult:
    """Wall-clock training time (s), the last batch's loss and the task's validation scores
    (none without validation)."""

    seconds: float
    final_loss: float
    val_scores: dict[str, float]

    @property
    def val_top1(self) -> float:
        """A classifier's validation top-1 (NaN for other tasks or without validation)."""
        return self.val_scores.get("top1", float("nan"))


def shift_batch(x: torch.Tensor, shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each sample by a random integer offset in [-shift, shift] (zero fill): images in
    both directions, 1-D signals (N, C, L) along L; vectors are left as they are."""
    if shift <= 0 or x.dim() not in (3, 4):
        return x
    if x.dim() == 3:
        n, _, length = x.shape
        padded = nn.functional.pad(x, (shift, shift))
        dx = torch.randint(0, 2 * shift + 1, (n,), generator=gen, device=gen.device).tolist()
        return torch.stack([padded[i, :, dx[i]:dx[i] + length] for i in range(n)])
    n, _, h, w = x.shape
    padded = nn.functional.pad(x, (shift, shift, shift, shift))
    dy = torch.randint(0, 2 * shift + 1, (n,), generator=gen, device=gen.device).tolist()
    dx = torch.randint(0, 2 * shift + 1, (n,), generator=gen, device=gen.device).tolist()
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


def warmup_cosine(step: int, total: int, warmup: float = 0.15) -> float:
    """Learning-rate factor: linear warm-up over the first `warmup` of the steps, then cosine
    decay to zero; defined for any number of steps, even one."""
    w = max(1, int(total * warmup))
    if step < w:
        return (step + 1) / w
    return 0.5 * (1 + math.cos(math.pi * (step - w) / max(1, total - w)))


def fit(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    cfg: TrainConfig,
    val: tuple[np.ndarray, np.ndarray] | None = None,
    on_step: Progress | None = None,
) -> TrainResult:
    """Train `model` in place on (x, y); deterministic for `cfg.seed` on one thread count."""
    if len(x) == 0:
        raise ConfigError("the training split is empty; use a larger dataset")
    with torch.random.fork_rng(devices=compute.rng_devices()):  # seeded here, the caller's random state kept
        torch.manual_seed(cfg.seed)
        return _fit(model, x, y, cfg, val, on_step)


def _fit(model: nn.Module, x: np.ndarray, y: np.ndarray, cfg: TrainConfig,
         val: tuple[np.ndarray, np.ndarray] | None, on_step: Progress | None) -> TrainResult:
    from . import data_parallel

    t0 = time.perf_counter()
    model.train()
    with compute.computing(model), data_parallel.synced_batchnorm(model):
        params = [p for p in model.parameters() if p.requires_grad]
        if cfg.optimizer == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(
                params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
        else:
            opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        total = (len(x) + cfg.batch_size - 1) // cfg.batch_size * cfg.epochs
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: warmup_cosine(i, total))
        loss_val = _epochs(data_parallel.wrap(model), (x, y), cfg, (opt, sched, params, total), on_step)
        data_parallel.agree(model)
    model.eval()
    val_scores = scores(model, *val, cfg.task) if val is not None and len(val[0]) else {}
    return TrainResult(time.perf_counter() - t0, loss_val, val_scores)


def _epochs(net: nn.Module, data: tuple[np.ndarray, np.ndarray], cfg: TrainConfig, optim: tuple,
            on_step: Progress | None) -> float:
    """Every epoch's steps; the last batch's loss. The batches are drawn and shifted on the CPU
    and moved to the compute device; under torchrun each rank takes its share of each batch (the
    shuffles and shifts are drawn for the whole batch on every rank)."""
    from . import data_parallel

    opt, sched, params, total = optim
    gen = torch.Generator().manual_seed(cfg.seed)
    xt, yt = torch.from_numpy(data[0]), torch.from_numpy(data[1])
    loss_of, shift = task_loss(cfg.task), cfg.augment_shift if cfg.task in ("classify", "reconstruct") else 0
    loss_val, step = float("nan"), 0
    for _ in range(cfg.epochs):
        order = torch.randperm(len(xt), generator=gen, device="cpu")
        for i in range(0, len(xt), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            part = data_parallel.shard(len(idx))
            xb, yb = compute.to_device(shift_batch(xt[idx], shift, gen)[part.positions], yt[idx][part.positions])
            out = net(xb)
            loss = loss_of(out, xb, yb)
            opt.zero_grad(set_to_none=True)
            data_parallel.local_loss(loss, part, out).backward()
            nn.utils.clip_grad_norm_(params, 5.0)
            opt.step()
            sched.step()
            step += 1
            loss_val = data_parallel.global_means([loss.item() if not part.empty else 0.0], part)[0]
            if on_step:
                on_step(step, total, loss_val)
    return loss_val
