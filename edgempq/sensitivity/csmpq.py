"""CSMPQ (Wang et al., arXiv 2212.10220): class separability of each layer's features, scored
with TF-IDF.

Each layer's feature map is ReLU'd and average-pooled to A (channels × documents). A channel
(term) "occurs" in a document when its activation reaches the channel's mean over the
documents; its score is its mean term frequency where it occurs times its idf, and the layer's
TF-IDF is the mean channel score. As the released code, documents are the samples of one batch
(labels unused); `documents=classes` pools the samples of each class into one document, the
class separability the paper's title promises.

Direction: `mode=qat` (the paper's QAT branch and its abstract) gives more bits to layers with
a higher TF-IDF (θ = TF-IDF); `mode=ptq` (its PTQ branch) uses θ = exp(−β TF-IDF), which gives
fewer. The objective maximises Σ θ × weight bits, written as penalties for the ILP."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..progress import Progress
from ..schema import Layer, Precision, Sensitivity
from .base import METHODS, Method, SensData, check_objective, method_objective, searchable, unit_sensitivity
from .features import features, units


def pooled(feat: Tensor) -> np.ndarray:
    """ReLU then global average pooling: channels × samples (float64)."""
    f = torch.relu(feat).double()
    if f.dim() > 2:
        f = f.flatten(2).mean(2)
    return f.T.numpy()


def tfidf(a: np.ndarray, coe: float | None = None) -> tuple[float, np.ndarray]:
    """Layer TF-IDF and the per-channel scores of a (channels × documents) matrix ≥ 0.

    A document whose activations are all zero has no term frequencies (0, not 0/0)."""
    c, n = a.shape
    kappa = 1.0 if coe is None else math.log(math.e * c / coe)
    totals = a.sum(axis=0, keepdims=True)
    tf = kappa * np.divide(a, totals, out=np.zeros_like(a), where=totals > 0)
    occurs = a >= a.mean(axis=1, keepdims=True)
    df = occurs.sum(axis=1)
    mean_tf = (tf * occurs).sum(axis=1) / (df + 1e-11)
    idf = np.log(n / (df + 1.0))
    scores = mean_tf * idf
    return float(scores.mean()), scores


def class_documents(a: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Channels × classes: the mean pooled activation of each class present in the batch."""
    classes = np.unique(labels)
    return np.stack([a[:, labels == k].mean(axis=1) for k in classes], axis=1)


@METHODS.register("csmpq")
class CSMPQ(Method):
    """CSMPQ TF-IDF class separability. In `qat` mode a negative TF-IDF (channels constant over
    the batch give idf < 0) is taken as 0: the layer's bits then do not move the objective,
    rather than being rewarded for having fewer."""

    name = "csmpq"

    @dataclass(frozen=True)
    class Params:
        mode: str = "qat"
        beta: float = 1.0  # ptq mode only; the paper's ResNet-18 PTQ value
        coe: float | None = None  # balance coefficient κ = log(e·C/coe); None: κ = 1, as the released scripts
        documents: str = "samples"
        batch_size: int = 32
        grouping: str = "none"
        objective: str = "noise"  # or bits, the paper's (see ompq)
        act_share: float = 1.0
        seed: int = 0

        def __post_init__(self) -> None:
            if self.mode not in ("qat", "ptq"):
                raise ConfigError(f"csmpq mode must be qat or ptq, not {self.mode!r}")
            if self.documents not in ("samples", "classes"):
                raise ConfigError(f"csmpq documents must be samples or classes, not {self.documents!r}")
            if self.batch_size < 2 or self.beta < 0 or self.act_share < 0 or (self.coe is not None and self.coe <= 0):
                raise ConfigError("csmpq needs batch_size >= 2, beta >= 0, act_share >= 0 and coe > 0")
            check_objective("csmpq", self.objective)

    def compute(self, model: nn.Module, layers: list[Layer], precisions: dict[str, list[Precision]],
                data: SensData, on_step: Progress | None = None) -> Sensitivity:
        """Score each layer's (or group's) features by TF-IDF on one batch, as bit-objective penalties."""
        p = self.params
        if p.documents == "classes":
            data.require_classes("csmpq with documents=classes (a document a class)")
        todo = searchable(layers, precisions)
        gm, unit_list = units(model, todo, p.grouping)
        x, y = data.batch(p.batch_size, p.seed)
        if p.documents == "classes" and len(np.unique(y.numpy())) < 2:
            raise ConfigError("csmpq documents=classes needs at least two classes in the batch; raise batch_size")
        scores = []
        for i, f in enumerate(features(gm, unit_list, x)):
            if on_step:
                on_step(i, len(unit_list), "tf-idf")
            a = pooled(f)
            if p.documents == "classes":
                a = class_documents(a, y.numpy())
            scores.append(tfidf(a, p.coe)[0])
        s = np.array(scores)
        theta = np.maximum(s, 0.0) if p.mode == "qat" else np.exp(-p.beta * s)
        info = {"units": [list(u.layers) for u in unit_list], "tfidf": s.tolist(), "theta": theta.tolist()}
        objective = method_objective(p.objective, p.act_share, model, todo, precisions, x)
        return unit_sensitivity(self.name, unit_list, theta, precisions, objective, info)
