"""A model and its data, loaded and checked against each other, and a policy's simulation:
the fake-quantized model (PTQ, optional QAT), its test accuracy and costs, or the one deploy
saved. Used by the pipeline's stages and by validate."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .data import Dataset, load_data
from .errors import ConfigError, DataError, ModelError
from .layers import policy_bops, policy_weight_bytes, trace
from .metrics import scores
from .models import LoadedModel, load_model
from .progress import Progress
from .quant import PTQReport, QuantConfig, apply, finetune, quantize
from .quant.qat import QAT_DEFAULTS
from .schema import Policy


def load_model_and_data(model_spec: str, data_spec: str | None, weights: str | Path | None = None,
                        input_shape: tuple[int, ...] | None = None,
                        task: str | None = None) -> tuple[LoadedModel, Dataset]:
    """The model and its data, preprocessed to the model's input; the targets checked against
    its outputs and the task (`task`, else the one they fit) set on the model."""
    model = load_model(model_spec, weights, input_shape)
    data_spec = data_spec or model.dataset
    if data_spec is None:
        raise DataError(f"model {model_spec} has no default dataset; give one with --data")
    ds = load_data(data_spec, model.input_shape)
    if model.input_shape is None:
        model.input_shape = ds.sample_shape
    check_fit(model, ds, task)
    return model, ds


def check_fit(model: LoadedModel, ds: Dataset, task: str | None = None) -> None:
    """The model takes the data's samples, its task fits (`task`, else the one its outputs and
    the targets fit; set on the model) and it has an output for every class label."""
    from .tasks import infer
    x = torch.from_numpy(ds.inputs(slice(0, 2)))
    try:
        with torch.no_grad():
            out = model.module(x)
    except Exception as e:  # noqa: BLE001 - user models raise anything
        raise DataError(f"model {model.spec} cannot take samples of shape {ds.sample_shape} from data "
                        f"{ds.name} ({type(e).__name__}: {e}); give matching data, or declare the model's "
                        "input_shape (a manifest's layout key says how x is stored)") from None
    if not isinstance(out, torch.Tensor):
        raise ModelError(f"model {model.spec} returns a {type(out).__name__}, not one tensor; wrap it so that "
                         "forward returns its output tensor")
    try:
        model.task = infer(tuple(out.shape), tuple(x.shape), ds.y, task)
    except DataError as e:
        raise DataError(f"model {model.spec} with data {ds.name}: {e}") from None
    if model.task in ("classify", "dense") and int(ds.y.max()) >= out.shape[1]:
        raise DataError(f"data {ds.name} has label {int(ds.y.max())} but model {model.spec} has only "
                        f"{out.shape[1]} outputs; give a model with more classes (or, for regression, "
                        "save y as floats)")


def output_shape(model: LoadedModel) -> tuple[int, ...]:
    """One sample's output shape, as the model gives it (a forward pass of zeros)."""
    with torch.no_grad():
        was = model.module.training
        model.module.eval()
        try:
            return tuple(model.module(torch.zeros(1, *model.input_shape)).shape[1:])
        finally:
            model.module.train(was)


@dataclass(frozen=True)
class SimResult:
    """One row of results: the task's test scores (top1 and top5 for a classifier, see
    edgempq.tasks), weight bytes, BOPs and the PTQ report if quantized."""

    label: str
    scores: dict[str, float]
    weight_bytes: int
    bops: int
    ptq: PTQReport | None = None

    @property
    def top1(self) -> float:
        """The test top-1 of a classifier (NaN for other tasks)."""
        return self.scores.get("top1", float("nan"))


def quantized(model: LoadedModel, ds: Dataset, policy: Policy, cfg: QuantConfig | None = None,
              qat_epochs: int = 0, on_step: Progress | None = None) -> tuple[torch.nn.Module, PTQReport]:
    """The policy's fake-quantized model: PTQ on the calibration split with `cfg` (its weight
    algorithm, bias correction, activation ranges), then optionally QAT on the training split."""
    if policy.model_hash and policy.model_hash != model.model_hash:
        raise ConfigError(f"the policy was made for model {policy.model_hash}, not {model.spec} "
                          f"({model.model_hash}); make a policy for this model")
    policy.check_layers(trace(model.module, model.input_shape))
    ds.require("calibration", *(["train"] if qat_epochs > 0 else []))
    q, report = quantize(model.module, policy, ds.split("calibration")[0], cfg, on_step=on_step)
    if qat_epochs > 0:
        finetune(q, *ds.split("train"), qat_epochs, replace(QAT_DEFAULTS, task=model.task), on_step=on_step)
    return q, report


def simulate(model: LoadedModel, ds: Dataset, policy: Policy, cfg: QuantConfig | None = None,
             qat_epochs: int = 0, on_step: Progress | None = None) -> tuple[torch.nn.Module, SimResult]:
    """`quantized`, and the simulated model's test top-1, weight bytes and BOPs."""
    q, report = quantized(model, ds, policy, cfg, qat_epochs, on_step)
    layers = trace(model.module, model.input_shape)
    label = policy.method or "policy"
    return q, SimResult(label, scores(q, *ds.split("test"), model.task), policy_weight_bytes(layers, policy),
                        policy_bops(layers, policy), report)


def float_result(model: LoadedModel, ds: Dataset) -> SimResult:
    """The float model's row: test top-1, float32 weight bytes and BOPs."""
    layers = trace(model.module, model.input_shape)
    f32 = Policy.uniform(layers, "f32")
    return SimResult("float", scores(model.module, *ds.split("test"), model.task),
                     policy_weight_bytes(layers, f32), policy_bops(layers, f32))


def simulated_model(model: LoadedModel, policy: Policy, state: dict, cfg: QuantConfig | None = None) -> torch.nn.Module:
    """The simulated model deploy saved (simulation.pt), rebuilt on `model`'s architecture."""
    from .export.rounding import saved_quantizers

    # an example batch lets apply fold what deploy folded (a Linear's BatchNorm1d is checked on one)
    example = torch.randn(4, *model.input_shape, generator=torch.Generator().manual_seed(0))
    q = apply(model.module, policy, cfg, example)
    saved_quantizers(q, state)
    try:
        q.load_state_dict(state)
    except RuntimeError as e:
        raise ModelError(f"the saved simulation does not fit model {model.spec} "
                         f"({str(e).splitlines()[0]}); deploy again") from None
    from .quant.quantizers import ActQuantizer, WeightQuantizer

    for m in q.modules():
        if isinstance(m, ActQuantizer | WeightQuantizer):  # a QAT step was used as |step|
            m.scale.data = m.scale.data.abs().clamp_min(1e-9)
        if isinstance(m, ActQuantizer):
            m.calibrated = True
        if isinstance(m, WeightQuantizer):
            m.fixed = True  # the saved grid is the deployed one: a later calibration must keep it
    return q.eval()


def state_bytes(module: torch.nn.Module) -> bytes:
    """`module`'s state_dict as the bytes `torch.save` writes (a weights file, simulation.pt),
    attention projections under nn.MultiheadAttention's names (the user's model loads them)."""
    import io

    from .attention import saved_state

    buf = io.BytesIO()
    torch.save(saved_state(module), buf)
    return buf.getvalue()
