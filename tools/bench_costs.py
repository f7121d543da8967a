"""Part 3 of the benchmarks: what each stage costs, per model, on this machine.

    .venv/bin/python tools/bench_costs.py [--quick]     (or tools/bench_all.py --part costs)

Profile cold (an empty cache) and warm (the same cache again, median of 2), sensitivity per
method (taken from part 2's results when they are there, else measured here for the methods
that take seconds), solve under a latency budget (median of 5), one deploy of the all-int8
policy and one validate of that artifact on `host` (part 1 and part 4 time every other
deploy and validate). Results: bench_results/all/costs.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchkit  # noqa: E402
from benchkit import RESULTS, TARGET, log  # noqa: E402

CHEAP = ("ompq", "csmpq", "hawq")


def run_model(name: str, trained: bool, quick: bool, folder: Path, methods_result: dict | None) -> dict:
    from edgempq.export.stage import DeployConfig
    from edgempq.layers import trace
    from edgempq.pipeline import ValidateOptions, deploy, layer_precisions, sensitivity, validate
    from edgempq.profile import WholeModel, profile
    from edgempq.schema import Budget, Policy
    from edgempq.solve import solve
    from edgempq.targets import load_target

    work = folder / "costs" / name
    work.mkdir(parents=True, exist_ok=True)
    model, ds, meta = benchkit.trained_model(name) if trained else benchkit.random_model(name, work)
    layers = trace(model.module, model.input_shape)
    target = load_target(TARGET)
    whole = WholeModel(model.module, model.input_shape)
    out: dict = {"model": name, "layers": sum(la.searchable for la in layers)}
    old = os.environ.get("EDGEMPQ_CACHE")
    with tempfile.TemporaryDirectory() as cache:
        os.environ["EDGEMPQ_CACHE"] = cache
        try:
            log(f"{name}: profile, cold cache")
            def run_profile():
                return profile(layers, target, model.model_hash, whole=whole)

            table, out["profile_cold_s"] = benchkit.timed(run_profile)
            log(f"{name}: profile, warm cache")
            _, out["profile_warm_s"] = benchkit.timed(run_profile, 1 if quick else 2)
        finally:
            if old is None:
                os.environ.pop("EDGEMPQ_CACHE", None)
            else:
                os.environ["EDGEMPQ_CACHE"] = old
    out["profile_jobs"] = len(table.rows)
    sens_s = {}
    from_part2 = next((m for m in (methods_result or {}).get("models", []) if m["model"] == name), None)
    if from_part2:
        sens_s = {m: {"seconds": v["sensitivity_s"], "from": "in part 2 (widths 2/3/4/8)"}
                  for m, v in from_part2["search"].items()}
    precisions = layer_precisions(layers, device=TARGET)
    sens = None
    # HAWQ's Hessian probes on a 224x224 MobileNetV2 ran past 8 minutes: the trained models only
    for m in CHEAP if trained else CHEAP[:2]:
        if m in sens_s and sens is not None:
            continue
        log(f"{name}: {m} sensitivity")
        s, secs = benchkit.timed(lambda m=m: sensitivity(model, ds, m, precisions))
        sens = sens or s
        sens_s.setdefault(m, {"seconds": secs, "from": f"here ({TARGET}'s precisions)"})
    out["sensitivity"] = sens_s
    budget = Budget(latency_ms=0.5 * (table.whole_ms["w8a8"] + table.whole_ms["f32"]))
    _, out["solve_s"] = benchkit.timed(lambda: solve(layers, sens, table, budget, target), 5)
    int8 = Policy.uniform(layers, "w8a8")
    n = 1
    log(f"{name}: deploy x{n}")
    art = work / "int8"
    cfg = DeployConfig(profile=table, weights=meta["weights"], data_spec="mnist" if trained else "digits")
    _, out["deploy_s"] = benchkit.timed(lambda: deploy(model, ds, int8, TARGET, art, cfg), n)
    log(f"{name}: validate x{n}")
    samples = None if trained else 64
    opts = ValidateOptions(samples=samples, find_divergence=False)
    _, out["validate_s"] = benchkit.timed(lambda: validate(art, TARGET, opts), n)
    out["validate_samples"] = samples or len(ds.split("test")[1])
    return out


def run(quick: bool = False, folder: Path = RESULTS) -> dict:
    ms = benchkit.models(quick)
    part2 = benchkit.load("methods", folder)
    if part2 and part2.get("quick") != quick:
        part2 = None
    out = {"part": "costs", "quick": quick, "machine": benchkit.machine(), "models": []}
    for name, trained in [(n, True) for n in ms.trained] + [(n, False) for n in ms.latency_only]:
        out["models"].append(run_model(name, trained, quick, folder, part2 if trained else None))
        benchkit.save("costs", out, folder)  # each model as it finishes: a later failure keeps it
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one model, one repeat")
    run(ap.parse_args().quick)
