"""The sensitivity-method protocol, its registry, and what the methods share: the data they
see, their parameters from `key=value` text, the features of each layer, and the papers'
"maximise Σ coefficient × bits" objective written as per-(layer, precision) penalties."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from ..compute import rng_devices
from ..errors import ConfigError, DataError
from ..params import parse_params
from ..progress import Progress
from ..registry import Registry
from ..schema import Layer, Precision, Sensitivity
from ..standing import with_standing

REF_BITS = 16  # bits at which a layer counts as lossless in the bit objectives (f16 / f32 too)


@dataclass(frozen=True)
class SensData:
    """The samples a method may look at (the calibration split), their targets, their id and
    the model's task (edgempq.tasks): the targets are class labels (classify; per pixel for
    dense), values (regress) or, for reconstruct, the inputs themselves."""

    inputs: np.ndarray
    labels: np.ndarray
    data_id: str
    task: str = "classify"

    def __post_init__(self) -> None:
        if len(self.inputs) == 0:
            raise DataError("sensitivity got no samples; give data with a non-empty calibration split")
        if len(self.inputs) != len(self.labels):
            raise DataError(f"sensitivity got {len(self.inputs)} samples but {len(self.labels)} labels")

    def batch(self, n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
        """`n` samples drawn at random (seeded) without replacement, as tensors; all of them
        when there are fewer. (Splits are stored in index order, often sorted by class.)"""
        idx = np.sort(np.random.default_rng(seed).permutation(len(self.inputs))[:n])
        x = torch.from_numpy(np.ascontiguousarray(self.inputs[idx]))
        return x, (x if self.task == "reconstruct" else _target_tensor(self.labels[idx]))

    def targets(self) -> Tensor:
        """Every sample's target as a tensor (labels as int64, values as float32)."""
        if self.task == "reconstruct":
            return torch.from_numpy(np.ascontiguousarray(self.inputs))
        return _target_tensor(self.labels)

    def require_classes(self, method: str) -> None:
        """Refuse a task without one class label a sample, naming the methods that work."""
        if self.task != "classify":
            raise ConfigError(f"{method} scores layers by class (it needs one class label a sample), but the "
                              f"model's task is {self.task}; use ompq, csmpq (documents=samples, its default), "
                              "hawq, measured, clado or limpq")


def _target_tensor(y: np.ndarray) -> Tensor:
    t = torch.from_numpy(np.ascontiguousarray(y))
    return t.long() if not t.dtype.is_floating_point else t.float()


class Method:
    """A sensitivity method: `name`, a frozen `Params` with the paper's defaults, and
    `compute`, which never changes the model, scores every (layer, precision) it is given with a
    finite penalty (lower is better) and is deterministic for a seed. `monotone_exception` says
    why, if at all, a higher precision can score worse than a lower one of the same kind."""

    name: ClassVar[str]
    Params: ClassVar[type]
    monotone_exception: ClassVar[str | None] = None

    def __init__(self, params: Any = None) -> None:
        self.params = params if params is not None else self.Params()

    def compute(self, model: nn.Module, layers: list[Layer], precisions: dict[str, list[Precision]],
                data: SensData, on_step: Progress | None = None) -> Sensitivity:  # pragma: no cover
        """Score every (layer, precision) in `precisions` for `model` on `data`."""
        raise NotImplementedError


METHODS: Registry[type[Method]] = Registry("sensitivity method")


def method_names() -> list[str]:
    """The registered methods' names, sorted."""
    return METHODS.names()


def get_method(name: str) -> type[Method]:
    """The method class registered as `name`; an unknown name is a ConfigError listing the known ones."""
    return METHODS.get(name)


@dataclass(frozen=True)
class RunOptions:
    """How `compute` runs a method: its parameters (`key=value` strings or a dict; None: the
    paper's defaults), the model hash recorded in the result, and a progress callback."""

    params: list[str] | dict[str, Any] | None = None
    model_hash: str | None = None
    on_step: Progress | None = None


def compute(name: str, model: nn.Module, layers: list[Layer], precisions: dict[str, list[Precision]],
            data: SensData, options: RunOptions | None = None) -> Sensitivity:
    """Run method `name` on an eval-mode copy of `model` (the caller's model is not touched)."""
    opts = options if options is not None else RunOptions()
    cls = get_method(name)
    unknown = [n for n in precisions if n not in {la.name for la in layers if la.searchable}]
    if unknown:
        raise ConfigError(f"precisions name layer(s) {', '.join(unknown)} that are not searchable layers")
    method = cls(parse_params(cls, opts.params or {}))
    work = copy.deepcopy(model).eval()
    with torch.random.fork_rng(devices=rng_devices()):  # seeded here, the caller's random state left as it was
        torch.manual_seed(getattr(method.params, "seed", 0))
        sens = method.compute(work, layers, precisions, data, opts.on_step)
    return dataclasses.replace(sens, model_hash=opts.model_hash, data_id=data.data_id,
                               params=dataclasses.asdict(method.params), info=with_standing(name, sens.info))


def searchable(layers: list[Layer], precisions: dict[str, list[Precision]]) -> list[Layer]:
    """The layers to score, in model order."""
    return [la for la in layers if la.searchable and la.name in precisions]


@dataclass(frozen=True)
class Objective:
    """How a per-layer coefficient becomes penalties: `noise` weighs each precision's relative
    error (`noise.relative_noise`, given as `errors`), `bits` the bits it loses (the papers'
    linear objective); activations count with `act_share`."""

    kind: str
    act_share: float
    errors: dict | None = None

    def penalties(self, precisions: dict[str, list[Precision]], coefficient: dict[str, float]) -> dict:
        """The penalty of every (layer, precision)."""
        if self.kind == "noise":
            return noise_penalties(precisions, coefficient, self.errors or {}, self.act_share)
        return bit_penalties(precisions, coefficient, self.act_share)


OBJECTIVES = ("noise", "bits")


def check_objective(method: str, objective: str) -> None:
    """Refuse an objective that is not noise or bits, naming the method."""
    if objective not in OBJECTIVES:
        raise ConfigError(f"{method} objective must be noise or bits, not {objective!r}")


def method_objective(kind: str, act_share: float, model: nn.Module, layers: list[Layer],
                     precisions: dict[str, list[Precision]], x: Tensor) -> Objective:
    """The Objective of a bit-objective method; `noise` measures the errors on batch `x`."""
    from .noise import relative_noise

    return Objective(kind, act_share, relative_noise(model, layers, precisions, x) if kind == "noise" else None)


def unit_sensitivity(name: str, unit_list: list, coefficient: np.ndarray, precisions: dict[str, list[Precision]],
                     objective: Objective, info: dict) -> Sensitivity:
    """The Sensitivity of per-unit coefficients under `objective`: a group's coefficient is split
    over its layers, so a shared decision counts it once; groups go to the solver."""
    per_layer = {}
    for u, c in zip(unit_list, coefficient, strict=True):
        per_layer |= {layer: float(c) / len(u.layers) for layer in u.layers}
    return Sensitivity(name, objective.penalties(precisions, per_layer),
                       groups=tuple(u.layers for u in unit_list if len(u.layers) > 1), info=info)


def noise_penalties(precisions: dict[str, list[Precision]], coefficient: dict[str, float], noise: dict,
                    act_share: float = 1.0, normalise: bool = True) -> dict[tuple[str, str], float]:
    """c_l · (weight error + act_share · activation error) of each (layer, precision), the errors
    relative to the layer's own weights and input (`noise.relative_noise`); coefficients scaled
    so the largest is 1 when `normalise`."""
    top = (max((abs(c) for c in coefficient.values()), default=0.0) or 1.0) if normalise else 1.0
    return {(name, str(p)): coefficient[name] / top * (noise[(name, str(p))][0] + act_share * noise[(name, str(p))][1])
            for name, ps in precisions.items() for p in ps}


def effective_bits(p: Precision) -> tuple[int, int]:
    """(weight, activation) bits in the bit objectives; float layers count as lossless."""
    if p.is_float:
        return REF_BITS, REF_BITS
    return min(p.weight_bits, REF_BITS), min(p.act_bits, REF_BITS)


def bit_penalties(precisions: dict[str, list[Precision]], coefficient: dict[str, float],
                  act_share: float = 0.0) -> dict[tuple[str, str], float]:
    """The papers' "maximise Σ c_l · bits_l" as penalties c_l · (REF − bits): minimising them
    is the same problem. Weight bits count fully, activation bits with `act_share` (the papers
    fix activation bits, so 0 by default). Coefficients are scaled so the largest is 1."""
    top = max((abs(c) for c in coefficient.values()), default=0.0) or 1.0
    out = {}
    for name, ps in precisions.items():
        for p in ps:
            wb, ab = effective_bits(p)
            out[(name, str(p))] = coefficient[name] / top * ((REF_BITS - wb) + act_share * (REF_BITS - ab))
    return out
