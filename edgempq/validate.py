"""Validate an artifact on its device: accuracy against the float model and the simulation,
latency against the profile's prediction, size against the solver's size model, and, when the
artifact and the simulation disagree, the layer where they part. Returns values; nothing prints."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .data import spread
from .errors import ConfigError, DataError
from .progress import Progress

MIN_AGREEMENT = 0.99  # below this top-1 agreement, the divergence finder runs
VALIDATION_FILE = "validation.json"


def open_artifact(path: str | Path) -> tuple[Path, bytes, dict | None]:
    """(the .tflite's path, its bytes, deploy.json beside it or None) for a deploy folder or a
    .tflite file."""
    from .files import read_json

    p = Path(path)
    tfl = p / "model.tflite" if p.is_dir() else p
    if not tfl.is_file():
        where = f"deploy folder {p} has no model.tflite" if p.is_dir() else f"artifact {p} does not exist"
        raise ConfigError(f"{where}; give a folder written by `edgempq deploy` or a .tflite file")
    data = tfl.read_bytes()
    if data[4:8] != b"TFL3":
        raise ConfigError(f"artifact {tfl} is not a TFLite flatbuffer; give the model.tflite deploy wrote")
    info = tfl.parent / "deploy.json"
    if tfl.name != "model.tflite" or not info.is_file():
        return tfl, data, None
    deploy = read_json(info, "deploy report")
    if not isinstance(deploy, dict):
        raise ConfigError(f"{info} is not a deploy report (not a JSON object); deploy again")
    sums = deploy.get("sha256")
    if not isinstance(sums, dict) or sums.get("model.tflite") != hashlib.sha256(data).hexdigest():
        return tfl, data, None  # it describes another build (or an interrupted deploy): not used
    return tfl, data, deploy


def to_model_layout(shape: list[int]) -> Callable[[np.ndarray], np.ndarray]:
    """Samples (N, C, H, W) as the artifact takes them (onnx2tf makes NHWC), float32."""

    def convert(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        want = tuple(shape[1:])
        if x.ndim == 4 and tuple(x.shape[1:]) != want and want == (x.shape[2], x.shape[3], x.shape[1]):
            x = x.transpose(0, 2, 3, 1)
        if tuple(x.shape[1:]) != want:
            raise DataError(f"the artifact takes samples of shape {want}, the data gives {tuple(x.shape[1:])}; "
                            "give the data the model was deployed with")
        return np.ascontiguousarray(x)

    return convert


def _logits(module: Any, x: np.ndarray, batch: int = 256) -> np.ndarray:
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out.append(module(torch.from_numpy(np.ascontiguousarray(x[i : i + batch]))).float().numpy())
    return np.concatenate(out)


def _top1(logits: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, axis=1) == y))


def validate(artifact: str | Path, target_spec: str, data_spec: str | None = None, model_spec: str | None = None,
             weights: str | Path | None = None, policy_path: str | Path | None = None,
             profile_path: str | Path | None = None, samples: int | None = None, runs: int | None = None,
             min_agreement: float = MIN_AGREEMENT, find_divergence: bool | None = None,
             on_step: Progress | None = None, out_dir: str | Path | None = None) -> dict:
    """Run `artifact` over the test split on `target_spec` and compare it with the float
    model, the simulation and the profile. The model, weights, data and policy default to those
    deploy recorded beside the artifact. Writes validation.json and the report into `out_dir`
    (default: beside the artifact) and returns the validation."""
    from .backends import backend_for
    from .files import write_json
    from .report import write_report
    from .targets import load_target

    step = on_step or (lambda *a: None)
    tfl, data, deploy = open_artifact(artifact)
    target = load_target(target_spec)
    deploy = deploy or {}
    if not model_spec and not deploy and (policy_path or find_divergence):
        raise ConfigError(f"{tfl} has no deploy report beside it, so comparing with a simulation needs the "
                          "model: give --model (and --weights)")
    if weights and not Path(weights).is_file():
        raise ConfigError(f"weights file {weights} does not exist; give the state_dict the model was trained to")
    model_spec = model_spec or deploy.get("model")
    weights = weights or deploy.get("weights")
    data_spec = data_spec or deploy.get("data")
    if weights and not Path(weights).is_file():
        raise ConfigError(f"the weights {weights} the artifact was deployed with are gone; give them with --weights")
    policy, sim_state, deployed = _policy(tfl, deploy, policy_path)

    from .backends.base import io_quantization

    inp, out_io = io_quantization(data)
    layout = to_model_layout(inp["shape"])
    model, ds = _model_and_data(model_spec, data_spec, weights, inp["shape"])
    if model is not None and deploy.get("model_hash") and model.model_hash != deploy["model_hash"]:
        raise ConfigError(f"the artifact was deployed from model {deploy['model_hash']}, but {model_spec} "
                          f"with these weights is {model.model_hash}; give the weights it was deployed with")
    x, y = ds.split("test")
    pick = spread(len(x), samples)
    x, y = x[pick], y[pick]
    if len(x) == 0:
        raise DataError(f"data {ds.name} has an empty test split; give data with test samples")

    result: dict[str, Any] = {"artifact": str(tfl), "target": target.name, "model": model_spec,
                              "weights": str(weights) if weights else None, "data": data_spec or ds.name,
                              "data_id": ds.data_id, "samples": int(len(x)),
                              "deploy_report": bool(deploy), "deployed_target": deploy.get("target")}
    if deploy.get("data_id") and deploy["data_id"] != ds.data_id:
        result["data_note"] = f"deployed with data {deploy['data_id']}, validated on {ds.data_id}"
    with backend_for(target) as backend:
        step(0, 4, "device check")
        result["device"] = backend.check()
        step(1, 4, f"evaluating {len(x)} samples")
        ev = backend.evaluate(data, layout(x), y.astype(np.int64))
        step(2, 4, "timing")
        timing = backend.time(data, runs)
        ram = backend.ram_bytes(data)
    result["artifact_top1"], result["artifact_top5"] = ev.top1, ev.top5
    result["eval_seconds"] = ev.seconds
    result["predictions"] = [int(v) for v in ev.predictions]
    result["latency"] = _latency(timing, deploy, deployed or policy, profile_path, target.name)
    result["size"] = _size(data, deploy, ram, target)

    step(3, 4, "simulating")
    if model is not None:
        result["float_top1"] = _top1(_logits(model.module, x), y)
    if model is not None and policy is not None:
        qmodel = _simulation(model, ds, policy, sim_state, deploy)
        result["simulated_policy"] = str(policy_path) if policy_path else "the deployed policy"
        result["simulation"] = "saved by deploy" if sim_state is not None else "calibrated again (PTQ)"
        if deployed is None or policy.precisions == deployed.precisions:  # the artifact's own policy
            qmodel = _artifact_rounding(qmodel, data, deploy, policy, layout(x[:8]), result)
        from .export.deploy import output_levels

        sim = output_levels(_logits(qmodel, x), out_io)  # read as the artifact's integer output
        result["simulated_top1"] = _top1(sim, y)
        agree = np.argmax(sim, axis=1) == ev.predictions
        err = np.abs(sim - ev.logits)
        result["agreement"] = {"top1": float(agree.mean()), "disagreeing": int((~agree).sum()),
                               "max_logit_error": float(err.max()), "mean_logit_error": float(err.mean()),
                               "logit_range": float(sim.max() - sim.min())}
        run_finder = (agree.mean() < min_agreement) if find_divergence is None else find_divergence
        if run_finder:
            if not deploy.get("layers"):
                result["divergence"] = {"layer": None, "note": "needs the deploy folder's layer map"}
            else:
                from .divergence import SAMPLES, find

                step(3, 4, "looking for the diverging layer")
                result["divergence"] = find(data, qmodel, deploy["layers"], x[spread(len(x), SAMPLES)], layout)
    step(4, 4, "done")
    folder = Path(out_dir) if out_dir else tfl.parent
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / VALIDATION_FILE, json.loads(json.dumps(result)))
    result["report"] = {k: str(v) for k, v in write_report(folder, deploy or None, result).items()}
    return result


def _policy(tfl: Path, deploy: dict, policy_path: str | Path | None):
    """(the policy to simulate, the saved simulation state when that policy is deploy's own,
    the policy the artifact was deployed with)."""
    from .schema import Policy

    own = tfl.parent / "policy.json"
    deployed = Policy.load(own) if deploy and own.is_file() else None
    if policy_path:
        policy = Policy.load(policy_path)
        if deployed is None or policy.precisions != deployed.precisions:
            return policy, None, deployed
    else:
        policy = deployed
    state_path = tfl.parent / "simulation.pt"
    return policy, (state_path if policy is not None and deploy and state_path.is_file() else None), deployed


def _model_and_data(model_spec: str | None, data_spec: str | None, weights: Any, shape: list[int]):
    from .data import load_data
    from .simulation import load_model_and_data

    if model_spec:
        return load_model_and_data(model_spec, data_spec, weights)
    if not data_spec:
        raise ConfigError("the artifact has no deploy.json beside it; give --data (and --model, --policy to "
                          "compare with the simulation)")
    chw = (shape[3], shape[1], shape[2]) if len(shape) == 4 else tuple(shape[1:])
    return None, load_data(data_spec, chw)


def _simulation(model: Any, ds: Any, policy: Any, state_path: Path | None, deploy: dict) -> Any:
    import torch

    from .quant import QuantConfig
    from .simulation import simulate, simulated_model

    cfg = QuantConfig.from_dict(deploy["quant_config"], "deploy.json's quant_config") if deploy.get("quant_config") \
        else None
    if state_path is not None:
        try:
            state = torch.load(state_path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch raises many types for a damaged file
            raise ConfigError(f"the saved simulation {state_path} is unreadable ({type(e).__name__}); "
                              "deploy again") from None
        return simulated_model(model, policy, state, cfg)
    q, _ = simulate(model, ds, policy, cfg)
    return q


def _artifact_rounding(qmodel: Any, data: bytes, deploy: dict, policy: Any, x: np.ndarray, result: dict) -> Any:
    """The simulation rounding as the artifact does: each integer layer's output, measured on
    `x` when the saved simulation lacks it (an older deploy, or calibrated again), and the
    tensors between layers, read from the artifact's graph (see export.skips); what was taken
    is said in `result`."""
    from .divergence import _ops_by_output
    from .export import rounding, skips
    from .quant.modules import QUANT_TYPES

    layer_ops = _layer_ops(deploy, _ops_by_output(data), policy)
    if not layer_ops:
        return qmodel
    ints = {n: i for n, i in layer_ops.items() if not policy.precisions[n].is_float}
    has = any(getattr(m, "out_quant", None) is not None for m in qmodel.modules() if isinstance(m, QUANT_TYPES))
    if ints and not has:
        rounding.adopt(qmodel, rounding.measure(data, ints, x))
        result["simulation"] += "; output rounding measured on the artifact"
    grids, notes = skips.measure(qmodel, data, layer_ops)
    if grids:
        result["simulation"] += f"; {skips.describe(grids)} rounded as in the artifact"
    if notes:
        result["simulation_notes"] = notes
    return skips.wrap(qmodel, grids)


def _layer_ops(deploy: dict, ops: dict, policy: Any) -> dict[str, int]:
    """Policy layer -> its op index in the artifact, from deploy.json's layer rows (by the op's
    output tensor name); rows that do not fit are left out."""
    rows = deploy.get("layers") if isinstance(deploy.get("layers"), list) else []
    return {r["layer"]: ops[r["op_output"]][0] for r in rows
            if isinstance(r, dict) and isinstance(r.get("op_output"), str) and r["op_output"] in ops
            and isinstance(r.get("layer"), str) and r["layer"] in policy.precisions}


def _latency(timing: Any, deploy: dict, policy: Any, profile_path: Any, target: str) -> dict:
    from .latency import predicted_latency

    out = {"median_ms": timing.median_ms, "p10_ms": timing.p10_ms, "p90_ms": timing.p90_ms, "runs": timing.runs}
    pred = None
    if profile_path:
        from .schema import CostTable

        if policy is None:
            raise ConfigError("a latency prediction from --profile needs the artifact's policy; give --policy")
        table = CostTable.load(profile_path)
        policy.check_layers(list(table.layers))
        pred = predicted_latency(policy, table, target, deploy.get("model_hash") or table.model_hash)
    elif deploy.get("latency") and deploy["latency"].get("target") == target:
        pred = deploy["latency"]
    if pred:
        p = float(pred["predicted_ms"])
        out.update(predicted_ms=p, error=(timing.median_ms - p) / p)
        out["layers_ms"] = pred.get("layers_ms")
        out["points"] = pred.get("points")
    return out


def _size(data: bytes, deploy: dict, ram: int | None, target: Any) -> dict:
    out: dict[str, Any] = {"tflite_bytes": len(data)}
    wb = deploy.get("weight_bytes")
    if wb:
        out["weight_bytes_predicted"], out["weight_bytes_artifact"] = wb["predicted"], wb["artifact"]
    if ram is not None:
        out["arena_bytes"] = ram
        if target.ram_kb is not None:
            out["ram_kb_budget"] = target.ram_kb
    if target.flash_kb is not None:
        out["flash_kb_budget"] = target.flash_kb
    return out
