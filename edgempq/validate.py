"""The validate stage: an artifact run on its device and compared with the float model, the
simulation, the latency prediction and the size model; where artifact and simulation disagree,
the layer where they part. Everything it compares against comes in as values (`Artifact`,
`Samples`, `Simulation`); finding them beside a deploy folder and writing validation.json and
the report is `pipeline.validate`'s job. Returns a `ValidationReport`; nothing prints."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError
from .progress import Progress
from .rounds import ROUNDS, fastest
from .schema import Target
from .schema.results import (
    Agreement,
    DeployResult,
    Divergence,
    LayerRow,
    MeasuredLatency,
    PredictedLatency,
    SizeCheck,
    ValidationReport,
)

MIN_AGREEMENT = 0.99  # below this top-1 agreement, the divergence finder runs
VALIDATION_FILE = "validation.json"


@dataclass(frozen=True)
class Artifact:
    """A .tflite read from disk, deploy.json's value when it describes these bytes, and the
    latency prediction to hold it to (deploy's, or one made from a profile)."""

    path: Path
    tflite: bytes
    deploy: DeployResult | None = None
    predicted: PredictedLatency | None = None
    unused_report: str | None = None  # why a deploy.json beside it was not used (it is of another build)

    @property
    def no_report(self) -> str:
        """Why validate has no deploy report for it, in words."""
        return self.unused_report or f"{self.path} has no deploy.json beside it"


@dataclass(frozen=True)
class Samples:
    """The test samples (N, C, H, W as PyTorch takes them) and where they come from."""

    x: np.ndarray
    y: np.ndarray
    data: str
    data_id: str
    note: str | None = None  # e.g. other data than the artifact was deployed with
    task: str = "classify"  # what the outputs are scored as (edgempq.tasks)
    out_shape: tuple[int, ...] | None = None  # one sample's output as PyTorch gives it (None: read off the artifact)


@dataclass(frozen=True)
class Simulation:
    """What the artifact is compared with: the float model and, for a policy, its fake-quantized
    model, rounding as the artifact does; `policy` and `how` say which and how it was made."""

    float_model: Any | None
    qmodel: Any | None = None
    policy: str | None = None
    how: str | None = None
    notes: tuple[str, ...] = ()
    layers: tuple[LayerRow, ...] = ()  # the deploy folder's layer map, for the divergence finder


@dataclass(frozen=True)
class ValidateConfig:
    """How hard validate looks: timed runs (None: the target's), the agreement below which the
    divergence finder runs (`find_divergence` forces it on or off)."""

    runs: int | None = None
    min_agreement: float = MIN_AGREEMENT
    find_divergence: bool | None = None
    on_step: Progress | None = field(default=None, compare=False)


@dataclass(frozen=True)
class _Measured:
    device: dict[str, Any]
    outputs: np.ndarray  # dequantized, as PyTorch lays them out
    seconds: float
    scores: dict[str, float]
    timings: list[Any]  # one per round
    ram: int | None


def validate(artifact: Artifact, target: Target, data: Samples,
             simulation: Simulation | Callable[[], Simulation] | None,
             cfg: ValidateConfig | None = None) -> ValidationReport:
    """Run `artifact` over `data` on `target` and compare it with `simulation` (None: the artifact
    alone; a function is called once the device has answered, so a missing device is said before
    a long recalibration)."""
    cfg = cfg or ValidateConfig()
    step = cfg.on_step or (lambda *a: None)
    m = _measure(artifact, target, data, cfg, step)
    step(3, 4, "simulating")
    sim = simulation() if callable(simulation) else simulation
    compared = _compare(artifact, data, sim, m, cfg, step) if sim else {}
    step(4, 4, "done")
    dep = artifact.deploy
    classes = data.task == "classify"
    scores = {**compared.pop("scores", {}), "artifact": m.scores}
    return ValidationReport(
        artifact=str(artifact.path), target=target.name, data=data.data, data_id=data.data_id,
        samples=int(len(data.x)), device=m.device, task=data.task, eval_seconds=m.seconds,
        artifact_top1=m.scores.get("top1"), artifact_top5=m.scores.get("top5"),
        predictions=tuple(int(v) for v in np.argmax(m.outputs, axis=1)) if classes else (),
        latency=_latency(m.timings, artifact.predicted, target.emulated), size=_size(artifact, m.ram, target),
        deploy_report=dep is not None, deployed_target=dep.target if dep else None, data_note=data.note,
        scores=scores, **compared)


def _measure(artifact: Artifact, target: Target, data: Samples, cfg: ValidateConfig, step: Progress) -> _Measured:
    """The device's description, the artifact's outputs on `data` and their scores, its timing
    and its arena. A classifier is scored on the device (its runner's top-1 / top-5)."""
    from .backends import backend_for
    from .backends.base import io_quantization
    from .layout import to_model
    from .tasks import get_task

    task = get_task(data.task)
    shape = io_quantization(artifact.tflite)[0]["shape"]
    with backend_for(target) as backend:
        step(0, 4, "device check")
        device = backend.check()
        step(1, 4, f"evaluating {len(data.x)} samples")
        x = to_model(data.x, shape)
        if task.name == "classify":
            ev = backend.evaluate(artifact.tflite, x, data.y.astype(np.int64))
            outputs, seconds, scores = ev.logits, ev.seconds, {"top1": ev.top1, "top5": ev.top5}
        else:
            raw, seconds = backend.outputs(artifact.tflite, x)
            outputs = _as_torch(raw, data, io_quantization(artifact.tflite)[1]["shape"])
            scores = task.scores(outputs, task.target(data.x, data.y))
        timings = []
        for r in range(ROUNDS):  # the fastest round kept, as the profile keeps its own (`rounds`)
            step(2, 4, f"timing (round {r + 1}/{ROUNDS})")
            timings.append(backend.time(artifact.tflite, cfg.runs))
        ram = backend.ram_bytes(artifact.tflite)
    return _Measured(device, outputs, seconds, scores, timings, ram)


def _as_torch(raw: np.ndarray, data: Samples, artifact_shape: list[int]) -> np.ndarray:
    """The artifact's outputs laid out as the PyTorch model's (`data.out_shape`; without the
    model, the artifact's NHWC / NLC output read as channels first)."""
    from .layout import channels_first, torch_sample_shape

    return channels_first(raw, data.out_shape or torch_sample_shape(artifact_shape))


def _compare(artifact: Artifact, data: Samples, sim: Simulation, m: _Measured, cfg: ValidateConfig,
             step: Progress) -> dict[str, Any]:
    """The report's float, simulation, agreement and divergence fields (scores: float, simulated)."""
    from .tasks import get_task

    task = get_task(data.task)
    target = task.target(data.x, data.y)
    out: dict[str, Any] = {"scores": {}}
    if sim.float_model is not None:
        out["scores"]["float"] = task.scores(logits(sim.float_model, data.x), target)
        out["float_top1"] = out["scores"]["float"].get("top1")
    if sim.qmodel is None:
        return out
    from .backends.base import io_quantization
    from .export.deploy import output_levels

    simulated = output_levels(logits(sim.qmodel, data.x), io_quantization(artifact.tflite)[1])
    if simulated.size != m.outputs.size:
        raise DataError(f"the simulation gives {simulated.shape[1:]} per sample but the artifact "
                        f"{m.outputs.shape[1:]}; validate the artifact with the model it was deployed from")
    simulated = simulated.reshape(m.outputs.shape)  # a classifier's logits, flat on the device
    out["scores"]["simulated"] = task.scores(simulated, target)
    agree = task.agreement(m.outputs, simulated)
    out.update(simulated_policy=sim.policy, simulation=sim.how, simulation_notes=sim.notes,
               simulated_top1=out["scores"]["simulated"].get("top1"), agreement=Agreement(**agree))
    worse = _agrees_less(agree, cfg.min_agreement)
    if worse if cfg.find_divergence is None else cfg.find_divergence:
        out["divergence"] = _divergence(artifact, data, sim, step)
    return out


MIN_SNR_DB = 30.0  # values (regress, reconstruct) further from the simulation than this run the divergence finder


def _agrees_less(agree: dict[str, Any], min_agreement: float) -> bool:
    """Whether artifact and simulation agree less than they should: on the class (classifiers,
    per pixel for dense outputs), or, for values, an SNR under MIN_SNR_DB."""
    if agree["top1"] is not None:
        return agree["top1"] < min_agreement
    return not agree["snr_db"] >= MIN_SNR_DB


def _divergence(artifact: Artifact, data: Samples, sim: Simulation, step: Progress) -> Divergence:
    """The first layer where artifact and simulation part, on a spread of the samples."""
    if not sim.layers:
        return Divergence(None, note="needs the deploy folder's layer map")
    from .data import spread
    from .divergence import SAMPLES, find

    step(3, 4, "looking for the diverging layer")
    return find(artifact.tflite, sim.qmodel, sim.layers, data.x[spread(len(data.x), SAMPLES)])


def logits(module: Any, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """`module`'s outputs on samples `x`, in batches, as float32 numpy."""
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out.append(module(torch.from_numpy(np.ascontiguousarray(x[i : i + batch]))).float().numpy())
    return np.concatenate(out)


def _latency(timings: list[Any], pred: PredictedLatency | None, emulated: bool = False) -> MeasuredLatency:
    """The measured latency (the fastest round), with the prediction and its relative error when
    there is one; an emulated device's time is kept apart, held to no prediction."""
    t = fastest(timings)
    rounds = tuple(x.median_ms for x in timings)
    if pred is None or emulated:
        return MeasuredLatency(t.median_ms, t.p10_ms, t.p90_ms, t.runs, rounds_ms=rounds, emulated=emulated)
    p = float(pred.predicted_ms)
    return MeasuredLatency(t.median_ms, t.p10_ms, t.p90_ms, t.runs, predicted_ms=p, error=(t.median_ms - p) / p,
                           layers_ms=pred.layers_ms, points=pred.points, rounds_ms=rounds)


def _size(artifact: Artifact, ram: int | None, target: Target) -> SizeCheck:
    """The artifact's bytes and arena against the size model and the target's budgets."""
    wb = artifact.deploy.weight_bytes if artifact.deploy else None
    return SizeCheck(tflite_bytes=len(artifact.tflite),
                     weight_bytes_predicted=wb.predicted if wb else None,
                     weight_bytes_artifact=wb.artifact if wb else None, arena_bytes=ram,
                     ram_kb_budget=target.ram_kb if ram is not None else None, flash_kb_budget=target.flash_kb)
