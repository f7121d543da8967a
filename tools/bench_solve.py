"""Benchmark of the integer program: median solve time (python-mip + CBC, one thread).

    .venv/bin/python tools/bench_solve.py [--repeats 7] [--out bench_results/solve.json]

Problems: the real layers of resnet18 (21) and mobilenet_v2 (53) at 224x224, 6 precisions each,
seeded random penalties, latencies that follow each layer's MACs with a per-precision speed
(int16 activations ten times slower, as measured on this CPU), the artifact's real weight bytes;
a latency budget halfway between the fastest and the slowest policy, plus a size budget. And
a dense pairwise objective (CLADO-like) over 19 layers x 3 precisions: every pair of choices
of two layers gets a term.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
import time
from pathlib import Path

SPEED = {"f32": 1.0, "f16": 1.05, "w8a8": 0.45, "w4a8": 0.8, "w8a16": 9.0, "w4a16": 10.0}  # ms per GMAC-ish


def layer_problem(model: str, seed: int):
    from edgempq.layers import trace, weight_bytes
    from edgempq.models import load_model
    from edgempq.program import Choice, Problem, totals
    from edgempq.schema import Budget, Precision

    m = load_model(f"zoo:{model}")
    layers = [la for la in trace(m.module, m.input_shape) if la.searchable]
    rng = random.Random(seed)
    choices = {}
    for la in layers:
        opts = []
        for p, speed in SPEED.items():
            prec = Precision.parse(p)
            bits = 16 if prec.is_float else prec.weight_bits
            opts.append(Choice(la.name, p, rng.random() * (16 - bits), la.macs / 1e9 * speed * 10,
                               weight_bytes(la, prec)))
        choices[la.name] = opts
    problem = Problem(choices)
    fast = totals(problem, {la: min(cs, key=lambda c: c.latency_ms).precision for la, cs in choices.items()})
    slow = totals(problem, {la: max(cs, key=lambda c: c.latency_ms).precision for la, cs in choices.items()})
    small = totals(problem, {la: min(cs, key=lambda c: c.size_bytes).precision for la, cs in choices.items()})
    budget = Budget(latency_ms=(fast["latency_ms"] + slow["latency_ms"]) / 2,
                    size_kb=small["size_bytes"] / 1024 * 2.5)
    return f"{model} ({len(layers)} layers x 6)", problem, budget


def pairwise_problem(seed: int):
    from edgempq.program import Choice, Problem
    from edgempq.schema import Budget

    rng = random.Random(seed)
    names, precs = [f"l{i}" for i in range(19)], {"w2a8": 0.3, "w4a8": 0.6, "w8a8": 1.0}
    choices = {la: [Choice(la, p, rng.uniform(0, 1) * (8 - int(p[1])), cost) for p, cost in precs.items()]
               for la in names}
    pairs = {((a, pa), (b, pb)): rng.gauss(0, 0.2) for a, b in itertools.combinations(names, 2)
             for pa in precs for pb in precs}
    return "pairwise (19 layers x 3, all pairs)", Problem(choices, pairs), Budget(latency_ms=19 * 0.6)


def main() -> None:
    from edgempq.program import solve_problem

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default="bench_results/solve.json")
    args = ap.parse_args()
    results = []
    for make in (lambda s: layer_problem("resnet18", s), lambda s: layer_problem("mobilenet_v2", s), pairwise_problem):
        times, label, status = [], "", ""
        for r in range(args.repeats):
            label, problem, budget = make(r)
            t0 = time.perf_counter()
            sol = solve_problem(problem, budget, time_limit_s=60)
            times.append(time.perf_counter() - t0)
            status = sol.status
        row = {"problem": label, "median_s": statistics.median(times), "max_s": max(times),
               "runs": args.repeats, "last_status": status}
        results.append(row)
        print(json.dumps(row), flush=True)
    from edgempq.files import write_json

    write_json(Path(args.out), {"results": results})


if __name__ == "__main__":
    main()
