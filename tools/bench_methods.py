"""Part 2 of the benchmarks: the sensitivity methods, in simulation.

    .venv/bin/python tools/bench_methods.py [--quick]     (or tools/bench_all.py --part methods)

On the trained MNIST models, with the research weight widths {2, 3, 4, 8} and 8-bit
activations (fake-quantized, as the papers evaluate): every method scores the layers on the
calibration split, and the solver picks a policy under a size budget and under a BOPs budget
of 37.5, 50, 62.5 and 75 % of the all-8-bit model (about 3, 4, 5 and 6 bits on average). Each
policy's test top-1 is measured after PTQ (calibration split) and after a short QAT (one epoch
over 1000 training samples), beside the uniform 2/3/4/8-bit models and 5 random policies per
budget (random penalties, solved under the same budget, so they use it as fully as the
methods' policies). Also the search cost: sensitivity time + solve time per method.
Results: bench_results/all/methods.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchkit  # noqa: E402
from benchkit import RESULTS, log  # noqa: E402

WIDTHS = ("w2a8", "w3a8", "w4a8", "w8a8")
SHARES = (0.375, 0.5, 0.625, 0.75)
QUICK_SHARES = (0.5, 0.75)
METHODS = ("ompq", "csmpq", "hawq", "measured", "clado", "gmpq", "limpq")
QUICK_METHODS = ("ompq", "csmpq", "hawq")
RANDOM_POLICIES, QUICK_RANDOM = 5, 2
QAT_SAMPLES, QAT_EPOCHS = 1000, 1
METRICS = ("size", "bops")


class ResearchWidths:
    """A stand-in for a target in simulation: every searchable layer may take every width
    (the research widths are not deployable, so no device target lists them)."""

    name = "simulation"

    def __init__(self, widths: tuple[str, ...]) -> None:
        from edgempq.schema import Precision

        self.precisions = tuple(Precision.parse(w) for w in widths)

    def allowed(self, kind: str) -> tuple:
        return self.precisions


def random_sensitivity(layers, widths: tuple[str, ...], seed: int):
    """Uniform random penalties in [0, 1) per (layer, width): the solver under a budget then
    gives a random policy that uses the budget about as fully as a method's."""
    import numpy as np

    from edgempq.schema import Sensitivity

    rng = np.random.default_rng(seed)
    pen = {(la.name, w): float(rng.random()) for la in layers if la.searchable for w in widths}
    return Sensitivity(f"random{seed}", pen)


def budget_for(metric: str, share: float, int8: dict) -> dict:
    return {"size_kb": share * int8["size_bytes"] / 1024} if metric == "size" else {"bops": share * int8["bops"]}


def evaluate(model, ds, policy, qat: bool) -> dict:
    """Test top-1 after PTQ, and after a short QAT when `qat`."""
    from edgempq.data import spread
    from edgempq.metrics import accuracy
    from edgempq.pipeline import simulate
    from edgempq.quant import finetune
    from edgempq.standing import pack

    t = time.perf_counter()
    q, res = simulate(model, ds, policy)
    out = {"ptq_top1": res.top1, "ptq_s": time.perf_counter() - t, "ptq_correct": pack(benchkit.correct_on_test(q, ds))}
    if qat:
        t = time.perf_counter()
        x, y = ds.split("train")
        idx = spread(len(x), QAT_SAMPLES)
        finetune(q, x[idx], y[idx], QAT_EPOCHS)
        out.update(qat_top1=accuracy(q, *ds.split("test")), qat_s=time.perf_counter() - t)
    return out


def run_model(name: str, quick: bool) -> dict:
    import torch
    from bench_device import policy_key

    from edgempq.errors import InfeasibleError
    from edgempq.layers import policy_bops, policy_weight_bytes, trace
    from edgempq.pipeline import sensitivity
    from edgempq.schema import Budget, Policy
    from edgempq.solve import solve

    model, ds, meta = benchkit.trained_model(name)
    layers = trace(model.module, model.input_shape)
    target = ResearchWidths(WIDTHS)
    precisions = {la.name: list(target.precisions) for la in layers if la.searchable}
    int8_pol = Policy.uniform(layers, "w8a8")
    int8 = {"size_bytes": policy_weight_bytes(layers, int8_pol), "bops": policy_bops(layers, int8_pol)}
    shares = QUICK_SHARES if quick else SHARES
    methods = QUICK_METHODS if quick else METHODS

    sens, costs = {}, {}
    for m in methods:
        log(f"{name}: {m} sensitivity")
        torch.manual_seed(0)
        sens[m], costs[m] = benchkit.timed(lambda m=m: sensitivity(model, ds, m, precisions))
    for s in range(RANDOM_POLICIES if not quick else QUICK_RANDOM):
        sens[f"random{s}"] = random_sensitivity(layers, WIDTHS, s)

    rows, policies = [], {}
    solve_s: dict[str, list[float]] = {}
    for metric in METRICS:
        for share in shares:
            budget = budget_for(metric, share, int8)
            for label, sn in sens.items():
                t = time.perf_counter()
                try:
                    pol = solve(layers, sn, None, Budget(**budget), target)
                except InfeasibleError as e:
                    rows.append({"method": label, "metric": metric, "share": share, "feasible": False,
                                 "reason": str(e)})
                    continue
                solve_s.setdefault(label, []).append(time.perf_counter() - t)
                key = policy_key(pol.precisions)
                policies.setdefault(key, pol)
                rows.append({"method": label, "metric": metric, "share": share, "feasible": True, "key": key,
                             "size_bytes": pol.predicted["size_bytes"], "bops": pol.predicted["bops"],
                             "bits": {k: str(v) for k, v in pol.precisions.items()}})
    for w in WIDTHS:
        pol = Policy.uniform(layers, w)
        key = policy_key(pol.precisions)
        policies.setdefault(key, pol)
        rows.append({"method": f"uniform {w}", "metric": None, "share": None, "feasible": True, "key": key,
                     "size_bytes": policy_weight_bytes(layers, pol), "bops": policy_bops(layers, pol)})
    results = {}
    for i, (key, pol) in enumerate(policies.items()):
        log(f"{name}: policy {i + 1}/{len(policies)} PTQ + QAT")
        torch.manual_seed(0)
        results[key] = evaluate(model, ds, pol, qat=True)
    for r in rows:
        if r["feasible"]:
            r.update(results[r["key"]])
    search = {m: {"sensitivity_s": costs[m], "solve_s": statistics.median(solve_s.get(m, [0.0])),
                  "search_s": costs[m] + statistics.median(solve_s.get(m, [0.0])),
                  "unconstrained": unconstrained(layers, sens[m], target)} for m in methods}
    return {"model": name, "int8": int8, "float_top1": meta.get("test_top1"), "shares": list(shares),
            "methods": list(methods), "rows": rows, "search": search, "distinct_policies": len(policies)}


def unconstrained(layers, sens, target) -> dict:
    """The sanity check of CLADO's paper, for every method: with no budget the least-penalty
    policy should keep every layer at its widest width (a size budget no policy reaches)."""
    from edgempq.schema import Budget
    from edgempq.solve import solve

    pol = solve(layers, sens, None, Budget(size_kb=1e12), target)
    widest = str(max(target.precisions, key=lambda p: p.weight_bits))
    narrower = {k: str(v) for k, v in pol.precisions.items() if str(v) != widest}
    return {"widest": widest, "layers": len(pol.precisions), "narrower": narrower}


def run(quick: bool = False, folder: Path = RESULTS) -> dict:
    out = {"part": "methods", "quick": quick, "widths": list(WIDTHS),
           "qat": {"samples": QAT_SAMPLES, "epochs": QAT_EPOCHS}, "machine": benchkit.machine(),
           "models": [run_model(n, quick) for n in benchkit.models(quick).trained]}
    benchkit.save("methods", out, folder)
    if not quick:
        write_standing(out)
    return out


def write_standing(out: dict) -> Path:
    """The package's standing.json from a full run: each method's budgets below the random median,
    which `edgempq sensitivity` and `search` then tell the user (edgempq/standing.py)."""
    import json

    from edgempq.files import atomic_write_text
    from edgempq.standing import FILE, summarise

    day = str(out["machine"].get("date", ""))[:10]
    models = " and ".join(m["model"] for m in out["models"])
    source = (f"BENCHMARKS.md part 2 ({day}; {models}; weight widths "
              f"{'/'.join(w[1] for w in out['widths'])}, 8-bit activations, default PTQ)")
    atomic_write_text(FILE, json.dumps(summarise(out, source), indent=1) + "\n")
    log(f"wrote {FILE}")
    return FILE


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one model, three methods, two budgets")
    ap.add_argument("--standing", action="store_true",
                    help="only write edgempq/standing.json again from the saved results")
    args = ap.parse_args()
    if args.standing:
        write_standing(benchkit.load("methods"))
    else:
        run(args.quick)
