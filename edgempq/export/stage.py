"""The deploy stage: a policy's quantized model built into a verified artifact, in memory.

`deploy(model, data, policy, target, cfg)` quantizes (PTQ on the calibration split, optional
QAT), converts and checks the artifact, and returns a `Deployment`: the typed `DeployResult`
(deploy.json) with the bytes to write. Writing the folder is `pipeline.deploy`'s job."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..schema import CostTable, Policy, Target
from ..schema.results import (
    DeployResult,
    ExactCheck,
    IOTensor,
    LayerRow,
    PolicySummary,
    PTQSummary,
    WeightBytes,
)
from .deploy import Artifact, Deployment

if TYPE_CHECKING:
    from ..data import Dataset
    from ..models import LoadedModel
    from ..progress import Progress
    from ..quant import QuantConfig


@dataclass(frozen=True)
class DeployConfig:
    """How deploy quantizes, and what it records beside the artifact.

    `profile` gives the policy's predicted latency per layer; `sweep` (search --sweep's JSON)
    adds the Pareto front to the report; `weights` and `data_spec` are recorded so validate can
    rebuild the model and its data."""

    quant: QuantConfig | None = None  # None: QuantConfig() (the default PTQ)
    qat_epochs: int = 0
    profile: CostTable | None = None
    sweep: dict[str, Any] | None = None
    weights: str | Path | None = None
    data_spec: str | None = None
    on_step: Progress | None = field(default=None, compare=False)


def deploy(model: LoadedModel, data: Dataset, policy: Policy, target: Target, cfg: DeployConfig) -> Deployment:
    """Quantize `model` with `policy`, convert it to a mixed-precision .tflite verified op by op
    (and a C array for TFLite Micro targets) and score the simulation on the test split (its task's
    metrics)."""
    from ..distributed import stand_by
    from ..latency import ModelKey, predicted_latency
    from ..layers import trace
    from ..quant import QuantConfig
    from ..simulation import quantized
    from .deploy import build, c_array, check_target, io_details, microcontroller_checks

    quant = cfg.quant or QuantConfig()
    data.require("calibration", "test")  # the artifact's calibration, and the top-1 deploy.json records
    layers = trace(model.module, model.input_shape)
    policy.check_layers(layers)
    check_target(layers, policy, target)
    if cfg.sweep is not None:
        from ..report import check_sweep

        check_sweep(cfg.sweep, "the sweep")
    latency = predicted_latency(policy, cfg.profile, target, ModelKey(model.arch_hash, model.model_hash))
    arena = predicted_arena(policy, cfg.profile, target)
    qmodel, ptq = quantized(model, data, policy, quant, cfg.qat_epochs, cfg.on_step)
    stand_by()  # under torchrun rank 0 converts and times alone, the others' QAT share done
    art = build(layers, qmodel, model.input_shape, policy, data.split("calibration")[0])
    io = io_details(art.tflite)  # the simulation holds the artifact's input ranges (see export.exact) from here
    if target.microcontroller:
        art.files = dict(zip(("model_data.h", "model_data.cc"), c_array(art.tflite), strict=True))
        microcontroller_checks(art, target)
    result = _result(model, data, policy, target, cfg, art=art, layers=layers, ptq=ptq.to_dict(), io=io,
                     latency=latency, scores=_scores(model, qmodel, art, data, io["output"]), arena=arena)
    return Deployment(result, art, policy, _state_bytes(qmodel))


def predicted_arena(policy: Policy, table: CostTable | None, target: Target) -> int | None:
    """The TFLite Micro arena `table` (a microcontroller profile) predicts for `policy`, refused
    before anything is converted when it is over the target's ram_kb; None without such a profile."""
    from ..arena import arena_model
    from ..errors import DeviceError

    model = arena_model(table) if target.microcontroller else None
    if model is None:
        return None
    arena = model.predict(dict(policy.precisions)).total
    if target.ram_kb is not None and arena > target.ram_kb * 1024:
        raise DeviceError(f"the policy needs {arena / 1024:.1f} KB of TFLite Micro arena (predicted from the profile) "
                          f"but target {target.name} has ram_kb = {target.ram_kb:g}; search again (search holds the "
                          "target's ram_kb) or give a policy with fewer 16-bit activations")
    return arena


def _scores(model: LoadedModel, qmodel: Any, art: Artifact, data: Dataset,
            output: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The float model's and the simulation's test scores for the model's task, the
    simulation's outputs read as the artifact's integer output."""
    from ..metrics import predict, scores
    from ..tasks import get_task
    from .deploy import output_levels
    from .skips import wrap

    x, y = data.split("test")
    sim = output_levels(predict(wrap(qmodel, art.skips), x), output)
    task = get_task(model.task)
    return {"float": scores(model.module, x, y, model.task), "simulated": task.scores(sim, task.target(x, y))}


def _result(model: LoadedModel, data: Dataset, policy: Policy, target: Target, cfg: DeployConfig,
            **built: Any) -> DeployResult:
    """deploy.json's value from what was built (`art`, `layers`, `ptq`, `io`, `latency`, `scores`)."""
    from ..layers import F32, policy_weight_bytes, weight_bytes
    from ..quant import QuantConfig

    art, layers, quant = built["art"], built["layers"], cfg.quant or QuantConfig()
    fixed = sum(weight_bytes(la, F32) for la in layers if not la.searchable)
    return DeployResult(
        model=absolute_spec(model.spec), weights=str(Path(cfg.weights).resolve()) if cfg.weights else None,
        model_hash=model.model_hash, arch_hash=model.arch_hash, data=absolute_spec(cfg.data_spec or data.name),
        data_id=data.data_id,
        target=target.name, qat_epochs=cfg.qat_epochs, quant_config=quant.to_dict(),
        task=model.task, scores=built["scores"], simulated_top1=built["scores"]["simulated"].get("top1"),
        float_top1=built["scores"]["float"].get("top1"),
        ptq=PTQSummary.from_dict(built["ptq"], "the PTQ report"),
        exact=ExactCheck(len(art.exact), art.exact), quantizer_note=quantizer_mismatch(policy, quant),
        input_ranges=art.input_ranges, output_rounding=art.rounding, skip_rounding=art.skips,
        skip_notes=tuple(art.skip_notes), tflite_bytes=len(art.tflite), arena_bytes=art.arena_bytes,
        arena_predicted_bytes=built.get("arena"),
        input=IOTensor.from_dict(built["io"]["input"]), output=IOTensor.from_dict(built["io"]["output"]),
        weight_bytes=WeightBytes(policy_weight_bytes(layers, policy),
                                 sum(f["weight_bytes"] for f in art.found.values()) + fixed),
        latency=built["latency"],
        sweep=cfg.sweep,
        policy=PolicySummary(policy.method, policy.budget.to_dict(), dict(policy.predicted)),
        layers=tuple(LayerRow(layer=n, precision=str(policy.precisions[n]), op_index=art.mapping[n].index,
                              op_output=art.mapping[n].output_name, **art.found[n]) for n in policy.precisions))


def _state_bytes(module: Any) -> bytes:
    from ..simulation import state_bytes

    return state_bytes(module)
def quantizer_mismatch(policy: Policy, cfg: QuantConfig) -> str | None:
    """A sentence when the policy's penalties were measured with another PTQ than `cfg` (its
    algorithm, parameters, bias correction or activation ranges), else None."""
    from ..params import split_pairs
    from ..quant.weights import algorithm

    q = policy.quantizer
    if not q:
        return None
    ptq_params = split_pairs(q.get("ptq_params", ""))
    try:
        theirs_params = asdict(algorithm(q["ptq"], ptq_params).params)
    except ConfigError:
        return (f"the policy's penalties were measured with PTQ {q['ptq']!r} ({', '.join(ptq_params)}), which "
                "this version cannot build; its trade-offs may not hold for this deploy's quantizer")
    ours_params = asdict(algorithm(cfg.weights, dict(cfg.weight_params)).params)
    theirs = {"ptq": q["ptq"], **theirs_params, "bias_correction": q.get("bias_correction", True),
              "act_range": q.get("act_range", "minmax")}
    ours = {"ptq": cfg.weights, **ours_params, "bias_correction": cfg.bias_correction, "act_range": cfg.act_method}
    if theirs == ours:
        return None
    if q["ptq"] == cfg.weights:
        keys = [k for k in theirs if theirs[k] != ours.get(k)]
    else:
        keys = ["ptq"] + [k for k in ("bias_correction", "act_range") if theirs[k] != ours[k]]

    def said(d: dict) -> str:
        return ", ".join(f"{k}={d[k]}" for k in keys)

    return (f"the policy's penalties were measured by {policy.method} with {said(theirs)}, but this deploy "
            f"quantizes with {said(ours)}; the search's trade-offs may not hold for this quantizer (deploy with "
            "the sensitivity's --ptq, --ptq-param, --bias-correction and --act-range, or score it with these)")


def absolute_spec(spec: str) -> str:
    """A model or data spec with its file path made absolute (`net.py:factory`, `d.npz`), so
    that validate finds it from any folder; names (zoo:..., mnist, package.module:f) unchanged."""
    from ..data import builtin_names

    if spec.startswith("zoo:") or spec in builtin_names():
        return spec
    head, colon, factory = spec.rpartition(":")
    if colon and head and Path(head).is_file():
        return f"{Path(head).resolve()}:{factory}"
    if Path(spec).exists():
        return str(Path(spec).resolve())
    return spec


