"""The stages chained: train (or reuse cached) weights, simulate policies, the demo. Used by
the CLI and by notebooks; every function returns values, nothing prints."""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from .cache import cache_dir
from .data import Dataset, load_data
from .errors import ConfigError, DataError, ModelError
from .files import atomic_write_bytes, write_json
from .layers import F32, policy_bops, policy_weight_bytes, trace, weight_bytes
from .metrics import accuracy
from .models import LoadedModel, load_model
from .quant import QuantConfig, apply, batches, calibrate, finetune
from .schema import Policy, Precision
from .train import TrainConfig, TrainResult, fit

Progress = Callable[[int, int, float], None]
DEMO_MODEL = "zoo:mnist_resnet8"
DEMO_DATA = "mnist"
DEMO_TRAIN = TrainConfig(epochs=12, batch_size=64, lr=0.1)
DEMO_PRECISIONS = ("w8a8", "w4a8", "w2a8")


def load_model_and_data(model_spec: str, data_spec: str | None, weights: str | Path | None = None,
                        input_shape: tuple[int, ...] | None = None) -> tuple[LoadedModel, Dataset]:
    """The model and its data, preprocessed to the model's input; labels checked against it."""
    model = load_model(model_spec, weights, input_shape)
    data_spec = data_spec or model.dataset
    if data_spec is None:
        raise DataError(f"model {model_spec} has no default dataset; give one with --data")
    ds = load_data(data_spec, model.input_shape)
    if model.input_shape is None:
        model.input_shape = ds.sample_shape
    check_fit(model, ds)
    return model, ds


def check_fit(model: LoadedModel, ds: Dataset) -> None:
    """The model takes the data's samples and has an output for every label."""
    x = torch.from_numpy(ds.inputs(slice(0, 2)))
    try:
        with torch.no_grad():
            out = model.module(x)
    except Exception as e:  # noqa: BLE001 - user models raise anything
        raise DataError(f"model {model.spec} cannot take samples of shape {ds.sample_shape} from data "
                        f"{ds.name} ({type(e).__name__}: {e}); give matching data or --input-shape") from None
    if out.dim() != 2:
        raise ModelError(f"model {model.spec} returns shape {tuple(out.shape)}; a classifier returns N x classes")
    if int(ds.y.max()) >= out.shape[1]:
        raise DataError(f"data {ds.name} has label {int(ds.y.max())} but model {model.spec} has only "
                        f"{out.shape[1]} outputs; give a model with more classes")


def train_model(model: LoadedModel, ds: Dataset, cfg: TrainConfig,
                on_step: Progress | None = None) -> tuple[TrainResult, float]:
    """Train in place on the training split; returns the result and the test top-1."""
    torch.manual_seed(cfg.seed)
    res = fit(model.module, *ds.split("train"), cfg, val=ds.split("validation"), on_step=on_step)
    return res, accuracy(model.module, *ds.split("test"))


def state_bytes(module: torch.nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return buf.getvalue()


def cached_model(model_spec: str, data_spec: str, cfg: TrainConfig, retrain: bool = False,
                 on_step: Progress | None = None) -> tuple[LoadedModel, Dataset, dict]:
    """A trained model from the cache, trained (and cached) first if missing or `retrain`."""
    torch.manual_seed(cfg.seed)  # the initial weights too are set by the seed
    model, ds = load_model_and_data(model_spec, data_spec)
    key = hashlib.sha256(json.dumps([model_spec, ds.data_id, asdict(cfg)]).encode())
    # A readable but path-safe file name: the zoo name or the factory's name, then the key.
    label = re.sub(r"[^A-Za-z0-9_.-]", "_", model_spec.removeprefix("zoo:").split("?")[0].rpartition(":")[2])
    stem = f"{label[:40]}-{key.hexdigest()[:12]}"
    wpath, mpath = cache_dir("weights", stem + ".pt"), cache_dir("weights", stem + ".json")
    if wpath.is_file() and mpath.is_file() and not retrain:
        try:
            model = load_model(model_spec, wpath, model.input_shape)
            return model, ds, {**json.loads(mpath.read_text()), "cached": True, "weights": str(wpath)}
        except (ModelError, ValueError):
            pass  # a damaged cache entry is retrained below
    res, test_top1 = train_model(model, ds, cfg, on_step)
    atomic_write_bytes(wpath, state_bytes(model.module))
    meta = {"train_seconds": res.seconds, "val_top1": res.val_top1, "test_top1": test_top1}
    write_json(mpath, meta)
    model = load_model(model_spec, wpath, model.input_shape)
    return model, ds, {**meta, "cached": False, "weights": str(wpath)}


@dataclass(frozen=True)
class SimResult:
    label: str
    top1: float
    weight_bytes: int
    bops: int


def simulate(model: LoadedModel, ds: Dataset, policy: Policy, cfg: QuantConfig | None = None,
             qat_epochs: int = 0, on_step: Progress | None = None) -> tuple[torch.nn.Module, SimResult]:
    """Fake-quantize with `policy`, calibrate on the calibration split, optionally QAT on the
    training split; returns the simulated model and its test top-1, weight bytes and BOPs."""
    if policy.model_hash and policy.model_hash != model.model_hash:
        raise ConfigError(f"the policy was made for model {policy.model_hash}, not {model.spec} "
                          f"({model.model_hash}); make a policy for this model")
    layers = trace(model.module, model.input_shape)
    policy.check_layers(layers)
    q = apply(model.module, policy, cfg)
    calibrate(q, batches(ds.split("calibration")[0], 64))
    if qat_epochs > 0:
        finetune(q, *ds.split("train"), qat_epochs, on_step=on_step)
    label = policy.method or "policy"
    return q, SimResult(label, accuracy(q, *ds.split("test")), policy_weight_bytes(layers, policy),
                        policy_bops(layers, policy))


def float_result(model: LoadedModel, ds: Dataset) -> SimResult:
    """The float model's row: test top-1, float32 weight bytes and BOPs."""
    layers = trace(model.module, model.input_shape)
    f32 = Policy.uniform(layers, "f32")
    return SimResult("float", accuracy(model.module, *ds.split("test")),
                     policy_weight_bytes(layers, f32), policy_bops(layers, f32))


def uniform_table(model: LoadedModel, ds: Dataset, precisions: tuple[str, ...],
                  cfg: QuantConfig | None = None) -> list[SimResult]:
    """Test top-1, weight bytes and BOPs of the float model and of each uniform precision."""
    layers = trace(model.module, model.input_shape)
    rows = [float_result(model, ds)]
    for p in precisions:
        _, res = simulate(model, ds, Policy.uniform(layers, Precision.parse(p)), cfg)
        rows.append(replace(res, label=p))
    return rows


def demo(retrain: bool = False, on_step: Progress | None = None) -> tuple[dict, list[SimResult]]:
    """The built-in default: the cached MNIST ResNet-8, float vs uniform simulated precisions."""
    model, ds, meta = cached_model(DEMO_MODEL, DEMO_DATA, DEMO_TRAIN, retrain, on_step)
    return meta, uniform_table(model, ds, DEMO_PRECISIONS)


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
                on_step: Progress | None = None):
    """Score every (layer, precision) with `method` on the calibration split."""
    from .sensitivity import SensData, compute

    layers = trace(model.module, model.input_shape)
    x, y = ds.split("calibration")
    return compute(method, model.module, layers, precisions, SensData(x, y, ds.data_id), params,
                   model.model_hash, on_step)


def deploy(model: LoadedModel, ds: Dataset, policy: Policy, target_spec: str, out_dir: str | Path,
           qat_epochs: int = 0, cfg: QuantConfig | None = None, on_step: Progress | None = None) -> dict:
    """Quantize `model` with `policy` (PTQ on the calibration split, optional QAT), convert it
    to a mixed-precision .tflite verified op by op (and a C array for TFLite Micro targets),
    and write it with its recipe, the policy and deploy.json into `out_dir`."""
    from .export.deploy import build, c_array, check_target, io_details, microcontroller_checks, write
    from .targets import load_target

    target = load_target(target_spec)
    layers = trace(model.module, model.input_shape)
    policy.check_layers(layers)
    check_target(layers, policy, target)
    qmodel, sim = simulate(model, ds, policy, cfg, qat_epochs, on_step)
    art = build(layers, qmodel, model.input_shape, policy, ds.split("calibration")[0])
    if target.backend == "tflm":
        art.files = dict(zip(("model_data.h", "model_data.cc"), c_array(art.tflite), strict=True))
        microcontroller_checks(art, target)
    fixed = sum(weight_bytes(la, F32) for la in layers if not la.searchable)
    report = {
        "model": model.spec, "model_hash": model.model_hash, "data_id": ds.data_id, "target": target.name,
        "qat_epochs": qat_epochs, "simulated_top1": sim.top1,
        "tflite_bytes": len(art.tflite), "arena_bytes": art.arena_bytes, **io_details(art.tflite),
        "weight_bytes": {"predicted": policy_weight_bytes(layers, policy),
                         "artifact": sum(f["weight_bytes"] for f in art.found.values()) + fixed},
        "layers": [{"layer": n, "precision": str(policy.precisions[n]), "op_index": art.mapping[n].index,
                    "op_output": art.mapping[n].output_name, **art.found[n]} for n in policy.precisions],
    }
    write(art, Path(out_dir), report, policy)
    return report
