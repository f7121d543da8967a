"""Logits and top-k accuracy of a model over an array of samples."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


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
