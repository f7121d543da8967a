"""The stages chained: train (or reuse cached) weights, simulate policies, the demo. Used by
the CLI and by notebooks; every function returns values, nothing prints."""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import asdict, replace
from pathlib import Path

import torch

from .cache import cache_dir
from .data import Dataset
from .errors import ConfigError, InfeasibleError, ModelError
from .files import atomic_write_bytes, write_json
from .latency import predicted_latency
from .layers import F32, policy_weight_bytes, trace, weight_bytes
from .metrics import accuracy, predict, topk
from .models import LoadedModel, load_model
from .progress import Progress
from .quant import QuantConfig
from .schema import CostTable, Policy, Precision
from .simulation import SimResult, float_result, load_model_and_data, quantized, simulate
from .train import TrainConfig, TrainResult, fit

DEMO_MODEL = "zoo:mnist_resnet8"
DEMO_DATA = "mnist"
DEMO_TRAIN = TrainConfig(epochs=12, batch_size=64, lr=0.1)


def train_model(model: LoadedModel, ds: Dataset, cfg: TrainConfig,
                on_step: Progress | None = None) -> tuple[TrainResult, float]:
    """Train in place on the training split; returns the result and the test top-1."""
    res = fit(model.module, *ds.split("train"), cfg, val=ds.split("validation"), on_step=on_step)
    return res, accuracy(model.module, *ds.split("test"))


def state_bytes(module: torch.nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return buf.getvalue()


def cached_model(model_spec: str, data_spec: str, cfg: TrainConfig, retrain: bool = False,
                 on_step: Progress | None = None) -> tuple[LoadedModel, Dataset, dict]:
    """A trained model from the cache, trained (and cached) first if missing or `retrain`."""
    with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
        torch.manual_seed(cfg.seed)  # the initial weights too are set by the seed
        model, ds = load_model_and_data(model_spec, data_spec)
    key = hashlib.sha256(json.dumps([model_spec, ds.data_id, asdict(cfg)]).encode())
    # A readable but path-safe file name: the zoo name or the factory's name, then the key.
    label = re.sub(r"[^A-Za-z0-9_.-]", "_", model_spec.removeprefix("zoo:").split("?")[0].rpartition(":")[2])
    stem = f"{label[:40]}-{key.hexdigest()[:12]}"
    wpath, mpath = cache_dir("weights", stem + ".pt"), cache_dir("weights", stem + ".json")
    if wpath.is_file() and mpath.is_file() and not retrain:
        try:
            meta = json.loads(mpath.read_text())
            if not isinstance(meta, dict) or meta.get("sha256") != hashlib.sha256(wpath.read_bytes()).hexdigest():
                raise ValueError("the weights do not match their checksum")
            model = load_model(model_spec, wpath, model.input_shape)
            return model, ds, {**meta, "cached": True, "weights": str(wpath)}
        except (ModelError, ValueError, OSError):
            pass  # a damaged or edited cache entry is trained again below
    res, test_top1 = train_model(model, ds, cfg, on_step)
    weights = state_bytes(model.module)
    atomic_write_bytes(wpath, weights)
    meta = {"train_seconds": res.seconds, "val_top1": res.val_top1, "test_top1": test_top1,
            "sha256": hashlib.sha256(weights).hexdigest()}
    write_json(mpath, meta)
    model = load_model(model_spec, wpath, model.input_shape)
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


DEMO_TARGET = "host"
DEMO_METHOD = "csmpq"
DEMO_SIZE_SHARE = 0.65  # of the all-int8 model's weight bytes
# of the all-int8 model's measured latency: the tightest that can be met with the size budget
# (on a CPU where int4 kernels are slower than int8, a smaller model costs time)
DEMO_LATENCY_SHARES = (1.1, 1.25, 1.5, 2.0, 3.0)


def demo(out_dir: str | Path = "edgempq-demo", retrain: bool = False, on_step: Progress | None = None) -> dict:
    """The built-in default end to end: the cached (or freshly trained) MNIST ResNet-8,
    profiled on this machine, CSMPQ sensitivity, an exact search under 65 % of the int8 size and
    the tightest of 110 %, 125 %, ... of the int8 latency that the size budget leaves feasible
    (and a size sweep for the front), deploy, validate on the device, report. Every stage's
    file goes into `out_dir`; returns the summary."""
    import time

    from .files import write_json
    from .profile import WholeModel, profile
    from .schema import Budget
    from .solve import solve, sweep
    from .targets import load_target
    from .validate import validate

    step = on_step or (lambda *a: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}

    def stage(name: str) -> Progress:
        return lambda i, n, info: step(i, n, f"{name}: {info}" if isinstance(info, str) else info)

    t = time.perf_counter()
    model, ds, meta = cached_model(DEMO_MODEL, DEMO_DATA, DEMO_TRAIN, retrain, stage("training"))
    seconds["train"] = time.perf_counter() - t
    layers = trace(model.module, model.input_shape)
    target = load_target(DEMO_TARGET)

    t = time.perf_counter()
    table = profile(layers, target, model.model_hash, on_step=stage("profiling"),
                    whole=WholeModel(model.module, model.input_shape))
    table.save(out / "profile.json")
    seconds["profile"] = time.perf_counter() - t

    t = time.perf_counter()
    sens = sensitivity(model, ds, DEMO_METHOD, layer_precisions(layers, device=DEMO_TARGET), None,
                       stage("sensitivity"))
    sens.save(out / "sensitivity.json")
    seconds["sensitivity"] = time.perf_counter() - t

    t = time.perf_counter()
    int8 = Policy.uniform(layers, "w8a8")
    int8_bytes, int8_ms = policy_weight_bytes(layers, int8), table.whole_ms["w8a8"]
    step(0, 1, "search")
    for share in DEMO_LATENCY_SHARES:
        budget = Budget(latency_ms=share * int8_ms, size_kb=DEMO_SIZE_SHARE * int8_bytes / 1024)
        try:
            policy = solve(layers, sens, table, budget, target)
            break
        except InfeasibleError:
            if share == DEMO_LATENCY_SHARES[-1]:
                raise
    policy.save(out / "policy.json")
    lo = 0.45 * int8_bytes / 1024
    front = {"sweep": "size_kb", "method": sens.method, "target": target.name,
             "held": {"latency_ms": budget.latency_ms},
             "points": sweep(layers, sens, table, Budget(latency_ms=budget.latency_ms), target,
                             f"size_kb={lo:.3f}:{int8_bytes / 1024:.3f}:12")}
    write_json(out / "sweep.json", front)
    seconds["search"] = time.perf_counter() - t

    t = time.perf_counter()
    rows = {"float": float_result(model, ds), "w8a8": simulate(model, ds, int8)[1]}
    seconds["baselines"] = time.perf_counter() - t

    t = time.perf_counter()
    art_dir = out / "artifact"
    dep = deploy(model, ds, policy, DEMO_TARGET, art_dir, on_step=stage("deploy"), profile=table, sweep=front,
                 weights=meta["weights"], data_spec=DEMO_DATA)
    seconds["deploy"] = time.perf_counter() - t

    t = time.perf_counter()
    val = validate(art_dir, DEMO_TARGET, on_step=stage("validate"))
    seconds["validate"] = time.perf_counter() - t
    return {"model": DEMO_MODEL, "data": DEMO_DATA, "target": target.name, "method": sens.method,
            "train": meta, "budget": budget.to_dict(), "policy": {k: str(v) for k, v in policy.precisions.items()},
            "predicted": dict(policy.predicted), "float": asdict(rows["float"]), "int8": asdict(rows["w8a8"]),
            "int8_latency_ms": int8_ms, "f32_latency_ms": table.whole_ms.get("f32"),
            "deploy": dep, "validation": val, "seconds": seconds, "folder": str(out),
            "report": val["report"]["report.html"]}


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
           qat_epochs: int = 0, cfg: QuantConfig | None = None, on_step: Progress | None = None,
           profile: CostTable | None = None, sweep: dict | None = None, weights: str | Path | None = None,
           data_spec: str | None = None) -> dict:
    """Quantize `model` with `policy` (PTQ on the calibration split, optional QAT), convert it
    to a mixed-precision .tflite verified op by op (and a C array for TFLite Micro targets),
    and write it into `out_dir` with its recipe, the policy, the simulated model
    (simulation.pt, which validate compares against), deploy.json and the report. With
    `profile`, the policy's predicted latency per layer is recorded; `sweep` (search --sweep's
    JSON) adds the Pareto front to the report; `weights` and `data_spec` are recorded so that
    validate can rebuild the model and its data."""
    from .export.deploy import build, c_array, check_target, io_details, microcontroller_checks, output_levels, write
    from .report import check_sweep, write_report
    from .targets import load_target

    cfg = cfg or QuantConfig()
    target = load_target(target_spec)
    layers = trace(model.module, model.input_shape)
    policy.check_layers(layers)
    check_target(layers, policy, target)
    if sweep is not None:
        check_sweep(sweep, "the sweep")
    latency = predicted_latency(policy, profile, target.name, model.model_hash)
    qmodel, ptq = quantized(model, ds, policy, cfg, qat_epochs, on_step)
    art = build(layers, qmodel, model.input_shape, policy, ds.split("calibration")[0])
    # the simulation now holds the artifact's input ranges (see export.exact): measured after
    io = io_details(art.tflite)
    x_test, y_test = ds.split("test")  # the simulation's logits, read as the artifact's integer output
    from .export.skips import wrap

    sim_top1 = topk(output_levels(predict(wrap(qmodel, art.skips), x_test), io["output"]), y_test, 1)
    if target.backend == "tflm":
        art.files = dict(zip(("model_data.h", "model_data.cc"), c_array(art.tflite), strict=True))
        microcontroller_checks(art, target)
    fixed = sum(weight_bytes(la, F32) for la in layers if not la.searchable)
    report = {
        "model": absolute_spec(model.spec), "weights": str(Path(weights).resolve()) if weights else None,
        "model_hash": model.model_hash, "data": absolute_spec(data_spec or ds.name), "data_id": ds.data_id,
        "target": target.name, "qat_epochs": qat_epochs, "quant_config": cfg.to_dict(), "simulated_top1": sim_top1,
        "ptq": ptq.to_dict(), "exact": {"layers": len(art.exact), "checked": art.exact},
        "quantizer_note": quantizer_mismatch(policy, cfg),
        "input_ranges": art.input_ranges, "output_rounding": art.rounding, "skip_rounding": art.skips,
        "skip_notes": art.skip_notes,
        "tflite_bytes": len(art.tflite), "arena_bytes": art.arena_bytes, **io,
        "weight_bytes": {"predicted": policy_weight_bytes(layers, policy),
                         "artifact": sum(f["weight_bytes"] for f in art.found.values()) + fixed},
        "latency": latency, "sweep": sweep,
        "policy": {"method": policy.method, "budget": policy.budget.to_dict(), "predicted": dict(policy.predicted)},
        "layers": [{"layer": n, "precision": str(policy.precisions[n]), "op_index": art.mapping[n].index,
                    "op_output": art.mapping[n].output_name, **art.found[n]} for n in policy.precisions],
    }
    folder = Path(out_dir)
    write(art, folder, report, policy, state_bytes(qmodel))
    write_report(folder, report)
    return report


def quantizer_mismatch(policy: Policy, cfg: QuantConfig) -> str | None:
    """A sentence when the policy's penalties were measured with another PTQ than `cfg` (its
    algorithm, parameters, bias correction or activation ranges), else None."""
    from .params import split_pairs
    from .quant.weights import algorithm

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
    from .data import builtin_names

    if spec.startswith("zoo:") or spec in builtin_names():
        return spec
    head, colon, factory = spec.rpartition(":")
    if colon and head and Path(head).is_file():
        return f"{Path(head).resolve()}:{factory}"
    if Path(spec).exists():
        return str(Path(spec).resolve())
    return spec


