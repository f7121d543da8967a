"""OMPQ (Ma et al., AAAI 2023): layers whose features are orthogonal to the rest of the
network matter more.

On one unlabelled batch of the float model: the linear CKA between every two layers' features,
γ_i = Σ_{j≠i} CKA(i, j), θ_i = exp(−β γ_i), and the coefficient of layer i = the mean of θ over
layer i and every later layer (a layer's precision is taken to affect all that follows). The
paper maximises Σ coefficient × weight bits (`objective=bits`: `bit_penalties` writes that as
penalties the ILP minimises, so the solver solves the paper's objective exactly, not SLSQP +
rounding). By default (`objective=noise`) the coefficient weighs each precision's relative
error on the layer's weights and input (`noise`) instead: counting bits linearly sends the
least important layers to 2 bits whatever they hold, and a 2-bit depthwise conv broke
MNIST MobileNet (92 % against 96 % for random policies at the same size)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..progress import Progress
from ..schema import Layer, Precision, Sensitivity
from .base import METHODS, Method, SensData, check_objective, method_objective, searchable, unit_sensitivity
from .features import features, units


def centered_gram(x: Tensor) -> Tensor:
    """H K H for K = X Xᵀ (X: n samples × features), H the centring matrix, computed as
    (H X)(H X)ᵀ with constant columns set to exact zeros (H's 1/n is not exact in binary, and
    the rounding residue of a constant feature was normalised up by CKA); float64."""
    x = x.reshape(x.shape[0], -1).double()
    constant = (x == x[:1]).all(0)
    x = (x - x.mean(0, keepdim=True)).masked_fill(constant, 0.0)
    return x @ x.T


def cka(gram_a: Tensor, gram_b: Tensor) -> float:
    """Linear CKA of two centred Gram matrices, in [0, 1]; 0 when either feature is constant."""
    na, nb = torch.linalg.norm(gram_a), torch.linalg.norm(gram_b)
    if na == 0 or nb == 0:
        return 0.0
    return float((gram_a * gram_b).sum() / (na * nb))


def cka_matrix(feats: list[Tensor]) -> np.ndarray:
    """The symmetric matrix of linear CKA between every two features (1 on the diagonal)."""
    grams = [centered_gram(f) for f in feats]
    n = len(grams)
    m = np.eye(n)
    for i in range(n):
        for j in range(i + 1, n):
            m[i, j] = m[j, i] = cka(grams[i], grams[j])
    return m


def coefficients(orm: np.ndarray, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """(θ, suffix-averaged coefficients) from the CKA matrix, in layer order."""
    gamma = orm.sum(axis=1) - np.diag(orm)
    # exp(-β(γ - min γ)): θ up to one common factor (the penalties are normalised anyway), which
    # keeps the largest θ at 1 instead of underflowing to 0 for β = 100 and γ ≈ 10
    theta = np.exp(-beta * (gamma - gamma.min()))
    suffix = np.cumsum(theta[::-1])[::-1] / np.arange(len(theta), 0, -1)
    return theta, suffix


@METHODS.register("ompq")
class OMPQ(Method):
    """OMPQ orthogonality. `grouping=residual` shares one decision between a block's last conv
    and its downsample conv, as the paper's ResNet code does; `act_share` weighs the
    activations' error (or bits) against the weights' (0: the paper, which fixes them)."""

    name = "ompq"

    @dataclass(frozen=True)
    class Params:
        # the paper's runs use 1e-9 to 100 (its README's ResNet-18 QAT value is 10); at 10 every
        # layer but the last gets θ ≈ 0 on the MNIST nets, and the coefficients only count depth
        beta: float = 1.0
        batch_size: int = 32  # one batch, as the paper
        grouping: str = "none"
        objective: str = "noise"  # or bits, the paper's
        act_share: float = 1.0
        seed: int = 0

        def __post_init__(self) -> None:
            if self.beta < 0 or self.batch_size < 2 or self.act_share < 0:
                raise ConfigError("ompq needs beta >= 0, batch_size >= 2 and act_share >= 0")
            check_objective("ompq", self.objective)

    def compute(self, model: nn.Module, layers: list[Layer], precisions: dict[str, list[Precision]],
                data: SensData, on_step: Progress | None = None) -> Sensitivity:
        """Score each layer (or group) by its features' orthogonality on one batch, as bit-objective penalties."""
        p = self.params
        todo = searchable(layers, precisions)
        gm, unit_list = units(model, todo, p.grouping)
        x, _ = data.batch(p.batch_size, p.seed)
        if on_step:
            on_step(0, 2, "features")
        feats = features(gm, unit_list, x)
        if on_step:
            on_step(1, 2, "CKA")
        orm = cka_matrix(feats)
        theta, coef = coefficients(orm, p.beta)
        if on_step:
            on_step(2, 2, "done")
        info = {"units": [list(u.layers) for u in unit_list], "theta": theta.tolist(), "coefficient": coef.tolist(),
                "gamma": (orm.sum(axis=1) - 1).tolist()}
        objective = method_objective(p.objective, p.act_share, model, todo, precisions, x)
        return unit_sensitivity(self.name, unit_list, coef, precisions, objective, info)
