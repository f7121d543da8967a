"""Benchmark of the foundation: CLI start-up, training time and accuracy of the demo model, and
the simulated accuracies of the demo table. Medians over runs; numbers go to a JSON file.

    .venv/bin/python tools/bench_train.py [--runs 3] [--out bench_results/train.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from edgempq import demo, pipeline
from edgempq.files import write_json
from edgempq.pipeline import load_model_and_data, train_model, uniform_table


def cli_help_seconds(runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "edgempq", "--help"], check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", default="bench_results/train.json")
    args = ap.parse_args()
    train_s, test_top1, tables = [], [], []
    for seed in range(args.runs):
        cfg = replace(pipeline.DEMO_TRAIN, seed=seed)
        torch.manual_seed(seed)
        model, ds = load_model_and_data(demo.DEMO_MODEL, demo.DEMO_DATA)
        res, top1 = train_model(model, ds, cfg)
        train_s.append(res.seconds)
        test_top1.append(top1)
        tables.append({r.label: r.top1 for r in uniform_table(model, ds, ("w8a8", "w4a8", "w2a8"))})
        print(f"seed {seed}: trained in {res.seconds:.1f} s, test top-1 {top1:.4f}, {tables[-1]}", flush=True)
    result = {
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
        "model": demo.DEMO_MODEL, "data": demo.DEMO_DATA, "runs": args.runs,
        "cli_help_seconds_median": cli_help_seconds(5),
        "train_seconds_median": statistics.median(train_s),
        "train_seconds": train_s,
        "test_top1_median": statistics.median(test_top1),
        "test_top1": test_top1,
        "simulated_top1_median": {k: statistics.median(t[k] for t in tables) for k in tables[0]},
    }
    write_json(Path(args.out), result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
