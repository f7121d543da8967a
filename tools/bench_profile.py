"""Benchmark of device profiling on `host`: cold and warm profile time, and predicted vs
measured end-to-end latency for every uniform precision and for random mixed policies.

    .venv/bin/python tools/bench_profile.py [--models resnet18,mobilenet_v2] [--policies 3]
        [--device host] [--out bench_results/profile.json] [--quick]

Cold = an empty cache; warm = the same profile again. A policy is deployed as a real mixed-
precision .tflite (ONNX -> onnx2tf -> per-layer ai-edge-quantizer recipe) and timed whole.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROUNDS = 5


def bench_model(name: str, device: str, n_policies: int, seed: int, out_dir: str) -> dict:
    from edgempq.assign import alternating_policies, uniform_assignment
    from edgempq.backends import backend_for
    from edgempq.export.float_graph import float_tflite
    from edgempq.export.mapping import torch_weights
    from edgempq.export.mixed import quantize_policy
    from edgempq.latency import predict_latency
    from edgempq.layers import trace
    from edgempq.models import load_model
    from edgempq.profile import WholeModel, profile
    from edgempq.targets import load_target

    target = load_target(device)
    m = load_model(name)
    layers = trace(m.module, m.input_shape)
    whole = WholeModel(m.module, m.input_shape)
    t0 = time.perf_counter()
    table = profile(layers, target, m.model_hash, whole=whole)
    cold = time.perf_counter() - t0
    warm_runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        profile(layers, target, m.model_hash, whole=whole)
        warm_runs.append(time.perf_counter() - t0)
    result: dict = {"model": name, "device": device, "layers": sum(la.searchable for la in layers),
                    "rows": len(table.rows), "cold_s": cold, "warm_s_median": statistics.median(warm_runs),
                    "uniform": {}, "mixed": []}
    from edgempq.latency_fit import conversion_ms_per_element

    result["conversion_ms_per_million_elements"] = {k: v * 1e6 for k, v in conversion_ms_per_element(table).items()}
    result["alternating_ms"] = dict(table.mixed_ms)
    for p, ms in table.whole_ms.items():
        rows_sum = ms - table.overhead_ms[p]
        result["uniform"][p] = {"measured_ms": ms, "layer_sum_ms": rows_sum, "layer_sum_error": (rows_sum - ms) / ms}
    timing_module = whole.timing_copy()  # the module profiling timed: same weights, healthy ranges
    base = float_tflite(timing_module, m.input_shape)
    weights = torch_weights(timing_module, layers)
    rng = random.Random(seed)

    policies = [("mixed", i, {la.name: rng.choice(target.allowed(la.kind)) for la in layers if la.searchable})
                for i in range(n_policies)]
    policies += [("uniform", p, uniform_assignment(layers, target, p)) for p in table.whole_ms]
    policies += [("alternating", k, a) for k, a in alternating_policies(layers, target).items()]
    models = [quantize_policy(layers, base, pol, weights) for _, _, pol in policies]
    times: list[list[float]] = [[] for _ in policies]
    # a longer look than profiling's, round-robin so that this host's slow and fast moments fall
    # on every policy alike; the median of the rounds
    with backend_for(replace(target, max_seconds=10.0)) as backend:
        for _ in range(ROUNDS):
            for k, model in enumerate(models):
                times[k].append(backend.time(model, runs=10, warmup=2).median_ms)
    medians = [statistics.median(ts) for ts in times]
    # the same predictor, calibrated on uniform and alternating timings of these same rounds: its
    # error is the model's own, without the drift of this host between profiling and now
    by_kind: dict[str, dict] = {"uniform": {}, "alternating": {}, "mixed": {}}
    for (w, lab, _), ms in zip(policies, medians, strict=True):
        by_kind[w][lab] = ms
    same = replace(table, whole_ms=by_kind["uniform"], mixed_ms=by_kind["alternating"])
    for (what, label, pol), ts, measured in zip(policies, times, medians, strict=True):
        predicted, same_session = predict_latency(table, pol), predict_latency(same, pol)
        row = {"predicted_ms": predicted, "measured_ms": measured, "error": (predicted - measured) / measured,
               "same_session_predicted_ms": same_session, "same_session_error": (same_session - measured) / measured,
               "rounds_ms": ts}
        if what == "mixed":
            result["mixed"].append({"policy": label, **row, "precisions": {k: str(v) for k, v in pol.items()}})
        elif what == "uniform":  # uniform policies through the same mixed path
            result["uniform"][label] |= {"via_policy_" + k: v for k, v in row.items()}
        else:
            result["alternating_remeasured_ms"] = result.get("alternating_remeasured_ms", {}) | {label: measured}
    table.save(Path(out_dir) / f"profile_{name.split(':')[-1]}.json")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="zoo:resnet18,zoo:mobilenet_v2")
    ap.add_argument("--device", default="host")
    ap.add_argument("--policies", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1, help="of the random policies (the profile's probes use 0)")
    ap.add_argument("--quick", action="store_true", help="small models, one mixed policy")
    ap.add_argument("--out", default="bench_results/profile.json")
    args = ap.parse_args()
    models = "zoo:mnist_resnet8,zoo:mnist_mobilenet" if args.quick else args.models
    n = 1 if args.quick else args.policies
    os.environ["EDGEMPQ_CACHE"] = tempfile.mkdtemp(prefix="edgempq-bench-cache-")  # cold = empty cache
    results = []
    for name in models.split(","):
        r = bench_model(name, args.device, n, args.seed, str(Path(args.out).parent))
        results.append(r)
        print(json.dumps(r, indent=2), flush=True)
    from edgempq.files import write_json

    write_json(Path(args.out), {"results": results})


if __name__ == "__main__":
    main()
