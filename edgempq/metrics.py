"""A model's outputs over an array of samples, their scores for its task, and the task's loss."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from .tasks import get_task


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits of `model` (in eval mode for the call; its mode is restored) for every sample."""
    was_training = model.training
    model.eval()
    try:
        out = [model(torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size]))).numpy()
               for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def topk(logits: np.ndarray, y: np.ndarray, k: int = 1) -> float:
    """Fraction of samples whose label is among the k highest logits."""
    if len(y) == 0:
        return float("nan")
    k = min(k, logits.shape[1])
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]  # ties to the lower class, as argmax
    return float(np.mean(np.any(top == y[:, None], axis=1)))


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> float:
    """Top-1 accuracy of `model` on (x, y), as a fraction in [0, 1] (NaN for no samples)."""
    return topk(predict(model, x, batch_size), y, 1)


def scores(model: nn.Module, x: np.ndarray, y: np.ndarray, task: str = "classify") -> dict[str, float]:
    """The task's metrics of `model` on (x, y) (see edgempq.tasks)."""
    t = get_task(task)
    return t.scores(predict(model, x), t.target(x, y))


def target_loss(out: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """The loss of outputs against targets, by the targets' kind: cross-entropy for integer
    class labels (over axis 1, so per pixel for N x H x W labels), squared error for values."""
    if not target.dtype.is_floating_point:
        return nn.functional.cross_entropy(out, target.long(), reduction=reduction)
    return nn.functional.mse_loss(out, target.reshape(out.shape).to(out.dtype), reduction=reduction)


def task_loss(task: str) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """The loss a task trains with, as f(outputs, inputs, targets), a mean over the batch:
    cross-entropy for classes (per pixel for `dense`), MSE for values (against the input
    itself for `reconstruct`)."""
    get_task(task)
    if task == "reconstruct":
        return lambda out, x, y: target_loss(out, x)
    return lambda out, x, y: target_loss(out, y)
