"""The commands as the CLI and notebooks call them: train (or reuse cached) weights, score
sensitivity, and deploy and validate a folder — each finds what its stage needs (defaults from
deploy.json, the model, the saved simulation), runs the stage and writes the files. Every
function returns a value; nothing prints."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .cache import cache_dir
from .data import Dataset
from .errors import ConfigError, DataError, ModelError
from .export.deploy import DEPLOY_FILE
from .export.stage import DeployConfig
from .files import atomic_write_bytes, write_json
from .layers import trace
from .metrics import scores
from .models import LoadedModel, load_model
from .progress import Progress
from .quant import QuantConfig
from .schema import Policy, Precision, Sensitivity, Target
from .schema.results import DeployResult, PredictedLatency, ValidationReport
from .simulation import SimResult, float_result, load_model_and_data, output_shape, simulate, state_bytes
from .train import TrainConfig, TrainResult, fit
from .validate import MIN_AGREEMENT, VALIDATION_FILE

if TYPE_CHECKING:
    from .validate import Artifact, Samples, Simulation

DEMO_TRAIN = TrainConfig(epochs=12, batch_size=64, lr=0.1)


def train_model(model: LoadedModel, ds: Dataset, cfg: TrainConfig,
                on_step: Progress | None = None) -> tuple[TrainResult, dict[str, float]]:
    """Train in place on the training split, with the model's task's loss; returns the result
    and the task's test scores."""
    ds.require("train", "test")
    cfg = replace(cfg, task=model.task)
    res = fit(model.module, *ds.split("train"), cfg, val=ds.split("validation"), on_step=on_step)
    return res, scores(model.module, *ds.split("test"), model.task)


def cached_model(model_spec: str, data_spec: str, cfg: TrainConfig, retrain: bool = False,
                 on_step: Progress | None = None) -> tuple[LoadedModel, Dataset, dict]:
    """A trained model from the cache, trained (and cached) first if missing or `retrain`."""
    with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
        torch.manual_seed(cfg.seed)  # the initial weights too are set by the seed
        model, ds = load_model_and_data(model_spec, data_spec)
    # the task is the model's (set from the data), not a training choice: keys from before it stay valid
    hyper = {k: v for k, v in asdict(cfg).items() if k != "task"}
    key = hashlib.sha256(json.dumps([model_spec, ds.data_id, hyper]).encode())
    # A readable but path-safe file name: the zoo name or the factory's name, then the key.
    label = re.sub(r"[^A-Za-z0-9_.-]", "_", model_spec.removeprefix("zoo:").split("?")[0].rpartition(":")[2])
    stem = f"{label[:40]}-{key.hexdigest()[:12]}"
    wpath, mpath = cache_dir("weights", stem + ".pt"), cache_dir("weights", stem + ".json")
    if wpath.is_file() and mpath.is_file() and not retrain:
        try:
            meta = json.loads(mpath.read_text())
            if not isinstance(meta, dict) or meta.get("sha256") != hashlib.sha256(wpath.read_bytes()).hexdigest():
                raise ValueError("the weights do not match their checksum")
            model = replace(load_model(model_spec, wpath, model.input_shape), task=model.task)
            return model, ds, {**meta, "cached": True, "weights": str(wpath)}
        except (ModelError, ValueError, OSError):
            pass  # a damaged or edited cache entry is trained again below
    res, test = train_model(model, ds, cfg, on_step)
    weights = state_bytes(model.module)
    atomic_write_bytes(wpath, weights)
    meta = {"train_seconds": res.seconds, "val_scores": res.val_scores, "test_scores": test,
            "test_top1": test.get("top1"),
            "sha256": hashlib.sha256(weights).hexdigest()}
    write_json(mpath, meta)
    model = replace(load_model(model_spec, wpath, model.input_shape), task=model.task)
    return model, ds, {**meta, "cached": False, "weights": str(wpath)}


def uniform_table(model: LoadedModel, ds: Dataset, precisions: tuple[str, ...],
                  cfg: QuantConfig | None = None) -> list[SimResult]:
    """Test top-1, weight bytes and BOPs of the float model and of each uniform precision."""
    layers = trace(model.module, model.input_shape)
    rows = [float_result(model, ds)]
    for p in precisions:
        _, res = simulate(model, ds, Policy.uniform(layers, Precision.parse(p)), cfg)
        rows.append(replace(res, label=p))
    return rows


def layer_precisions(layers: list, precisions: tuple[str, ...] = (), device: str | None = None) -> dict:
    """Per searchable layer, the precisions to score: `precisions` for every layer, else those
    the target `device` runs for the layer's kind, else every deployable precision."""
    from .schema import DEPLOYABLE

    if precisions and device:
        raise ConfigError("give --precisions or --device, not both")
    if device:
        from .targets import load_target

        target = load_target(device)
        return {la.name: list(target.allowed(la.kind)) for la in layers if la.searchable}
    chosen = [Precision.parse(p) for p in (precisions or DEPLOYABLE)]
    return {la.name: chosen for la in layers if la.searchable}


def sensitivity(model: LoadedModel, ds: Dataset, method: str, precisions: dict, params: list[str] | None = None,
                on_step: Progress | None = None) -> Sensitivity:
    """Score every (layer, precision) with `method` on the calibration split."""
    from .sensitivity import RunOptions, SensData, compute

    layers = trace(model.module, model.input_shape)
    ds.require("calibration")
    x, y = ds.split("calibration")
    return compute(method, model.module, layers, precisions, SensData(x, y, ds.data_id, model.task),
                   RunOptions(params, model.model_hash, on_step))


def deploy(model: LoadedModel, ds: Dataset, policy: Policy, target_spec: str, out_dir: str | Path,
           cfg: DeployConfig | None = None) -> DeployResult:
    """The deploy command: the deploy stage on `target_spec`'s target (see `export.stage`), then
    the folder `out_dir` written: model.tflite, its recipe, the policy, the simulated model
    (simulation.pt, which validate compares against), deploy.json and the report."""
    from . import report
    from .export import deploy as files
    from .export.stage import deploy as build
    from .files import staged
    from .targets import load_target
    from .trust import remember

    dep = build(model, ds, policy, load_target(target_spec), cfg or DeployConfig())
    folder = Path(out_dir)
    # built aside and moved in together, deploy.json last; the old validation describes another build
    with staged(folder, (*files.FILES, *report.FILES, VALIDATION_FILE), anchor=DEPLOY_FILE) as stage:
        result = files.write(dep, stage)
        report.write_report(stage, result, shown_as=folder)
        files.publish(stage, result)
    remember(result.model)  # the user ran this code: validate may load it from the folder
    return result


@dataclass(frozen=True)
class ValidateOptions:
    """What the validate command takes beside the artifact and the target. The model, weights,
    data and policy default to those deploy recorded beside the artifact; `profile` predicts
    the latency anew; `samples` thins the test split; `out_dir` (default: beside the artifact)
    receives validation.json and the report; `task` (default: deploy's, else the one the
    outputs and targets fit) says how outputs are scored; the rest is `validate.ValidateConfig`."""

    data: str | None = None
    task: str | None = None
    model: str | None = None
    weights: str | Path | None = None
    policy: str | Path | None = None
    profile: str | Path | None = None
    samples: int | None = None
    runs: int | None = None
    min_agreement: float = MIN_AGREEMENT
    find_divergence: bool | None = None
    out_dir: str | Path | None = None
    trust: bool = False  # import the model code deploy.json names (never done unless the user says so)
    on_step: Progress | None = field(default=None, compare=False)


def validate(artifact: str | Path, target_spec: str, opts: ValidateOptions | None = None) -> ValidationReport:
    """The validate command: `artifact` (a deploy folder or a .tflite) run over the test split
    on `target_spec`, compared with the float model, the simulation and the profile; writes
    validation.json and the report and returns the validation."""
    from . import report as reports
    from . import validate as stage
    from .files import staged
    from .targets import load_target

    opts = opts or ValidateOptions()
    art = open_artifact(artifact)
    target = load_target(target_spec)
    inputs = _resolve(art, opts)
    policy, sim_state, deployed = _policy(art, opts.policy)
    model, ds = _model_and_data(inputs, art)
    task = model.task if model else _artifact_task(art.tflite, ds, inputs["task"])
    samples = replace(_samples(ds, art.deploy, opts.samples, task), out_shape=output_shape(model) if model else None)
    art = replace(art, predicted=_prediction(art.deploy, deployed or policy, opts.profile, target))
    def simulation() -> Simulation | None:
        if model is None or policy is None:
            return None if model is None else stage.Simulation(model.module)
        sim = _simulation(art, model, ds, (policy, sim_state, deployed), samples)
        return replace(sim, policy=str(opts.policy) if opts.policy else "the deployed policy")

    cfg = stage.ValidateConfig(opts.runs, opts.min_agreement, opts.find_divergence, opts.on_step)
    report = stage.validate(art, target, samples, simulation, cfg)
    report = replace(report, model=inputs["model"], weights=str(inputs["weights"]) if inputs["weights"] else None,
                     data=inputs["data"] or samples.data).as_json()
    folder = Path(opts.out_dir) if opts.out_dir else art.path.parent
    with staged(folder, reports.FILES, anchor=VALIDATION_FILE) as aside:  # validation.json moved in last
        reports.write_report(aside, art.deploy, report, shown_as=folder)
        report.save(aside / VALIDATION_FILE)
    return report


def open_artifact(path: str | Path) -> Artifact:
    """A deploy folder's or a .tflite file's artifact, with deploy.json's value when it
    describes these very bytes (its checksum matches)."""
    from .files import read_json
    from .validate import Artifact

    p = Path(path)
    tfl = p / "model.tflite" if p.is_dir() else p
    if not tfl.is_file():
        from .files import not_found

        where = f"deploy folder {p} has no model.tflite" if p.is_dir() else f"artifact {p} {not_found(p)}"
        raise ConfigError(f"{where}; give a folder written by `edgempq deploy` or a .tflite file")
    data = tfl.read_bytes()
    if data[4:8] != b"TFL3":
        raise ConfigError(f"artifact {tfl} is not a TFLite flatbuffer; give the model.tflite deploy wrote")
    info = tfl.parent / DEPLOY_FILE
    if tfl.name != "model.tflite" or not info.is_file():
        return Artifact(tfl, data)
    doc = read_json(info, "deploy report")
    if not isinstance(doc, dict):
        raise ConfigError(f"{info} is not a deploy report (not a JSON object); deploy again")
    sums = doc.get("sha256")
    if not isinstance(sums, dict) or sums.get("model.tflite") != hashlib.sha256(data).hexdigest():
        return Artifact(tfl, data, unused_report=f"{info} describes another build (its checksum of model.tflite "
                        "differs), so it is not used")  # an interrupted or later deploy
    _check_own_checksum(doc, info)
    try:
        return Artifact(tfl, data, DeployResult.from_dict(doc))
    except ConfigError as e:
        raise ConfigError(f"{info}: {e}; deploy again") from None


def _check_own_checksum(doc: dict[str, Any], info: Path) -> None:
    """deploy.json must carry the checksum of itself deploy wrote (the schema checks it matches):
    validate acts on no report that could have been edited unseen."""
    from .schema.results import SIGNATURE

    if SIGNATURE not in doc:
        raise ConfigError(f"{info} has no checksum of its own (an older edgempq wrote it, or a hand), and validate "
                          f"does not act on it; deploy again, or validate a copy of {info.parent / 'model.tflite'} "
                          "outside the folder with --data (and --model)")


def _resolve(art: Artifact, opts: ValidateOptions) -> dict[str, Any]:
    """The model, weights and data to validate with: the options', else deploy's."""
    dep = art.deploy
    if not opts.model and dep is None and (opts.policy or opts.find_divergence):
        raise ConfigError(f"{art.no_report}, so comparing with a simulation needs the model: give --model "
                          "(and --weights)")
    if opts.weights and not Path(opts.weights).is_file():
        from .files import not_found

        raise ConfigError(f"weights file {opts.weights} {not_found(Path(opts.weights))}; give the state_dict the "
                          "model was trained to")
    weights = opts.weights or (dep.weights if dep else None)
    if weights and not Path(weights).is_file():
        raise ConfigError(f"the weights {weights} the artifact was deployed with are gone; give them with --weights")
    if not opts.model and dep is not None:
        _check_runs_no_code(art, dep.model, opts.trust)
    return {"model": opts.model or (dep.model if dep else None), "weights": weights,
            "data": opts.data or (dep.data if dep else None), "model_hash": dep.model_hash if dep else None,
            "task": opts.task or (dep.task if dep else None)}


def _check_runs_no_code(art: Artifact, spec: str, trust: bool) -> None:
    """A deploy folder is data: the model its deploy.json names is loaded only when it is one of
    edgempq's own (zoo:) or code the user deployed from here (`trust`); else the user names it
    with --model, or passes --trust."""
    from .trust import trusted

    if trust or trusted(spec):
        return
    raise ConfigError(f"{art.path.parent / 'deploy.json'} names the model {spec!r}, code you have not deployed "
                      f"from on this machine (or that changed since), and validate runs no code a deploy folder "
                      f"names: give --model {shlex.quote(spec)} (with --weights) if you trust it, or pass --trust")


def _policy(art: Artifact, policy_path: str | Path | None) -> tuple[Policy | None, Path | None, Policy | None]:
    """(the policy to simulate, the saved simulation state when that policy is deploy's own,
    the policy the artifact was deployed with)."""
    own = _deployed_file(art, "policy.json")
    deployed = Policy.load(own) if own else None
    if policy_path:
        policy = Policy.load(policy_path)
        if deployed is None or policy.precisions != deployed.precisions:
            return policy, None, deployed
    else:
        policy = deployed
    state_path = _deployed_file(art, "simulation.pt") if policy is not None else None
    return policy, state_path, deployed


def _deployed_file(art: Artifact, name: str) -> Path | None:
    """The file `name` deploy wrote beside the artifact, when deploy.json describes the folder
    and the file is there; it must be as deploy wrote it (deploy.json holds its sha256), since
    validate compares the artifact against it."""
    path = art.path.parent / name
    if art.deploy is None or not path.is_file():
        return None
    want = art.deploy.sha256.get(name)
    if want != hashlib.sha256(path.read_bytes()).hexdigest():
        change = "was changed after deploy" if want else "has no checksum in deploy.json (an older edgempq wrote it)"
        raise ConfigError(f"{path} {change}; deploy again, or give the policy to compare with by --policy from "
                          "outside the folder")
    return path


def _model_and_data(inputs: dict[str, Any], art: Artifact) -> tuple[LoadedModel | None, Dataset]:
    """The model (None when only the data is known) and the data, checked against deploy's model."""
    from .data import load_data
    from .layout import torch_sample_shape

    if inputs["model"]:
        model, ds = load_model_and_data(inputs["model"], inputs["data"], inputs["weights"], task=inputs["task"])
        if inputs["model_hash"] and model.model_hash != inputs["model_hash"]:
            raise ConfigError(f"the artifact was deployed from model {inputs['model_hash']}, but {inputs['model']} "
                              f"with these weights is {model.model_hash}; give the weights it was deployed with")
        return model, ds
    if not inputs["data"]:
        raise ConfigError(f"{art.no_report}; give --data (and --model, --policy to compare with the simulation)")
    return None, load_data(inputs["data"], torch_sample_shape(io_shape(art.tflite)))


def _artifact_task(tflite: bytes, ds: Dataset, given: str | None = None) -> str:
    """The task of an artifact validated without its model: the one its output and the targets fit."""
    from .backends.base import io_quantization
    from .layout import torch_sample_shape
    from .tasks import infer

    inp, out = (d["shape"] for d in io_quantization(tflite))
    try:
        return infer((1, *torch_sample_shape(out)), (1, *torch_sample_shape(inp)), ds.y, given)
    except DataError as e:
        raise DataError(f"artifact with data {ds.name}: {e}") from None


def _samples(ds: Dataset, dep: DeployResult | None, samples: int | None, task: str) -> Samples:
    """The test split, thinned evenly to `samples`; a note when it is not the data deploy used."""
    from .data import spread
    from .validate import Samples

    ds.require("test")
    x, y = ds.split("test")
    pick = spread(len(x), samples)
    note = (f"deployed with data {dep.data_id}, validated on {ds.data_id}"
            if dep and dep.data_id and dep.data_id != ds.data_id else None)
    return Samples(x[pick], y[pick], ds.name, ds.data_id, note, task)


def _prediction(dep: DeployResult | None, policy: Policy | None, profile_path: str | Path | None,
                target: Target) -> PredictedLatency | None:
    """The latency to hold the artifact to: predicted anew from `profile_path`, else deploy's when
    it is about this target."""
    if profile_path:
        from .latency import ModelKey, predicted_latency
        from .schema import CostTable

        if policy is None:
            raise ConfigError("a latency prediction from --profile needs the artifact's policy; give --policy")
        table = CostTable.load(profile_path)
        policy.check_layers(list(table.layers))
        # deploy.json names the architecture (an older one only the weights, and then the
        # policy's layers, checked above, tie it to the profile's); an older profile must be of the same weights
        key = ModelKey(dep.arch_hash, dep.model_hash) if dep else ModelKey(None)
        return predicted_latency(policy, table, target, key)
    return dep.latency if dep and dep.latency and dep.latency.target == target.name else None


def _simulation(art: Artifact, model: LoadedModel, ds: Dataset, policies: tuple, samples: Samples) -> Simulation:
    """The simulation of `policies` = (policy, saved state or None, deployed policy): the one
    deploy saved, else calibrated again; for the deployed policy itself, rounding as the artifact."""
    from .quant import QuantConfig
    from .simulation import simulated_model
    from .validate import Simulation

    policy, state_path, deployed = policies
    dep = art.deploy
    cfg = QuantConfig.from_dict(dep.quant_config, "deploy.json's quant_config") if dep and dep.quant_config else None
    if state_path is not None:
        qmodel, how = simulated_model(model, policy, _load_state(state_path), cfg), "saved by deploy"
    else:
        qmodel, how = simulate(model, ds, policy, cfg)[0], "calibrated again (PTQ)"
    sim = Simulation(model.module, qmodel, how=how, layers=dep.layers if dep else ())
    if deployed is None or policy.precisions == deployed.precisions:  # the artifact's own policy
        sim = _artifact_rounding(sim, art, policy, samples.x[:8])
    return sim


def _artifact_rounding(sim: Simulation, art: Artifact, policy: Policy, x: Any) -> Simulation:
    """The simulation rounding as the artifact does: each integer layer's output, measured on
    `x` when the saved simulation lacks it (an older deploy, or calibrated again), and the
    tensors between layers, read from the artifact's graph (see export.skips); what was taken
    is said in the simulation's `how` and `notes`."""
    from .divergence import ops_by_output
    from .export import rounding, skips
    from .layout import to_model
    from .quant.modules import QUANT_TYPES

    ops = ops_by_output(art.tflite)
    layer_ops = {r.layer: ops[r.op_output][0] for r in sim.layers
                 if r.op_output in ops and r.layer in policy.precisions}
    if not layer_ops:
        return sim
    qmodel, how = sim.qmodel, sim.how
    ints = {n: i for n, i in layer_ops.items() if not policy.precisions[n].is_float}
    has = any(getattr(m, "out_quant", None) is not None for m in qmodel.modules() if isinstance(m, QUANT_TYPES))
    if ints and not has:
        shape = io_shape(art.tflite)
        rounding.adopt(qmodel, rounding.measure(art.tflite, ints, to_model(x, shape)))
        how += "; output rounding measured on the artifact"
    grids, notes = skips.measure(qmodel, art.tflite, layer_ops)
    if grids:
        how += f"; {skips.describe(grids)} rounded as in the artifact"
    return replace(sim, qmodel=skips.wrap(qmodel, grids), how=how, notes=tuple(notes))


def io_shape(tflite: bytes) -> list[int]:
    """The artifact's input shape (batch first)."""
    from .backends.base import io_quantization

    return io_quantization(tflite)[0]["shape"]


def _load_state(path: Path) -> dict:
    """The saved simulation's state_dict; a damaged file is one sentence."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a damaged file
        raise ConfigError(f"the saved simulation {path} is unreadable ({type(e).__name__}); deploy again") from None
