"""The RAM model against TFLite Micro: for the four MLPerf Tiny architectures on tflm-host, the
arena `edgempq.arena` predicts for random mixed policies (and the uniform ones) against the arena
TFLite Micro's interpreter measures for the same whole model, built as deploy builds it.

    .venv/bin/python tools/bench_arena.py [--quick]      # writes bench_results/all/arena.json

Untrained weights: the arena depends on the graph and the precisions, not on the values."""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchkit  # noqa: E402
import benchnets  # noqa: E402
from benchkit import RESULTS, log  # noqa: E402

TARGET = "tflm-host"
POLICIES = 20  # random mixes per model, besides the uniform policies


def random_policies(layers: list, target: object, n: int, seed: int) -> dict[str, dict]:
    """The uniform policies and `n` random mixes of the target's integer precisions."""
    from edgempq.assign import uniform_assignment

    out = {}
    for p in ("w8a8", "w4a8", "w8a16"):
        assign = uniform_assignment(layers, target, p)
        if assign:
            out[f"uniform {p}"] = assign
    rng = random.Random(seed)
    for i in range(n):
        out[f"random {i:02d}"] = {la.name: rng.choice(target.allowed(la.kind)) for la in layers if la.searchable}
    return out


def bench_model(name: str, n: int, seed: int) -> dict:
    """Profile `name` on tflm-host (whole models included), then predict and measure each policy."""
    from edgempq.arena import arena_model
    from edgempq.backends import backend_for
    from edgempq.export.float_graph import float_tflite
    from edgempq.layers import trace
    from edgempq.memory import predicted_flash
    from edgempq.models import model_hash
    from edgempq.profile import WholeModel, profile, whole_tflite
    from edgempq.targets import load_target

    module = benchnets.NETS[name]().eval()
    shape = tuple(module.input_shape)
    layers, target = trace(module, shape), load_target(TARGET)
    whole = WholeModel(module, shape)
    table = profile(layers, target, model_hash(module), whole=whole)
    model = arena_model(table)
    timing = whole.timing_copy()
    base = float_tflite(timing, shape)
    rows = []
    with backend_for(target) as backend:
        for label, assign in random_policies(layers, target, n, seed).items():
            t0 = time.perf_counter()
            predicted = model.predict(assign).total
            dt = time.perf_counter() - t0
            tflite = whole_tflite(layers, base, assign, timing)
            measured = backend.ram_bytes(tflite)
            old = max(table.row(la.signature, assign[la.name]).ram_bytes for la in layers if la.searchable)
            flash = predicted_flash(table, layers, assign)
            rows.append({"policy": label, "measured": measured, "predicted": predicted, "largest_row": old,
                         "error": predicted / measured - 1, "predict_ms": dt * 1e3, "flash_bytes": len(tflite),
                         "flash_predicted": flash, "flash_error": flash / len(tflite) - 1,
                         "mix": {str(p): sum(str(q) == str(p) for q in assign.values()) for p in set(assign.values())}})
            log(f"{name} {label}: measured {measured / 1024:.1f} KB, predicted {predicted / 1024:.1f} KB "
                f"({rows[-1]['error']:+.2%})")
    return {"model": name, "policies": rows}


def run(quick: bool = False, folder: Path = RESULTS) -> dict:
    """Every MLPerf Tiny model (one with `quick`), the uniform and N random policies; saved as arena.json."""
    names = benchnets.MLPERF_TINY[:1] if quick else benchnets.MLPERF_TINY
    out = {"part": "arena", "quick": quick, "target": TARGET, "machine": benchkit.machine(), "models": []}
    for name in names:
        out["models"].append(bench_model(name, 4 if quick else POLICIES, 0))
        benchkit.save("arena", out, folder)
    return out


def section(result: dict, table: Callable) -> str:
    """BENCHMARKS.md's part 7: the hit rates per model, then the worst policies."""
    rows, worst = [], []
    for m in result["models"]:
        errs = [abs(r["error"]) for r in m["policies"]]
        old = [abs(r["largest_row"] / r["measured"] - 1) for r in m["policies"]]
        kbs = [r["measured"] / 1024 for r in m["policies"]]
        flash = [abs(r["flash_error"]) for r in m["policies"] if "flash_error" in r]
        rows.append([m["model"], len(errs), f"{min(kbs):.1f}–{max(kbs):.1f}",
                     *(benchkit.share(errs, tol) for tol in (0.01, 0.05, 0.10)), f"{100 * max(errs):.2f} %",
                     f"{100 * max(old):.0f} %",
                     f"{100 * max(flash):.1f} %" if flash else "–"])
        worst.append(max(m["policies"], key=lambda r: abs(r["error"])) | {"model": m["model"]})
    lines = ["## 7. TFLite Micro's arena: predicted against measured", "",
             f"On `{result['target']}`, for each MLPerf Tiny architecture, the uniform policies and random mixes of "
             "w8a8, w4a8 and w8a16: the arena `edgempq.arena` predicts from the profile (the float graph's "
             "skeleton and the measured uniform w8a8 arena) against the arena TFLite Micro's interpreter "
             "allocates for the same whole model, built as profile and deploy build it. The last column is "
             "the search's earlier RAM model (the largest single-layer arena), then the flash model's worst error "
             "against the file (`edgempq.memory`: each layer's single-layer model plus what the uniform whole models "
             "hold beyond their layers). Reproduce with "
             "`.venv/bin/python tools/bench_arena.py`.", "",
             table(["model", "policies", "measured KB", "within ±1 %", "within ±5 %", "within ±10 %", "worst error",
                    "earlier model's worst", "flash: worst error"], rows), "",
             "Worst policy per model: " + "; ".join(
                 f"{w['model']} {w['policy']} ({benchkit.counts(w['mix'])}): {w['measured'] / 1024:.1f} KB measured, "
                 f"{w['predicted'] / 1024:.1f} KB predicted" for w in worst) + "."]
    return "\n".join(lines)


def main() -> None:
    out, results = benchkit.cli(__doc__, run, "one model, four random policies")
    worst = max(abs(r["error"]) for m in out["models"] for r in m["policies"])
    log(f"worst |error| {worst:.2%}; wrote {results / 'arena.json'}")

if __name__ == "__main__":
    main()
