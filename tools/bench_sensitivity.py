"""Benchmark of the sensitivity methods: CPU time per method, and how each ranks the layers
next to the measured baseline and to OMPQ / CSMPQ (Spearman ρ).

    .venv/bin/python tools/bench_sensitivity.py [--repeats 3] [--out bench_results/sensitivity.json] [--quick]

Timing: resnet18 at 224x224 with random weights on 32 random images (each method's batch is 32;
`measured` is left out there: 21 layers x 6 precisions of full calibrations is the cost the other
methods avoid), and the trained mnist_resnet8 and mnist_mobilenet (cached, trained if missing) on
their MNIST calibration split. The methods that train or run many forward passes (clado, gmpq,
limpq) run once with their defaults. Ranking: each method's layer order by the penalty of w2a8
relative to f32 (the widest gap, so the measured baseline is well above its noise), against
`measured`, `ompq` and `csmpq`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

METHODS = ("ompq", "csmpq", "hawq", "measured", "clado", "gmpq", "limpq")
ONCE = {"clado", "gmpq", "limpq"}  # minutes each: one run
PRECISIONS = ("w2a8", "w4a8", "w8a8", "w8a16", "f16", "f32")


def timed(fn, repeats: int) -> tuple[object, dict]:
    """The last result and the median CPU seconds (all threads) and wall seconds."""
    cpu, wall, out = [], [], None
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        out = fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return out, {"cpu_s": statistics.median(cpu), "wall_s": statistics.median(wall), "runs": repeats}


def bench_resnet18(repeats: int) -> dict:
    import numpy as np
    import torch

    from edgempq.layers import trace
    from edgempq.models import load_model
    from edgempq.pipeline import layer_precisions
    from edgempq.sensitivity import SensData, compute

    torch.manual_seed(0)
    m = load_model("zoo:resnet18")
    layers = trace(m.module, m.input_shape)
    rng = np.random.default_rng(0)
    data = SensData(rng.normal(size=(32, 3, 224, 224)).astype(np.float32), rng.integers(0, 1000, 32), "random")
    precisions = layer_precisions(layers, PRECISIONS)
    out = {}
    for name in ("ompq", "csmpq", "hawq"):
        n = 1 if name == "hawq" else repeats
        _, t = timed(lambda name=name: compute(name, m.module, layers, precisions, data), n)
        out[name] = t
        print(f"resnet18 {name}: {t}", flush=True)
    return out


def bench_mnist(model_name: str, repeats: int, methods: tuple[str, ...] = METHODS) -> dict:
    from scipy.stats import spearmanr

    from edgempq.pipeline import DEMO_TRAIN, cached_model, layer_precisions, sensitivity, trace

    model, ds, _ = cached_model(f"zoo:{model_name}", "mnist", DEMO_TRAIN)
    layers = trace(model.module, model.input_shape)
    precisions = layer_precisions(layers, PRECISIONS)
    out, gaps = {}, {}
    for name in methods:
        sens, t = timed(lambda name=name: sensitivity(model, ds, name, precisions), 1 if name in ONCE else repeats)
        gaps[name] = [sens.penalty(n, "w2a8") - sens.penalty(n, "f32") for n in precisions]
        out[name] = t | {"w2a8_gap": dict(zip(precisions, gaps[name], strict=True))}
        print(f"{model_name} {name}: {t}", flush=True)
    for name in methods:
        for ref in ("measured", "ompq", "csmpq"):
            if ref in gaps and ref != name:
                out[name][f"spearman_vs_{ref}"] = float(spearmanr(gaps[name], gaps[ref]).statistic)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="mnist_resnet8 only, one repeat")
    ap.add_argument("--out", default="bench_results/sensitivity.json")
    args = ap.parse_args()
    repeats = 1 if args.quick else args.repeats
    result = {"mnist_resnet8": bench_mnist("mnist_resnet8", repeats)}
    if not args.quick:
        result["mnist_mobilenet"] = bench_mnist("mnist_mobilenet", repeats)
    if not args.quick:
        result["resnet18_224"] = bench_resnet18(repeats)
    from edgempq.files import write_json

    write_json(Path(args.out), result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
