"""Post-training quantization of a policy: apply it to a copy of the model (fake-quantized
layers), calibrate the activation ranges, choose every integer layer's weights with the
configured algorithm (`quant.weights`) layer by layer from the inputs it sees, optionally
correct the biases, and calibrate the ranges again for the final weights."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from ..compute import on_cpu
from ..errors import ConfigError
from ..layers import LAYER_TYPES, layer_kind
from ..schema import Policy
from .fold import fold_batchnorm
from .modules import QUANT_TYPES, QuantConfig, quantize_module
from .quantizers import ActQuantizer, WeightQuantizer

if TYPE_CHECKING:
    from .stream import Walk
    from .weights.base import WeightAlgorithm


@on_cpu()
def apply(model: nn.Module, policy: Policy, cfg: QuantConfig | None = None,
          example: Tensor | None = None) -> nn.Module:
    """A fake-quantized copy of `model` in eval mode with BatchNorm folded (`example`, a batch
    the model takes, lets a model torch.fx cannot trace be folded too); the input model is never
    changed. Activation ranges still need `calibrate`."""
    cfg = cfg or QuantConfig()
    modules = dict(model.named_modules())
    for name in policy.precisions:
        m = modules.get(name)
        if m is None:
            raise ConfigError(f"policy names layer {name!r}, which the model does not have")
        if not isinstance(m, LAYER_TYPES):
            raise ConfigError(
                f"policy layer {name!r} is a {type(m).__name__}; only Conv1d, Conv2d, ConvTranspose2d and Linear "
                "layers take a precision"
            )
        _, reason = layer_kind(m)
        if reason:
            raise ConfigError(f"policy sets a precision for layer {name!r}, which stays float: {reason}")
    q = copy.deepcopy(model).eval().to("cpu")  # the PTQ and the simulation run on the CPU (edgempq.compute)
    if cfg.fold_bn:
        fold_batchnorm(q, example)
    for name, precision in policy.precisions.items():
        quantize_module(q.get_submodule(name), precision, cfg)
    return q


def quantizers(model: nn.Module) -> list[nn.Module]:
    """Every activation and weight quantizer in `model`, in module order."""
    return [m for m in model.modules() if isinstance(m, ActQuantizer | WeightQuantizer)]


@torch.no_grad()
def calibrate(qmodel: nn.Module, batches: Iterable[Tensor | np.ndarray]) -> nn.Module:
    """PTQ: observe activation ranges over the calibration batches, then fix scale and zero
    point; min-max weight grids are recomputed from the current weights (grids a PTQ algorithm
    fixed, and LSQ steps, are kept). Returns `qmodel`."""
    return _observed(qmodel, qmodel, batches)


@torch.no_grad()
def calibrate_alone(qmodel: nn.Module, fmodel: nn.Module, batches: Iterable[Tensor | np.ndarray]) -> nn.Module:
    """`calibrate`, but each layer's input range observed in the float model `fmodel` (same
    module paths): the inputs the layer sees when it is the only one quantized."""
    return _observed(qmodel, fmodel, batches)


def _observed(qmodel: nn.Module, runner: nn.Module, batches: Iterable[Tensor | np.ndarray]) -> nn.Module:
    layers = {n: m for n, m in qmodel.named_modules() if isinstance(m, QUANT_TYPES) and m.act_quant is not None}
    acts = [m.act_quant for m in layers.values()]
    hooks = [] if runner is qmodel else [
        runner.get_submodule(n).register_forward_pre_hook(lambda _m, a, aq=m.act_quant: aq(a[0]))
        for n, m in layers.items()]
    was_training = qmodel.training
    qmodel.eval()
    for m in acts:
        m.start_observing()
    seen = 0
    try:
        for xb in batches:
            runner(torch.as_tensor(xb, dtype=torch.float32))
            seen += 1
    finally:
        for m in acts:
            m.finish_observing()
        for h in hooks:
            h.remove()
        qmodel.train(was_training)
    if seen == 0:
        raise ConfigError("calibration got no data; give a non-empty calibration split")
    for m in qmodel.modules():
        wq = getattr(m, "weight_quant", None) if isinstance(m, QUANT_TYPES) else None
        if wq is not None and not wq.learnable and not wq.fixed:
            wq.calibrate(m.weight)
    return qmodel


def batches(x: np.ndarray, batch_size: int) -> Iterator[Tensor]:
    """`x` in consecutive batches of `batch_size` samples (the last may be shorter), as tensors."""
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
        """The report as JSON-ready values (deploy.json's `ptq`)."""
        return asdict(self)


@on_cpu()
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
    x = np.ascontiguousarray(x, dtype=np.float32)
    if len(x) == 0:
        raise ConfigError("calibration got no data; give a non-empty calibration split")
    example = torch.from_numpy(x[:2])
    q, fmodel = apply(model, policy, cfg, example), apply(model, Policy({}), cfg, example)
    xs = list(batches(x, cfg.batch_size))
    recalibrate = (lambda: calibrate(q, xs)) if sequential else (lambda: calibrate_alone(q, fmodel, xs))
    recalibrate()
    ints = tuple(n for n, p in policy.precisions.items() if not p.is_float)
    layers: dict[str, dict[str, Any]] = {n: {} for n in ints}
    notes: list[str] = []
    if ints and (algo.needs_walk or cfg.bias_correction):
        from .bias import float_statistics

        spec = Walk(ints, algo.granularity, algo.need_float, sequential)
        wx = [torch.from_numpy(b) for b in walk_samples(fmodel, x, spec, cfg, notes)]
        run = _WalkRun(fmodel, q, wx, notes, layers, on_step, cfg.seed)
        stats = float_statistics(fmodel, wx, ints) if cfg.bias_correction else None
        joint = cfg.bias_correction and algo.needs_walk and algo.granularity == "layer"
        if algo.needs_walk:
            run.walk(spec, algo, stats if joint else None)
        if cfg.bias_correction and not joint:
            run.walk(Walk(ints, "layer", False, sequential), None, stats)
        recalibrate()  # the ranges the final weights produce
    notes += fit_biases(q, ints)
    return q, PTQReport(algo.name, asdict(algo.params), cfg.bias_correction, sequential,
                        time.perf_counter() - t0, layers, tuple(notes))


@torch.no_grad()
def fit_biases(q: nn.Module, names: tuple[str, ...]) -> list[str]:
    """Widen the weight step of every output channel whose bias would not fit its integer
    type (int32 beside 8-bit inputs) on input scale x weight step, as TFLite's converter does:
    a channel of near-zero weights after BatchNorm folding must keep its bias, not clamp it.
    Returns a note per layer changed."""
    from .quantizers import bias_qrange

    notes = []
    for name in names:
        m = q.get_submodule(name)
        scale = m.bias_scale()
        if scale is None or m.bias is None:
            continue
        need = m.bias.detach().abs() / (m.act_quant.step_value() * bias_qrange(m.precision.act_bits)[1]) * 1.001
        step = m.weight_quant.step_value().reshape(-1)
        wide = step < need
        if bool(wide.any()):
            m.weight_quant.set_grid(torch.where(wide, need, step))
            m.weight.data = m.weight_quant(m.weight).detach().clone()
            notes.append(f"layer {name}: the weight step of {int(wide.sum())} channel(s) was widened so that their "
                         "bias fits the integer kernel (near-zero weights)")
    return notes


MEMORY_SHARE = 0.4  # of the memory available when the walk starts, for the activations it keeps


def walk_samples(fmodel: nn.Module, x: np.ndarray, spec: Walk, cfg: QuantConfig, notes: list[str]) -> list[np.ndarray]:
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

    def walk(self, spec: Walk, algo: WeightAlgorithm | None,
             stats: dict[str, tuple[Tensor, float]] | None) -> None:
        """Quantize each unit with `algo` (if any), then correct its bias towards `stats` (if any)."""
        from .bias import correct_bias
        from .stream import walk

        done, what, widest = 0, algo.name if algo else "bias correction", 0
        for unit in walk(self.fmodel, self.qmodel, self.xs, spec, self.notes):
            widest = max(widest, len(unit.layers))
            if self.on_step:
                self.on_step(done, len(spec.layers), f"{what}: {', '.join(unit.layers)}")
            if algo is not None:
                for name, info in algo.quantize(unit, self.qmodel, self.seed).items():
                    if "note" in info:
                        self.notes.append(info.pop("note"))
                    self.layers[name].update(info)
            if stats is not None:
                for name, info in correct_bias(unit, self.qmodel, stats).items():
                    self.layers[name].update(info)
            done += len(unit.layers)
        if spec.granularity == "block" and widest == 1:
            self.notes.append("granularity=block found no block of two or more integer layers in this policy, "
                              "so each layer was reconstructed on its own, by mini-batches")
        if self.on_step:
            self.on_step(done, len(spec.layers), "done")
