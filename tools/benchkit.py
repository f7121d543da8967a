"""What the parts of `tools/bench_all.py` share: the models, the machine's description,
timing helpers, interleaved latency rounds, result files. Not part of the library."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

RESULTS = Path("bench_results") / "all"
TRAINED = ("mnist_resnet8", "mnist_mobilenet")  # trained on MNIST: latency and accuracy
LATENCY_ONLY = ("resnet18", "mobilenet_v2")  # 224x224, random weights: latency only
TARGET = "host"


@dataclass(frozen=True)
class Models:
    trained: tuple[str, ...]
    latency_only: tuple[str, ...]


def models(quick: bool) -> Models:
    return Models(TRAINED[:1], ()) if quick else Models(TRAINED, LATENCY_ONLY)


def machine() -> dict:
    """What ran the benchmark: CPU, cores, memory, OS, Python and the packages that set the numbers."""
    from importlib.metadata import PackageNotFoundError, version

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    with contextlib.suppress(ValueError, OSError, AttributeError):
        mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    pkgs = {}
    for p in ("torch", "ai-edge-litert", "ai-edge-quantizer", "onnx2tf", "tensorflow", "mip", "numpy"):
        with contextlib.suppress(PackageNotFoundError):
            pkgs[p] = version(p)
    return {"cpu": cpu or platform.processor(), "cores": os.cpu_count(), "memory_gb": mem_gb,
            "os": platform.platform(), "python": platform.python_version(), "packages": pkgs,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def timed(fn, repeats: int = 1) -> tuple[object, float]:
    """The last result and the median wall seconds over `repeats` runs."""
    out, wall = None, []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        wall.append(time.perf_counter() - t)
    return out, statistics.median(wall)


def interleaved_ms(backend, models: dict[str, bytes], rounds: int, log=print) -> dict[str, dict]:
    """Each model timed once per round, round-robin, for `rounds` rounds, as the profile times
    (edgempq.rounds): per model the fastest round's median ("ms", what the profile records and
    predicts), the median of the rounds' medians and every round's median. A slow moment of the
    device then falls on every model alike, so the comparison is side by side."""
    from edgempq.rounds import runs_for

    per: dict[str, list[float]] = {k: [] for k in models}
    for r in range(rounds):
        for k, data in models.items():
            per[k].append(backend.time(data, runs_for(backend.target, per[k][0] if per[k] else None)).median_ms)
        log(f"  timing round {r + 1}/{rounds} done")
    return {k: {"ms": min(v), "median_ms": statistics.median(v), "rounds_ms": v} for k, v in per.items()}


def trained_model(name: str):
    """The cached MNIST model (trained once, as the demo's), its data and the weights' path."""
    from edgempq.pipeline import DEMO_TRAIN, cached_model

    model, ds, meta = cached_model(f"zoo:{name}", "mnist", DEMO_TRAIN)
    return model, ds, meta


def random_model(name: str, folder: Path):
    """A 224x224 zoo model with seeded random weights (saved, so validate can rebuild it) and
    scikit-learn's digits upsampled to 224x224 as its data, with small splits: latency does
    not depend on the values, and calibration needs only real-looking inputs."""
    import torch

    from edgempq.data import with_splits
    from edgempq.files import atomic_write_bytes
    from edgempq.models import load_model
    from edgempq.profile import WholeModel
    from edgempq.simulation import load_model_and_data, state_bytes

    torch.manual_seed(0)
    model, ds = load_model_and_data(f"zoo:{name}", "digits")
    ds = with_splits(ds, calibration=64, validation=16, test=64)
    # BatchNorm statistics re-estimated on unit-scale inputs (as the profile's timing copy does):
    # with the default statistics an untrained MobileNetV2's activations vanish, its int16 scales
    # underflow and LiteRT refuses the conv (int32 overflow in the requantization)
    module = WholeModel(model.module, model.input_shape).timing_copy()
    weights = folder / f"{name}-random.pt"
    atomic_write_bytes(weights, state_bytes(module))
    model = load_model(f"zoo:{name}", weights, model.input_shape)
    return model, ds, {"weights": str(weights)}


def save(name: str, result: dict, folder: Path = RESULTS) -> Path:
    from edgempq.files import write_json

    folder.mkdir(parents=True, exist_ok=True)
    return write_json(folder / f"{name}.json", result)


def correct_on_test(q, ds):
    """Per test sample, whether the (quantized) classifier `q` gets it right: a bool array, for
    paired tests between two models on the same samples."""
    import numpy as np

    from edgempq.metrics import predict

    x, y = ds.split("test")
    return np.argmax(predict(q, x), axis=1) == y


def load(name: str, folder: Path = RESULTS) -> dict | None:
    p = folder / f"{name}.json"
    return json.loads(p.read_text()) if p.is_file() else None


def counts(by_precision: dict[str, int]) -> str:
    """`5×f16, 4×w4a8, 1×w8a8` from how many layers take each precision, most first."""
    return ", ".join(f"{n}×{p}" for p, n in sorted(by_precision.items(), key=lambda t: -t[1]))


def mix(precisions: dict[str, str]) -> str:
    """`5×f16, 4×w4a8, 1×w8a8`: how many of a policy's layers take each precision."""
    from collections import Counter

    return counts(Counter(precisions.values()))


def share(errors: list[float], tol: float) -> str:
    """`k/n`: how many of the relative errors are within ±`tol`."""
    return f"{sum(abs(e) <= tol for e in errors)}/{len(errors)}"


def rel(a: float, b: float) -> float:
    """(a - b) / b."""
    return (a - b) / b


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def cli(doc: str, run, quick_help: str = "a smoke run") -> tuple[dict, Path]:
    """A part's command line (`--quick`, `--results`), then `run(quick, results)`: its result and
    the results folder."""
    import argparse

    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=quick_help)
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args()
    return run(args.quick, args.results), args.results
