"""The baseline every peer toolkit has: quantize one layer at one precision, keep every other
layer float, calibrate as PTQ does, and record how much the loss on the sensitivity samples
rises. Direct and honest, and L × P calibrated forward passes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
from torch import nn

from ..compute import place, to_device
from ..distributed import gather_items, share
from ..errors import ConfigError
from ..metrics import target_loss
from ..progress import Progress
from ..quant import DEFAULT_WEIGHTS, QuantConfig, apply, quantize
from ..schema import Layer, Policy, Precision, Sensitivity
from .base import METHODS, Method, SensData, searchable

if TYPE_CHECKING:
    from ..quant.weights.base import WeightAlgorithm


class LossParams(Protocol):
    """The parameters every loss-measuring method has (`Measured.Params`, `Clado.Params`)."""

    samples: int
    batch_size: int
    loss: str
    ptq: str
    ptq_params: str
    bias_correction: bool
    act_range: str
    seed: int


def summed_loss(out: torch.Tensor, y: torch.Tensor, reference: torch.Tensor | None = None) -> float:
    """Summed loss of a batch against its targets (cross-entropy for class labels, squared error
    for values); with `reference` outputs, the summed KL to them (squared distance for values)."""
    if reference is None:
        return float(target_loss(out, y, reduction="sum"))
    if y.dtype.is_floating_point:
        return float(nn.functional.mse_loss(out, reference, reduction="sum"))
    return float(nn.functional.kl_div(nn.functional.log_softmax(out, dim=1),
                                      nn.functional.log_softmax(reference, dim=1), reduction="sum", log_target=True))


@torch.no_grad()
def mean_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
              reference: torch.Tensor | None = None) -> float:
    """Mean loss over (x, y) (see `summed_loss`); with `reference` outputs, the mean divergence from them."""
    total = 0.0
    for i in range(0, len(x), batch_size):
        ref = None if reference is None else reference[i:i + batch_size]
        total += summed_loss(model(x[i:i + batch_size]), y[i:i + batch_size], ref)
    return total / len(x)


def check_loss_params(method: str, params: LossParams) -> None:
    """Check the parameters the loss-measuring methods share; `ptq` must name a PTQ algorithm
    that takes `ptq_params`, and `act_range` a range method."""
    from ..quant.quantizers import RANGE_METHODS

    if params.samples < 1 or params.batch_size < 1:
        raise ConfigError(f"{method} needs samples >= 1 and batch_size >= 1")
    if params.loss not in ("ce", "kl"):
        raise ConfigError(f"{method} loss must be ce or kl, not {params.loss!r}")
    if params.act_range not in RANGE_METHODS:
        raise ConfigError(f"parameter act_range of method {method} must be one of {', '.join(RANGE_METHODS)}, "
                          f"not {params.act_range!r}")
    weight_algorithm(params.ptq, params.ptq_params)


def weight_algorithm(ptq: str, ptq_params: str) -> WeightAlgorithm:
    """The algorithm `ptq` with `ptq_params` (comma-separated key=value, as deploy's --ptq-param)."""
    from ..params import split_pairs
    from ..quant.weights import algorithm

    if not isinstance(ptq_params, str):
        raise ConfigError(f"ptq_params must be text such as 'iters=200,granularity=block', not {ptq_params!r}")
    return algorithm(ptq, split_pairs(ptq_params))


def ptq_config(params: LossParams) -> QuantConfig:
    """The PTQ a loss-measuring method quantizes its layers with: deploy's algorithm with its
    parameters, bias correction and activation ranges."""
    from dataclasses import asdict

    weights = asdict(weight_algorithm(params.ptq, params.ptq_params).params)
    return QuantConfig(weights=params.ptq, weight_params=weights, bias_correction=params.bias_correction,
                       act_method=params.act_range, batch_size=params.batch_size, seed=params.seed)


@METHODS.register("measured")
class Measured(Method):
    """Single-layer quantization loss increase, the layer quantized by the PTQ that deploy will
    use (`ptq`, `bias_correction`). The increase is measured, so for two close precisions
    (w8a8 vs w8a16) calibration noise can put the higher one a hair above."""

    name = "measured"
    monotone_exception = "measured loss changes carry calibration noise between close precisions"

    @dataclass(frozen=True)
    class Params:
        samples: int = 256
        batch_size: int = 64
        # kl: the divergence from the float model's outputs, never below 0; with ce (the loss
        # against the labels) a near-lossless width's change is noise of either sign, and its
        # policies on MNIST ResNet-8 fell below the random policies' median at 6 of 8 budgets
        loss: str = "kl"
        ptq: str = DEFAULT_WEIGHTS  # the weight algorithm (edgempq deploy --ptq)
        ptq_params: str = ""  # its parameters, e.g. iters=200,granularity=block (deploy --ptq-param)
        bias_correction: bool = True  # as deploy does by default
        act_range: str = "minmax"  # or percentile, mse (edgempq deploy --act-range)
        seed: int = 0

        def __post_init__(self) -> None:
            check_loss_params("measured", self)

    def compute(self, model: nn.Module, layers: list[Layer], precisions: dict[str, list[Precision]],
                data: SensData, on_step: Progress | None = None) -> Sensitivity:
        """Quantize each layer alone at each precision and record how much the loss rises."""
        p = self.params
        x, y = data.batch(p.samples, p.seed)
        cfg = ptq_config(p)
        ref_model = place(apply(model, Policy({}), cfg))  # BatchNorm folded as in every quantized copy
        xd, yd = to_device(x, y)  # the PTQ runs on the CPU, the losses on the compute device
        reference = None
        if p.loss == "kl":
            with torch.no_grad():
                reference = torch.cat([ref_model(xd[i:i + p.batch_size]) for i in range(0, len(x), p.batch_size)])
        base = mean_loss(ref_model, xd, yd, p.batch_size, reference)
        jobs = [(la, prec) for la in searchable(layers, precisions) for prec in precisions[la.name]]
        mine = {}  # under torchrun, this rank's share of the (layer, precision) runs
        todo = share(len(jobs))
        for k, i in enumerate(todo):
            la, prec = jobs[i]
            if on_step:
                on_step(k, len(todo), f"{la.name} {prec}")
            q, _ = quantize(model, Policy({la.name: prec}), x.numpy(), cfg)
            mine[i] = mean_loss(place(q), xd, yd, p.batch_size, reference)
        if on_step:
            on_step(len(todo), len(todo), "done")
        losses = gather_items(len(jobs), mine)
        penalties = {(la.name, str(prec)): loss - base for (la, prec), loss in zip(jobs, losses, strict=True)}
        raw = {f"{la.name} {prec}": loss for (la, prec), loss in zip(jobs, losses, strict=True)}
        return Sensitivity(self.name, penalties, info={"float_loss": base, "loss": raw})
