"""The headline benchmarks, side by side, and BENCHMARKS.md.

    .venv/bin/python tools/bench_all.py                       # every part, then BENCHMARKS.md
    .venv/bin/python tools/bench_all.py --quick               # a smoke run: one model, few budgets
    .venv/bin/python tools/bench_all.py --part device --part fidelity
    .venv/bin/python tools/bench_all.py --render              # BENCHMARKS.md from the results there
    .venv/bin/python tools/bench_all.py --part ptq --splice   # rerun one part, keep the others' sections

Parts (each also runnable alone as tools/bench_<part>.py):
  device    device-aware vs proxy-aware (BOPs, size) policies, deployed and timed on `host`
  methods   the sensitivity methods in simulation: PTQ / short-QAT top-1 vs budget, search cost
  costs     profile cold/warm, sensitivity, solve, deploy, validate time per model
  fidelity  simulation vs artifact and predicted vs measured latency and size, per artifact
  ptq       the PTQ weight algorithms on Adam-trained models, simulated and deployed; ResNet-18 PTQ time;
            parts 1 and 2's mixed policies with the first round's PTQ and the default
  models    eleven edge architectures through every step of the pipeline (tools/benchnets.py)
  arena     TFLite Micro's arena predicted from the profile against the interpreter's, mixed policies
  latency   the latency model's hit rates (±5 %, ±10 %) on random mixed policies, host and tflm-host
  proof     latency-aware against size-only policies at the same budget, trained models, host and tflm-host
  distributed  sensitivity (clado, hawq) on 1 process against 2 under torchrun, and the one-process path
            before and after the distributed change (measured, clado, hawq; git worktrees)
  farm      a cold profile on one loopback ssh board against --spread over two
  arm64     each precision's artifact on an emulated arm64 board (qemu-user, over ssh) against host's answers

Each part writes bench_results/all/<part>.json; BENCHMARKS.md and its plots (benchmarks/*.png)
are written from whichever parts have results.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchkit  # noqa: E402
from bench_device import KINDS  # noqa: E402
from benchkit import RESULTS, log, mix  # noqa: E402

PARTS = ("device", "methods", "costs", "fidelity", "ptq", "models", "arena", "latency", "proof", "distributed",
         "farm", "arm64")
# fidelity right after the artifacts; ptq reads the policies of device and methods; costs reads methods
RUN_ORDER = ("device", "fidelity", "methods", "ptq", "costs", "models", "arena", "latency", "proof",
             "distributed", "farm", "arm64")
ROOT = Path(__file__).resolve().parent.parent
MD = ROOT / "BENCHMARKS.md"
SEARCH_TARGET_S = 30.0


def run_part(part: str, quick: bool, folder: Path, only: list[str] | None = None) -> float:
    import importlib

    t = time.perf_counter()
    mod = importlib.import_module(f"bench_{part}")
    if only:
        mod.run(quick, folder, only)
    else:
        mod.run(quick, folder)
    return time.perf_counter() - t


# ---------------------------------------------------------------- formatting

def pct(v: float | None, signed: bool = False, digits: int = 1) -> str:
    if v is None:
        return "–"
    return f"{100 * v:+.{digits}f} %" if signed else f"{100 * v:.{digits}f} %"


def ms(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def secs(v: float | None) -> str:
    if v is None:
        return "–"
    if v >= 120:
        return f"{v / 60:.1f} min"
    return f"{v:.2f} s" if v < 10 else f"{v:.0f} s"


def kb(v: float | None) -> str:
    return "–" if v is None else f"{v / 1024:.1f}"


def table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------- plots

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_device(m: dict, path: Path) -> Path:
    plt = _plt()
    trained = m["trained"]
    fig, axes = plt.subplots(1, 2 if trained else 1, figsize=(11 if trained else 6, 4), squeeze=False)
    ax = axes[0][0]
    budgets = m["latency_budgets_ms"]
    xs = list(range(1, len(budgets) + 1))
    ax.plot(xs, budgets, "k--", label="latency budget")
    styles = {"latency": ("tab:green", "o"), "bops": ("tab:red", "s"), "size": ("tab:blue", "^"),
              "bops-a8": ("tab:orange", "D"), "size-a8": ("tab:purple", "v")}
    for kind, (c, mk) in styles.items():
        pts = [(r["budget_index"] + 1, r["measured_ms"]) for r in m["rows"]
               if r["kind"] == kind and r.get("feasible") and r["budget_index"] is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker=mk, color=c, label=f"{kind} policy (measured)")
    measured = [r["measured_ms"] for r in m["rows"] if r.get("measured_ms")]
    if measured and max(measured) > 8 * min(measured):  # the 16-bit activation policies
        ax.set_yscale("log")
    ax.set_xlabel("budget (1 = tightest)")
    ax.set_ylabel("measured latency, ms")
    ax.set_title(f"{m['model']}: measured latency per budget")
    ax.set_xticks(xs)
    ax.legend(fontsize=8)
    if trained:
        ax = axes[0][1]
        for kind, (c, mk) in {**styles, "match": ("tab:olive", "*")}.items():
            pts = [(r["measured_ms"], 100 * r["top1"]) for r in m["rows"]
                   if r["kind"] == kind and r.get("feasible") and r.get("top1") is not None]
            if pts:
                ax.scatter(*zip(*pts, strict=True), marker=mk, color=c, label=kind, s=40)
        for r in m["rows"]:
            if r["kind"].startswith("uniform") and r.get("top1") is not None:
                ax.scatter([r["measured_ms"]], [100 * r["top1"]], marker="x", color="k", s=40)
                ax.annotate(r["kind"].split()[1], (r["measured_ms"], 100 * r["top1"]), fontsize=8)
        if measured and max(measured) > 8 * min(measured):
            ax.set_xscale("log")
        ax.set_xlabel("measured latency, ms")
        ax.set_ylabel("artifact top-1, %")
        ax.set_title("accuracy against measured latency")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plot_methods(m: dict, path: Path) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharey="row")
    for j, metric in enumerate(("size", "bops")):
        for i, phase in enumerate(("ptq", "qat")):
            ax = axes[i][j]
            for meth in m["methods"]:
                pts = sorted((r["share"], 100 * r[f"{phase}_top1"]) for r in m["rows"]
                             if r["method"] == meth and r["metric"] == metric and r.get("feasible"))
                if pts:
                    ax.plot(*zip(*pts, strict=True), marker="o", label=meth)
            rnd = [(r["share"], 100 * r[f"{phase}_top1"]) for r in m["rows"]
                   if r["method"].startswith("random") and r["metric"] == metric and r.get("feasible")]
            if rnd:
                ax.scatter(*zip(*rnd, strict=True), color="grey", marker=".", label="random")
            key = "size_bytes" if metric == "size" else "bops"
            for r in m["rows"]:
                if r["method"].startswith("uniform"):
                    share = r[key] / m["int8"][key]
                    if share <= max(m["shares"]) + 0.3:
                        ax.scatter([share], [100 * r[f"{phase}_top1"]], marker="x", color="k")
                        ax.annotate(r["method"].split()[1], (share, 100 * r[f"{phase}_top1"]), fontsize=8)
            ax.set_title(f"{m['model']}: {phase.upper()}, {metric} budget")
            ax.set_xlabel(f"budget, share of the all-8-bit {metric}")
            ax.set_ylabel("test top-1, %")
            if i == 0 and j == 0:
                ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- sections

RETIRED = ("at equal measured latency, latency-aware accuracy ≥ proxy accuracy",)  # target rows no part writes


def targets_section(dev: dict | None, meth: dict | None, ptq: dict | None = None,
                    latency: dict | None = None, proof: dict | None = None) -> str:
    out = ["## Targets", ""]
    rows = _latency_targets(latency) + _proof_targets(proof)
    if dev:
        for m in dev["models"]:
            s = m["summary"]["latency"]
            err = m["profile_error"]["max_abs"]
            errs = [abs(e) for e in m["profile_error"]["errors"]]
            typical = statistics.median(errs) if errs else 0.0
            verdict = "met" if s["within_profile_error"] else "**not met**"
            if s["within_profile_error"] and s["max_over"] is not None and s["max_over"] > typical:
                verdict += " (against the largest error, not the typical one)"
            rows.append([f"latency-aware policies exceed their budget by at most the profile's prediction error "
                         f"({m['model']})", f"largest over budget {pct(s['max_over'], True)}; prediction error on "
                         f"the {len(errs)} other policies: median ±{pct(typical)}, largest ±{pct(err)}", verdict])
        # part 1's accuracy at equal measured latency was retired for part 9's proof (RETIRED)
    if meth:
        rows += _method_targets(meth)
        for m in meth["models"]:
            for name in ("ompq", "csmpq"):
                if name in m["search"]:
                    t = m["search"][name]["search_s"]
                    rows.append([f"search ({name} sensitivity + solve) under {SEARCH_TARGET_S:.0f} s ({m['model']})",
                                 secs(t), "met" if t < SEARCH_TARGET_S else "**not met**"])
    if ptq:
        import bench_ptq

        rows += bench_ptq.targets(ptq)
    out.append(table(["target", "measured", ""], rows) if rows else "No results yet.")
    return "\n".join(out)


def _method_targets(meth: dict) -> list[list[str]]:
    """Part 2's targets per model: every method's PTQ top-1 at or above the random policies'
    median and non-decreasing in the budget (within 0.5 point); GMPQ within 2 points of HAWQ at
    the tightest feasible size budget from 0.5 up; with no budget every layer at its widest."""
    from edgempq.standing import SIGNIFICANT, summarise

    rows = []
    for m in meth["models"]:
        below = summarise({"models": [m]}, "")["methods"]
        lost = [f"{k} {b['metric']} {b['share']:g} ({b['top1']:.1f} vs {b['random_median']:.1f})"
                for k, v in below.items() for b in v["below_random"]]
        n = sum(v["budgets"] for v in below.values())
        rows.append([f"every method's PTQ top-1 ≥ the random policies' median at each feasible budget ({m['model']})",
                     f"{n - len(lost)} of {n}" + (f"; below: {', '.join(lost)}" if lost else ""),
                     "met" if not lost else "**not met**"])
        ps = [b["p_worse"] for v in below.values() for b in v["below_random"] if b["p_worse"] is not None]
        if ps:
            sig = sum(p < SIGNIFICANT for p in ps)
            rows.append([f"… none significantly below the median random policy (paired exact test on the test "
                         f"samples, p < {SIGNIFICANT}) ({m['model']})",
                         f"{sig} significantly below; lowest p {min(ps):.2g}", "met" if not sig else "**not met**"])
        drops = _drops(m)
        rows.append([f"PTQ top-1 non-decreasing in the budget within 0.5 point, every method ({m['model']})",
                     "; ".join(drops) if drops else "no drop over 0.5", "met" if not drops else "**not met**"])
        rows += _gmpq_target(m) + _unconstrained_target(m)
    return rows


def _ptq(m: dict, method: str, metric: str) -> list[tuple[float, float]]:
    """(share, PTQ top-1 in %) of `method`'s feasible policies under `metric`, by share."""
    return sorted((r["share"], 100 * r["ptq_top1"]) for r in m["rows"]
                  if r["method"] == method and r["metric"] == metric and r.get("feasible"))


def _drops(m: dict) -> list[str]:
    """Where a method's PTQ top-1 falls by more than 0.5 point as its budget loosens."""
    out = []
    for name in m["methods"]:
        for metric in ("size", "bops"):
            pts = _ptq(m, name, metric)
            out += [f"{name} {metric} {a:g} → {b:g}: {x:.1f} → {y:.1f}"
                    for (a, x), (b, y) in zip(pts, pts[1:], strict=False) if y < x - 0.5]  # noqa: PLR2004
    return out


def _gmpq_target(m: dict) -> list[list[str]]:
    if not {"gmpq", "hawq"} <= set(m["methods"]):
        return []
    both = [dict(_ptq(m, k, "size")) for k in ("gmpq", "hawq")]
    shares = [s for s in sorted(set(both[0]) & set(both[1])) if s >= 0.5]  # noqa: PLR2004
    if not shares:
        return [[f"GMPQ within 2 points of HAWQ at the tightest feasible size budget ≥ 0.5 ({m['model']})",
                 "no such budget feasible for both", "–"]]
    s = shares[0]
    gap = both[0][s] - both[1][s]
    return [[f"GMPQ within 2 points of HAWQ at the tightest feasible size budget ≥ 0.5 ({m['model']})",
             f"size {s:g}: GMPQ {both[0][s]:.1f} %, HAWQ {both[1][s]:.1f} % ({gap:+.1f})",
             "met" if gap >= -2 else "**not met**"]]  # noqa: PLR2004


def _unconstrained_target(m: dict) -> list[list[str]]:
    """Every method (CLADO's sanity check): with no budget, every layer at the widest width."""
    got = {k: v["unconstrained"] for k, v in m["search"].items() if "unconstrained" in v}
    if not got:
        return []
    off = [f"{k}: {len(u['narrower'])} of {u['layers']} narrower" for k, u in got.items() if u["narrower"]]
    return [[f"with no budget every layer at the widest width, every method ({m['model']})",
             "; ".join(off) if off else f"{len(got)} of {len(got)} methods", "met" if not off else "**not met**"]]


def _latency_targets(latency: dict | None) -> list[list[str]]:
    """Part 8's target per model and device: ≥ 90 % of the held-out policies within ±10 %."""
    rows = []
    for m in (latency or {}).get("models", []):
        errs = [abs(r["error"]) for r in m["policies"]]
        hit = sum(e <= 0.10 for e in errs)  # noqa: PLR2004
        rows.append([f"latency predicted within ±10 % for ≥ 90 % of random mixed policies ({m['model']}, "
                     f"{m['target']})", f"{hit}/{len(errs)} (±5 %: {sum(e <= 0.05 for e in errs)}/{len(errs)})",  # noqa: PLR2004
                     "met" if errs and hit >= 0.9 * len(errs) else "**not met**"])
    return rows


def _proof_targets(proof: dict | None) -> list[list[str]]:
    """Part 9's target per device: at equal budget and top-1 (±0.3 point), the latency-aware
    policy ≥ 20 % faster (measured) on at least three of four models."""
    rows = []
    models = (proof or {}).get("models", [])
    for target in sorted({m.get("target", "host") for m in models}):
        mine = [m for m in models if m.get("target", "host") == target]
        won = [m["model"] for m in mine if any((s["speedup"] or 0) >= 0.2 for s in m["summary"])]  # noqa: PLR2004
        rows.append([f"at equal budget and top-1 (±0.3 point), latency-aware ≥ 20 % faster on 3 of 4 models "
                     f"({target})", f"{len(won)} of {len(mine)}" + (f": {', '.join(won)}" if won else ""),
                     "met" if len(won) >= min(3, len(mine)) and mine else "**not met**"])
    return rows


def device_section(dev: dict, plots: Path, base: Path) -> str:
    out = ["## 1. Device-aware vs proxy-aware policies", "",
           f"On `{dev['target']}`. Per model: a fresh profile (measured in this run, so that prediction and "
           "measurement come from one session of the device), one sensitivity, and "
           f"{len(dev['models'][0]['latency_budgets_ms'])} latency budgets evenly between the all-int8 and the "
           "all-float latency the profile measured. At each budget the solver picks, with the same penalties, "
           "a policy under the latency budget from every precision the target runs (`latency`, edgempq); "
           "under a BOPs budget and a weight-size budget of the same relative tightness from the same "
           "precisions (`bops`, `size`: the latency budget's share of the all-int8 latency, applied to the "
           "all-int8 BOPs or size, as the papers set budgets); and under the same two budgets in the papers' "
           "search space, integer weights with 8-bit activations (`bops-a8`, `size-a8`). "
           "Each distinct policy is deployed (ONNX → onnx2tf → per-layer quantizer) and all the artifacts of "
           "a model are timed together in interleaved rounds (median of the rounds' medians). On the "
           "trained models each artifact's top-1 is measured on the test split, and for each proxy policy a "
           "latency-aware policy is solved under the proxy's measured latency (`match`: at most as slow) and "
           "timed in the same rounds: accuracy at equal measured latency. \"over\" is measured latency against the "
           "latency budget.", ""]
    for m in dev["models"]:
        i8 = m["int8"]
        out += [f"### {m['model']} ({'trained, MNIST' if m['trained'] else 'random weights, latency only'}, "
                f"input {'×'.join(map(str, m['input_shape'][1:]))})", "",
                f"Sensitivity `{m['method']}`; all-int8 {ms(i8['latency_ms'])} ms, all-f32 {ms(i8['f32_ms'])} ms "
                f"(profile); the profile's prediction error on the {m['profile_error']['policies']} policies it did "
                f"not choose (uniform and proxies), timed in the same rounds: "
                f"{', '.join(pct(e, True) for e in m['profile_error']['errors'])}; {m['rounds']} interleaved "
                "rounds.", ""]
        head = ["budget", "share of int8", "policy", "latency budget, ms", "predicted ms", "measured ms", "over",
                "weights KB", "BOPs ×1e6"] + (["top-1"] if m["trained"] else []) + ["precisions"]
        rows = []
        for i, lat in enumerate(m["latency_budgets_ms"]):
            for k in KINDS:
                r = next((r for r in m["rows"] if r["kind"] == k and r["budget_index"] == i), None)
                if r is None:
                    continue
                cells = [f"#{i + 1}", f"{lat / i8['latency_ms']:.2f}", k, ms(lat)]
                if not r["feasible"]:
                    rows.append(cells + ["infeasible"] + [""] * (len(head) - 5))
                    continue
                cells += [ms(r["predicted_ms"]), ms(r["measured_ms"]), pct(benchkit.rel(r["measured_ms"], lat), True),
                          kb(r["size_bytes"]), f"{r['bops'] / 1e6:.0f}"]
                cells += [pct(r.get("top1"))] if m["trained"] else []
                rows.append(cells + [mix(r["precisions"])])
        out += [table(head, rows), ""]
        uni = [r for r in m["rows"] if r["kind"].startswith("uniform")]
        refs = [f"{r['kind']} {ms(r['measured_ms'])} ms"
                + (f", top-1 {pct(r.get('top1'))}" if r.get("top1") is not None else "") for r in uni]
        out += ["Uniform references: " + "; ".join(refs) + ".", ""]
        s = m["summary"]
        out += [table(["policy", "policies", "over budget", "largest over", "median over"],
                      [[k, s[k]["policies"], s[k]["over_budget"], pct(s[k]["max_over"], True),
                        pct(s[k]["median_over"], True)] for k in KINDS if k in s]), ""]
        if m["equal_latency"]:
            out += ["Accuracy at equal measured latency (the latency-aware policy solved under the proxy's "
                    "measured latency):", "",
                    table(["budget", "proxy", "proxy ms", "proxy top-1", "latency-aware ms", "latency-aware top-1",
                           "gain"],
                          [[f"#{e['budget'] + 1}", e["proxy"], ms(e["proxy_ms"]), pct(e["proxy_top1"]),
                            ms(e["latency_ms"]), pct(e["latency_top1"]), pct(e["top1_gain"], True)]
                           for e in m["equal_latency"]]), ""]
        p = plot_device(m, plots / f"device_{m['model']}.png")
        out += [f"![{m['model']}: device-aware vs proxy]({os.path.relpath(p, base)})", ""]
    return "\n".join(out)


def methods_section(meth: dict, plots: Path, base: Path) -> str:
    out = ["## 2. Sensitivity methods (simulation)", "",
           f"Weight widths {{{', '.join(w[1:-2] for w in meth['widths'])}}}, 8-bit activations, fake-quantized. "
           "Budgets are shares of the all-8-bit model's weight size or BOPs (0.5 ≈ 4 bits on average). PTQ "
           f"calibrates on the calibration split; QAT then trains {meth['qat']['epochs']} epoch over "
           f"{meth['qat']['samples']} training samples (LSQ steps). Random: policies per budget from random "
           "penalties solved under the same budget (median, min–max). Test top-1 on the 1000-sample test split.", ""]
    for m in meth["models"]:
        out += [f"### {m['model']} (float top-1 {pct(m['float_top1'])})", ""]
        for phase in ("ptq", "qat"):
            head = ["method"] + [f"{metric} {s:g}" for metric in ("size", "bops") for s in m["shares"]]
            rows = []
            for meth_name in m["methods"]:
                cells = [meth_name]
                for metric in ("size", "bops"):
                    for s in m["shares"]:
                        r = next((r for r in m["rows"] if r["method"] == meth_name and r["metric"] == metric
                                  and r["share"] == s), None)
                        cells.append(pct(r[f"{phase}_top1"]) if r and r.get("feasible") else "infeasible")
                rows.append(cells)
            n_random = len({r["method"] for r in m["rows"] if r["method"].startswith("random")})
            cells = [f"random ({n_random})"]
            for metric in ("size", "bops"):
                for s in m["shares"]:
                    v = [r[f"{phase}_top1"] for r in m["rows"] if r["method"].startswith("random")
                         and r["metric"] == metric and r["share"] == s and r.get("feasible")]
                    cells.append(f"{pct(statistics.median(v))} ({100 * min(v):.1f}–{100 * max(v):.1f})" if v else "–")
            rows.append(cells)
            out += [f"Top-1 after {phase.upper()}:", "", table(head, rows), ""]
        uni = [r for r in m["rows"] if r["method"].startswith("uniform")]
        out += [table(["uniform", "size share", "BOPs share", "PTQ top-1", "QAT top-1"],
                      [[r["method"].split()[1], f"{r['size_bytes'] / m['int8']['size_bytes']:.3f}",
                        f"{r['bops'] / m['int8']['bops']:.3f}", pct(r["ptq_top1"]), pct(r.get("qat_top1"))]
                       for r in uni]), ""]
        p = plot_methods(m, plots / f"methods_{m['model']}.png")
        out += [f"![{m['model']}: methods]({os.path.relpath(p, base)})", ""]
    out += ["### Search cost (sensitivity + median solve, wall time)", ""]
    meths = meth["models"][0]["methods"]

    def cost(s: dict) -> str:
        return f"{secs(s['search_s'])} ({secs(s['sensitivity_s'])} + {s['solve_s'] * 1000:.0f} ms)"

    out.append(table(["method"] + [m["model"] for m in meth["models"]],
                     [[name] + [cost(m["search"][name]) for m in meth["models"]] for name in meths]))
    return "\n".join(out)


def costs_from_other_parts(dev: dict | None, meth: dict | None) -> dict | None:
    """Part 3's table from what parts 1 and 2 timed, when part 3 did not run: part 1's fresh
    profile is a cold one; no warm profile was timed."""
    if not dev:
        return None
    part2 = {m["model"]: m for m in (meth or {}).get("models", [])}
    models = []
    for m in dev["models"]:
        sens = {m["method"]: {"seconds": m["sensitivity_s"], "from": f"in part 1 ({TARGET_NAME}'s precisions)"}}
        for name, v in part2.get(m["model"], {}).get("search", {}).items():
            sens.setdefault(name, {"seconds": v["sensitivity_s"], "from": "in part 2 (widths 2/3/4/8)"})
        solves = [r["solve_s"] for r in m["rows"] if r.get("solve_s")]
        searched = next(r for r in m["rows"] if r.get("precisions"))["precisions"]
        models.append({"model": m["model"], "layers": len(searched),
                       "profile_cold_s": m["profile_s"], "profile_warm_s": None, "sensitivity": sens,
                       "solve_s": statistics.median(solves) if solves else 0.0, "deploy_s": None, "validate_s": None,
                       "validate_samples": 1000 if m["trained"] else 64})
    return {"part": "costs", "derived": True, "models": models}


TARGET_NAME = "host"


def costs_section(costs: dict, dev: dict | None = None, fid: dict | None = None) -> str:
    methods = list(dict.fromkeys(k for m in costs["models"] for k in m["sensitivity"]))
    head = ["model", "layers", "profile cold", "profile warm"] + [f"sens. {k}" for k in methods] + \
        ["solve", "deploy", "validate"]
    deploys = {m["model"]: list({r["key"]: r["deploy_s"] for r in m["rows"] if r.get("deploy_s")}.values())
               for m in (dev or {}).get("models", [])}
    validates = {m["model"]: [a["validate_s"] for a in m["artifacts"]] for m in (fid or {}).get("models", [])}

    def median_of(values: list[float], one: float) -> str:
        return f"{secs(statistics.median(values))} (median of {len(values)})" if values else secs(one)

    rows = []
    for m in costs["models"]:
        rows.append([m["model"], m["layers"], secs(m["profile_cold_s"]), secs(m["profile_warm_s"])]
                    + [secs(m["sensitivity"][k]["seconds"]) if k in m["sensitivity"] else "–" for k in methods]
                    + [f"{m['solve_s'] * 1000:.0f} ms", median_of(deploys.get(m["model"], []), m["deploy_s"]),
                       f"{median_of(validates.get(m['model'], []), m['validate_s'])}, "
                       f"{m['validate_samples']} samples"])
    sources = sorted({v["from"] for m in costs["models"] for v in m["sensitivity"].values()})
    derived = ("Part 3 did not finish in this run; this table is made from what parts 1, 2 and 4 timed: "
               "the cold profile is part 1's fresh profile, the solve the median over part 1's solves, and "
               "no warm profile was timed. ") if costs.get("derived") else ""
    return "\n".join(["## 3. Costs (wall time on this machine)", "", derived +
                      "Profile cold: an empty cache (every layer at every precision of `host`, plus the whole "
                      "model at each uniform and alternating policy); warm: the same cache again. Solve: a "
                      "latency budget halfway between all-int8 and all-f32, median of 5. Deploy and validate: "
                      "the median over every artifact of parts 1 and 4 (validate on `host`, no divergence "
                      "search; else one all-int8 artifact). Sensitivity measured "
                      f"{'; '.join(sources)}.", "", table(head, rows)])


def fidelity_section(fid: dict) -> str:
    out = ["## 4. Fidelity: the artifact against the simulation and the profile", "",
           "Every artifact of part 1, through `edgempq validate` on `host`. Agreement: the share of test samples "
           "where the artifact's and the simulation's top-1 class match; logit error: |artifact − simulation| "
           "over every test sample and class. Latency: what the profile predicted against validate's own "
           "timing (one run of the target's repetitions, minutes after part 1) and against part 1's "
           "interleaved timing. Weights: "
           "bytes predicted by the solver's size model against the bytes stored in the flatbuffer.", ""]
    for m in fid["models"]:
        arts = m["artifacts"]
        errs = [abs(a["latency_error"]) for a in arts if a["latency_error"] is not None]
        inter = [abs(a["interleaved_error"]) for a in arts if a.get("interleaved_error") is not None]
        out += [f"### {m['model']}" + ("" if m["trained"] else " (random weights, 64 digits samples)"), "",
                table(["policy", "simulated top-1", "artifact top-1", "agreement", "logit error max / mean",
                       "predicted ms", "validate ms", "error", "part 1 ms (interleaved)", "error",
                       "weights KB predicted", "stored"],
                      [[a["label"], pct(a["simulated_top1"]), pct(a["artifact_top1"]), pct(a["agreement"]),
                        "–" if a["max_logit_error"] is None
                        else f"{a['max_logit_error']:.3f} / {a['mean_logit_error']:.4f}",
                        ms(a["predicted_ms"]), ms(a["measured_ms"]), pct(a["latency_error"], True),
                        ms(a.get("interleaved_ms")), pct(a.get("interleaved_error"), True),
                        kb(a["predicted_weight_bytes"]), kb(a["stored_weight_bytes"])] for a in arts]), ""]
        if errs:
            exact = sum(a["predicted_weight_bytes"] == a["stored_weight_bytes"] for a in arts)
            out += [f"Latency error over {len(errs)} artifacts (absolute): validate's timing median "
                    f"{pct(statistics.median(errs))}, largest {pct(max(errs))}"
                    + (f"; part 1's interleaved timing median {pct(statistics.median(inter))}, largest "
                       f"{pct(max(inter))}" if inter else "")
                    + f". Weight bytes: {exact}/{len(arts)} exact.", ""]
    return "\n".join(out)


def part_sections(parts: dict, plots: Path, base: Path) -> dict[str, str]:
    """Each part's section of BENCHMARKS.md (with its blank line), in reading order, for the parts
    with results (costs also from parts 1 and 2's timings)."""
    out = {}
    if parts["device"]:
        out["device"] = device_section(parts["device"], plots, base) + "\n"
    if parts["methods"]:
        out["methods"] = methods_section(parts["methods"], plots, base) + "\n"
    costs = parts["costs"] or costs_from_other_parts(parts["device"], parts["methods"])
    if costs:
        out["costs"] = costs_section(costs, parts["device"], parts["fidelity"]) + "\n"
    if parts["fidelity"]:
        out["fidelity"] = fidelity_section(parts["fidelity"]) + "\n"
    import importlib

    for part in ("ptq", "models", "arena", "latency", "proof", "distributed", "farm", "arm64"):
        if parts[part]:  # the parts whose tools/bench_<part>.py writes its own section
            out[part] = importlib.import_module(f"bench_{part}").section(parts[part], table) + "\n"
    return out


def _sections(text: str) -> list[str]:
    """`text` cut before each `## ` heading: the preamble, then one piece a section."""
    import re

    return re.split(r"(?m)^(?=## )", text)


def splice(only: list[str], folder: Path = RESULTS, md: Path = MD, note: str | None = None) -> Path:
    """Re-render in an existing BENCHMARKS.md only the sections of the parts in `only`, from the
    results in `folder`, keeping every other section as it was measured before; their target rows
    replace the rows of the same target and the others are appended. For a part run again alone,
    when the other parts' results are not on this machine. `note` says so at the top."""
    from edgempq.files import atomic_write_text

    if not md.is_file():
        raise SystemExit(f"{md} does not exist; run without --splice to write it from every part")
    parts = {p: benchkit.load(p, folder) if p in only else None for p in PARTS}
    missing = [p for p in only if parts[p] is None]
    if missing:
        raise SystemExit(f"no results for part(s) {', '.join(missing)} in {folder}; run them first")
    plots = md.parent / "benchmarks"
    plots.mkdir(parents=True, exist_ok=True)
    # only the parts asked for: costs would otherwise be rebuilt from a rerun part 1 alone
    fresh = {p: text for p, text in part_sections(parts, plots, md.parent).items() if p in only}
    pieces = _sections(md.read_text())
    head, body = pieces[0], pieces[1:]
    titles = {_part_key(t) for t in fresh.values()}
    out = [piece for piece in body if _part_key(piece) not in titles]  # by number: a title may change
    out = [_merge_targets(piece, targets_section(parts["device"], parts["methods"], parts["ptq"], parts["latency"],
                                                 parts["proof"]))
           if piece.startswith("## Targets") else piece for piece in out]
    out += [fresh[p] for p in PARTS if p in fresh]
    out.sort(key=_section_order)
    if note:
        head = head.rstrip("\n") + "\n\n" + note + "\n\n"
    return atomic_write_text(md, (head + "".join(p if p.endswith("\n\n") else p.rstrip("\n") + "\n\n"
                                                 for p in out)).rstrip() + "\n")


def _part_key(piece: str) -> str:
    """What identifies a section across runs: its part number ("## 9."), else its whole title."""
    title = piece.split("\n", 1)[0]
    number = title[3:].split(".", 1)[0]
    return f"## {number}." if title.startswith("## ") and number.isdigit() else title


def _section_order(piece: str) -> tuple[int, str]:
    """Targets first, then the numbered parts in their order."""
    title = piece.split("\n", 1)[0]
    number = title[3:].split(".", 1)[0]
    return (0, "") if title.startswith("## Targets") else (1, number.zfill(3) if number.isdigit() else title)


def _merge_targets(old: str, new: str) -> str:
    """The old Targets table with the new table's rows: same target replaced, others appended."""
    rows = [line for line in new.splitlines() if line.startswith("| ") and not line.startswith("| target |")]
    if not rows and not any(f"| {r}" in old for r in RETIRED):
        return old
    key = {r.split(" | ", 1)[0]: r for r in rows}
    lines = old.rstrip("\n").splitlines()
    kept = [line for line in lines if line.split(" | ", 1)[0] not in key
            and not any(line.startswith(f"| {r}") for r in RETIRED)]
    return "\n".join(kept + rows) + "\n\n"


def render(folder: Path = RESULTS, md: Path = MD, plots: Path | None = None, wall: dict | None = None,
           note: str | None = None) -> Path:
    """BENCHMARKS.md from the parts' results in `folder`; the plots go into `plots` (default:
    benchmarks/ beside the Markdown file)."""
    from edgempq.files import atomic_write_text

    parts = {p: benchkit.load(p, folder) for p in PARTS}
    plots = plots or md.parent / "benchmarks"
    plots.mkdir(parents=True, exist_ok=True)
    mach = next((r["machine"] for r in parts.values() if r), benchkit.machine())
    quick = any(r and r.get("quick") for r in parts.values())
    cmd = ".venv/bin/python tools/bench_all.py" + (" --quick" if quick else "")
    lines = ["# Benchmarks", "",
             "Generated by `tools/bench_all.py` from the results in `bench_results/all/`; do not edit by hand. "
             "Reproduce from a fresh clone:", "", "```", "make install", cmd, "```", "",
             f"{'A `--quick` smoke run: one model, few budgets and methods. ' if quick else ''}"
             "Every comparison within a part is measured in one run, side by side.", "",
             table(["machine", ""], [["CPU", mach["cpu"]], ["cores", mach["cores"]],
                                     ["memory", f"{mach['memory_gb']} GB"], ["OS", mach["os"]],
                                     ["Python", mach["python"]],
                                     ["packages", ", ".join(f"{k} {v}" for k, v in mach["packages"].items())],
                                     ["measured", mach["date"]]]), ""]
    if note:
        lines += [note, ""]
    if wall:
        lines += ["Wall time of this run: " + ", ".join(f"{k} {secs(v)}" for k, v in wall.items()) + ".", ""]
    lines += [targets_section(parts["device"], parts["methods"], parts["ptq"], parts["latency"], parts["proof"]), ""]
    lines += [text for text in part_sections(parts, plots, md.parent).values()]
    return atomic_write_text(md, "\n".join(lines).rstrip() + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description="The headline benchmarks and BENCHMARKS.md.")
    ap.add_argument("--part", action="append", choices=PARTS, help="run only this part (repeatable)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: one model, few budgets and methods")
    ap.add_argument("--render", action="store_true", help="only write BENCHMARKS.md from the results there")
    ap.add_argument("--results", type=Path, default=RESULTS, help="the results folder (default %(default)s)")
    ap.add_argument("--md", type=Path, default=MD, help="the Markdown file to write (default BENCHMARKS.md)")
    ap.add_argument("--note", help="a sentence about this run for the reader (e.g. what else ran)")
    ap.add_argument("--splice", action="store_true",
                    help="rewrite only the --part sections in the existing BENCHMARKS.md, keep the others")
    ap.add_argument("--model", action="append", dest="only",
                    help="parts device and fidelity: run only this model again, keeping the others' results")
    args = ap.parse_args()
    if args.splice and not args.part:
        sys.exit("--splice needs the --part(s) to rewrite")
    if args.splice and not args.md.is_file():
        sys.exit(f"{args.md} does not exist; run without --splice to write it from every part")
    wall, failed = {}, []
    if not args.render:
        for part in [p for p in RUN_ORDER if p in (args.part or PARTS)]:
            log(f"part {part}")
            try:
                wall[part] = run_part(part, args.quick, args.results,
                                      args.only if part in ("device", "fidelity") else None)
            except Exception:  # noqa: BLE001 - the other parts still run; this one is reported
                import traceback

                traceback.print_exc()
                failed.append(part)
    if args.splice:
        path = splice(args.part, args.results, args.md, args.note)
    else:
        path = render(args.results, args.md, wall=wall or None, note=args.note)
    log(f"wrote {path}")
    if failed:
        sys.exit(f"part(s) {', '.join(failed)} failed; see the traceback above")


if __name__ == "__main__":
    main()
