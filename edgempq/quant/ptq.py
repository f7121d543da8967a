"""Post-training quantization of a policy: apply it to a copy of the model (fake-quantized
layers), calibrate the activation ranges, choose every integer layer's weights with the
configured algorithm (`quant.weights`) layer by layer from the inputs it sees, optionally
correct the biases, and calibrate the ranges again for the final weights."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..layers import layer_kind
from ..schema import Policy
from .fold import fold_batchnorm
from .modules import QUANT_TYPES, QuantConfig, quantize_module
from .quantizers import ActQuantizer, WeightQuantizer


def apply(model: nn.Module, policy: Policy, cfg: QuantConfig | None = None) -> nn.Module:
    """A fake-quantized copy of `model` in eval mode with BatchNorm folded; the input model is
    never changed. Activation ranges still need `calibrate`."""
    cfg = cfg or QuantConfig()
    modules = dict(model.named_modules())
    for name in policy.precisions:
        m = modules.get(name)
        if m is None:
            raise ConfigError(f"policy names layer {name!r}, which the model does not have")
        if not isinstance(m, nn.Conv2d | nn.Linear):
            raise ConfigError(
                f"policy layer {name!r} is a {type(m).__name__}; only Conv2d and Linear layers take a precision"
            )
        _, reason = layer_kind(m)
        if reason:
            raise ConfigError(f"policy sets a precision for layer {name!r}, which stays float: {reason}")
    q = copy.deepcopy(model).eval()
    if cfg.fold_bn:
        fold_batchnorm(q)
    for name, precision in policy.precisions.items():
        quantize_module(q.get_submodule(name), precision, cfg)
    return q


def quantizers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, ActQuantizer | WeightQuantizer)]


@torch.no_grad()
def calibrate(qmodel: nn.Module, batches: Iterable[Tensor | np.ndarray]) -> nn.Module:
    """PTQ: observe activation ranges over the calibration batches, then fix scale and zero
    point; min-max weight grids are recomputed from the current weights (grids a PTQ algorithm
    fixed, and LSQ steps, are kept). Returns `qmodel`."""
    acts = [m for m in qmodel.modules() if isinstance(m, ActQuantizer)]
    was_training = qmodel.training
    qmodel.eval()
    for m in acts:
        m.start_observing()
    seen = 0
    try:
        for xb in batches:
            qmodel(torch.as_tensor(xb, dtype=torch.float32))
            seen += 1
    finally:
        for m in acts:
            m.finish_observing()
        qmodel.train(was_training)
    if seen == 0:
        raise ConfigError("calibration got no data; give a non-empty calibration split")
    for m in qmodel.modules():
        wq = getattr(m, "weight_quant", None) if isinstance(m, QUANT_TYPES) else None
        if wq is not None and not wq.learnable and not wq.fixed:
            m.weight_quant.calibrate(m.weight)
    return qmodel


def batches(x: np.ndarray, batch_size: int) -> Iterable[Tensor]:
    for i in range(0, len(x), batch_size):
        yield torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size]))


@dataclass(frozen=True)
class PTQReport:
    """How a policy was quantized and what it measured: per layer, the relative output error
    of min-max rounding and of the algorithm's (E||ŵx̂ - wx||² / E||wx||² on the calibration
    inputs), the bias shift, and anything that did not go as configured (`notes`)."""

    weights: str
    params: dict[str, Any]
    bias_correction: bool
    sequential: bool
    seconds: float
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def quantize(model: nn.Module, policy: Policy, x: np.ndarray, cfg: QuantConfig | None = None,
             sequential: bool = True, on_step: Callable[[int, int, str], None] | None = None,
             ) -> tuple[nn.Module, PTQReport]:
    """The policy's fake-quantized copy of `model`, post-training quantized on the samples `x`
    with `cfg`. `sequential=False` quantizes each layer from the float model's inputs, as if
    it were the only quantized layer (for methods that swap layers into the float model)."""
    from .stream import Walk
    from .weights import algorithm

    cfg = cfg or QuantConfig()
    t0 = time.perf_counter()
    algo = algorithm(cfg.weights, cfg.weight_params)
    q = apply(model, policy, cfg)
    xs = list(batches(x, cfg.batch_size))
    calibrate(q, xs)
    ints = tuple(n for n, p in policy.precisions.items() if not p.is_float)
    layers: dict[str, dict[str, Any]] = {n: {} for n in ints}
    notes: list[str] = []
    if ints and (algo.needs_walk or cfg.bias_correction):
        from .bias import float_statistics

        fmodel = apply(model, Policy({}), cfg)
        spec = Walk(ints, algo.granularity, algo.need_float, sequential)
        wx = [torch.from_numpy(np.ascontiguousarray(b)) for b in walk_samples(fmodel, x, spec, cfg, notes)]
        run = _WalkRun(fmodel, q, wx, notes, layers, on_step, cfg.seed)
        stats = float_statistics(fmodel, wx, ints) if cfg.bias_correction else None
        joint = cfg.bias_correction and algo.needs_walk and algo.granularity == "layer"
        if algo.needs_walk:
            run.walk(spec, algo, stats if joint else None)
        if cfg.bias_correction and not joint:
            run.walk(Walk(ints, "layer", False, sequential), None, stats)
        calibrate(q, xs)  # the ranges the final weights produce
    return q, PTQReport(algo.name, asdict(algo.params), cfg.bias_correction, sequential,
                        time.perf_counter() - t0, layers, tuple(notes))


MEMORY_SHARE = 0.4  # of the memory available when the walk starts, for the activations it keeps


def walk_samples(fmodel: nn.Module, x: np.ndarray, spec, cfg: QuantConfig, notes: list[str]) -> list[np.ndarray]:
    """The calibration batches the layer walk runs on: every sample, or as many (spread evenly)
    as the activations the walk keeps at once fit in MEMORY_SHARE of the available memory."""
    import psutil

    from ..data import spread
    from .stream import sample_bytes

    per = sample_bytes(fmodel, torch.from_numpy(np.ascontiguousarray(x[:1])), spec)
    fit = int(MEMORY_SHARE * psutil.virtual_memory().available // max(per, 1))
    if fit < len(x):
        notes.append(f"the weights were chosen from {max(fit, 1)} of the {len(x)} calibration samples: the walk "
                     f"keeps {per / 2**20:.1f} MB of activations a sample and the rest would not fit in memory")
        x = x[spread(len(x), max(fit, 1))]
    return [x[i:i + cfg.batch_size] for i in range(0, len(x), cfg.batch_size)]


@dataclass
class _WalkRun:
    """One quantization's walks over the layers: what they share, and where results go."""

    fmodel: nn.Module
    qmodel: nn.Module
    xs: list[Tensor]
    notes: list[str]
    layers: dict[str, dict[str, Any]]
    on_step: Callable[[int, int, str], None] | None
    seed: int

    def walk(self, spec, algo, stats) -> None:
        """Quantize each unit with `algo` (if any), then correct its bias towards `stats` (if any)."""
        from .bias import correct_bias
        from .stream import walk

        done, what = 0, algo.name if algo else "bias correction"
        for unit in walk(self.fmodel, self.qmodel, self.xs, spec, self.notes):
            if self.on_step:
                self.on_step(done, len(spec.layers), f"{what}: {', '.join(unit.layers)}")
            if algo is not None:
                for name, info in algo.quantize(unit, self.qmodel, self.seed).items():
                    self.layers[name].update(info)
            if stats is not None:
                for name, info in correct_bias(unit, self.qmodel, stats).items():
                    self.layers[name].update(info)
            done += len(unit.layers)
        if self.on_step:
            self.on_step(done, len(spec.layers), "done")
