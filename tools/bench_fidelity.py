"""Part 4 of the benchmarks: does the artifact do what the simulation and the profile said?

    .venv/bin/python tools/bench_fidelity.py [--quick]     (or tools/bench_all.py --part fidelity)

Runs `edgempq validate` on `host` for every artifact part 1 deployed (part 1 runs first when
its artifacts are missing): top-1 of the simulation and of the artifact, their top-1
agreement and largest logit difference over the test split (64 samples of the digits for the
224x224 models with random weights), the latency the profile predicted against the one
validate measured, and the weight bytes predicted against those stored in the flatbuffer.
Results: bench_results/all/fidelity.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchkit  # noqa: E402
from benchkit import RESULTS, TARGET, log  # noqa: E402


def kinds_by_key(model_result: dict) -> dict[str, str]:
    """Each artifact's label: the kinds of policy (and budgets) that chose it."""
    out: dict[str, list[str]] = {}
    for r in model_result["rows"]:
        if r.get("feasible"):
            idx = r["budget_index"]
            if r["kind"] == "match":
                label = f"match of {r['for_kind']} #{r['for_budget'] + 1}"
            else:
                label = r["kind"] if idx is None else f"{r['kind']} #{idx + 1}"
            out.setdefault(r["key"], []).append(label)
    return {k: ", ".join(v) for k, v in out.items()}


def run(quick: bool = False, folder: Path = RESULTS, only: list[str] | None = None) -> dict:
    """Every artifact of part 1, or with `only` those models' again, replacing their results."""
    from edgempq.pipeline import ValidateOptions, validate

    part1 = benchkit.load("device", folder)
    missing = part1 is None or part1.get("quick") != quick or not all(
        Path(r["folder"]).is_dir() for m in part1["models"] for r in m["rows"] if r.get("folder"))
    if missing:
        log("part 1's artifacts are missing: running part 1 first")
        import bench_device

        part1 = bench_device.run(quick, folder)
    out = {"part": "fidelity", "quick": quick, "target": TARGET, "machine": benchkit.machine(), "models": []}
    old = {m["model"]: m for m in (benchkit.load("fidelity", folder) or {}).get("models", [])} if only else {}
    for m in part1["models"]:
        if only and m["model"] not in only:
            if m["model"] in old:
                out["models"].append(old[m["model"]])
            continue
        labels = kinds_by_key(m)
        arts = []
        for key, label in labels.items():
            d = folder / "artifacts" / m["model"] / key
            log(f"{m['model']}: validate {key} ({label})")
            samples = None if m["trained"] else 64
            opts = ValidateOptions(samples=samples, find_divergence=False)
            v, secs = benchkit.timed(lambda d=d, opts=opts: validate(d, TARGET, opts).to_dict())
            lat, size = v["latency"], v["size"]
            agree = v.get("agreement") or {}
            inter = next(r for r in m["rows"] if r.get("key") == key)["measured_ms"]
            inter_err = benchkit.rel(inter, lat["predicted_ms"]) if lat.get("predicted_ms") else None
            arts.append({"key": key, "interleaved_ms": inter, "interleaved_error": inter_err,
                         "label": label, "validate_s": secs, "samples": v["samples"],
                         "float_top1": v.get("float_top1"), "simulated_top1": v.get("simulated_top1"),
                         "artifact_top1": v["artifact_top1"], "agreement": agree.get("top1"),
                         "max_logit_error": agree.get("max_logit_error"),
                         "mean_logit_error": agree.get("mean_logit_error"), "logit_range": agree.get("logit_range"),
                         "predicted_ms": lat.get("predicted_ms"), "measured_ms": lat["median_ms"],
                         "latency_error": lat.get("error"), "tflite_bytes": size["tflite_bytes"],
                         "predicted_weight_bytes": size.get("weight_bytes_predicted"),
                         "stored_weight_bytes": size.get("weight_bytes_artifact")})
        out["models"].append({"model": m["model"], "trained": m["trained"], "artifacts": arts})
    benchkit.save("fidelity", out, folder)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the artifacts of part 1's quick run")
    run(ap.parse_args().quick)
