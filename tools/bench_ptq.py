"""Part 5 of the benchmarks: low-bit PTQ, every weight algorithm, simulated and deployed.

    .venv/bin/python tools/bench_ptq.py [--quick]     (or tools/bench_all.py --part ptq)
    .venv/bin/python tools/bench_ptq.py --revalidate  # validate the saved artifacts again
    .venv/bin/python tools/bench_ptq.py --mixed       # simulate the mixed policies again (paired test)

The models are trained here the way a user quickly trains one (Adam, lr 2e-3, batch 64, four
epochs over the 3,700-digit MNIST training split, constant learning rate, no augmentation),
which leaves the weight outliers that make rounding to nearest fail (the demo's SGD training
does not): zoo:mnist_cnn (five conv-BN-ReLU blocks), zoo:mnist_resnet8 and zoo:mnist_mobilenet,
three seeds each. For each, uniform w8a8, w4a8, w4a16 (deployed on `host`, depthwise convs at
8-bit weights: host's quantizer has no int4 depthwise kernel) and w3a8, w2a8 (simulation only):
the float top-1, and per algorithm the simulated top-1 and PTQ time; deployed artifacts also
give their top-1 and the top-1 agreement with their simulation (`edgempq validate`).

Plus a ResNet-18 at 224x224 (random weights, 256 calibration images): PTQ time per algorithm;
and every mixed policy of parts 1 and 2 (when their results are there), simulated with the
first round's PTQ (min-max rounding, no bias correction) and with the default.
Results: bench_results/all/ptq.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchkit  # noqa: E402
from benchkit import RESULTS, TARGET, log  # noqa: E402

MODELS = ("mnist_cnn", "mnist_resnet8", "mnist_mobilenet")
SEEDS, QUICK_SEEDS = (0, 1, 2), (0,)
DEPLOYABLE = ("w8a8", "w4a8", "w4a16")
SIMULATED = ("w3a8", "w2a8")
USER_TRAIN = {"epochs": 4, "lr": 2e-3, "batch_size": 64}
# label -> (weights, params, bias correction, {precision: seeds} where not every one, deployed)
LEARNED = {"w4a8": SEEDS, "w3a8": SEEDS[:1], "w2a8": SEEDS[:1]}  # learned rounding costs minutes a run
CONFIGS = {
    "minmax": ("minmax", {}, False, None, True),  # the first round's PTQ
    "minmax+bc": ("minmax", {}, True, None, False),
    "mse+bc": ("mse", {}, True, None, False),
    "gptq": ("gptq", {}, False, None, False),
    "gptq+bc": ("gptq", {}, True, None, True),  # the default
    "adaround+bc": ("adaround", {}, True, LEARNED, True),
    "brecq+bc": ("adaround", {"granularity": "block"}, True, {"w4a8": SEEDS[:1], "w2a8": SEEDS[:1]}, False),
}
DEFAULT = "gptq+bc"
QUICK_CONFIGS = ("minmax", "gptq+bc")
FLOAT_GAP, AGREEMENT, R18_SECONDS = 0.01, 0.995, 300.0
SIGNIFICANT = 0.05  # a mixed policy is worse than min-max only if a paired exact test says so at this level
ESTIMATE_ITERS = (10, 30)  # learned rounding on ResNet-18: timed at these, extrapolated


def quant_config(label: str):
    from edgempq.quant import QuantConfig

    weights, params, bc, _, _ = CONFIGS[label]
    return QuantConfig(weights=weights, weight_params=params, bias_correction=bc)


def user_trained(name: str, seed: int, folder: Path):
    """A zoo model trained as a user would (cached in `folder`), its data and weights' path."""
    import torch
    from torch import nn

    from edgempq.metrics import accuracy
    from edgempq.simulation import load_model_and_data, state_bytes

    weights = folder / f"{name}-adam-{seed}.pt"
    if not weights.is_file():
        torch.manual_seed(seed)
        model, ds = load_model_and_data(f"zoo:{name}", "mnist")
        x, y = (torch.from_numpy(a) for a in ds.split("train"))
        m, gen = model.module.train(), torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(m.parameters(), lr=USER_TRAIN["lr"])
        for _ in range(USER_TRAIN["epochs"]):
            order = torch.randperm(len(x), generator=gen)
            for i in range(0, len(x), USER_TRAIN["batch_size"]):
                idx = order[i:i + USER_TRAIN["batch_size"]]
                loss = nn.functional.cross_entropy(m(x[idx]), y[idx].long())
                opt.zero_grad()
                loss.backward()
                opt.step()
        m.eval()
        log(f"{name} seed {seed}: trained, test top-1 {accuracy(m, *ds.split('test')):.3f}")
        folder.mkdir(parents=True, exist_ok=True)
        weights.write_bytes(state_bytes(m))
    model, ds = load_model_and_data(f"zoo:{name}", "mnist", weights)
    return model, ds, weights


def uniform(layers, text: str):
    """Every searchable layer at `text`; depthwise convs keep 8-bit weights (no int4 kernel)."""
    from edgempq.schema import Policy, Precision

    p = Precision.parse(text)
    return Policy({la.name: Precision(8, p.act_bits) if la.kind == "dwconv" and p.weight_bits < 8 else p
                   for la in layers if la.searchable})


def deployed_row(model, ds, policy, label: str, folder: Path, weights: Path) -> dict:
    """Deploy with `label`'s PTQ and validate on the target: simulated and artifact top-1."""
    from edgempq.export.stage import DeployConfig
    from edgempq.pipeline import ValidateOptions, deploy, validate

    t = time.perf_counter()
    rep = deploy(model, ds, policy, TARGET, folder, DeployConfig(quant_config(label), weights=weights,
                                                                 data_spec="mnist")).to_dict()
    deploy_s = time.perf_counter() - t
    val = validate(folder, TARGET, ValidateOptions(runs=1, find_divergence=False)).to_dict()
    return {"sim_top1": rep["simulated_top1"], "ptq_s": rep["ptq"]["seconds"], "deploy_s": deploy_s,
            "artifact_top1": val["artifact_top1"], "agreement": val["agreement"]["top1"],
            "exact_layers": rep["exact"]["layers"], "max_logit_error": val["agreement"]["max_logit_error"]}


def simulated_row(model, ds, policy, label: str) -> dict:
    from edgempq.pipeline import simulate

    _, res = simulate(model, ds, policy, quant_config(label))
    return {"sim_top1": res.top1, "ptq_s": res.ptq.seconds}


def run_model(name: str, seed: int, labels: tuple[str, ...], folder: Path) -> dict:
    from edgempq.layers import trace
    from edgempq.metrics import accuracy

    model, ds, weights = user_trained(name, seed, folder / "ptq_models")
    layers = trace(model.module, model.input_shape)
    out = {"model": name, "seed": seed, "float_top1": accuracy(model.module, *ds.split("test")), "rows": []}
    for prec in DEPLOYABLE + SIMULATED:
        for label in labels:
            runs = CONFIGS[label][3]
            if runs is not None and seed not in runs.get(prec, ()):
                continue
            log(f"{name} seed {seed}: {prec} {label}")
            policy = uniform(layers, prec)
            if prec in DEPLOYABLE and CONFIGS[label][4]:
                row = deployed_row(model, ds, policy, label, folder / "ptq_artifacts" / f"{name}-{seed}-{prec}-{label}",
                                   weights)
            else:
                row = simulated_row(model, ds, policy, label)
            out["rows"].append({"precision": prec, "ptq": label, **row})
    return out


def resnet18_times(labels: tuple[str, ...], folder: Path) -> dict:
    """PTQ wall time of each algorithm on a ResNet-18 at 224x224, 256 calibration images, w4a8."""
    from edgempq.data import with_splits
    from edgempq.layers import trace
    from edgempq.quant import quantize
    from edgempq.schema import Policy

    model, ds, _ = benchkit.random_model("resnet18", folder)
    ds = with_splits(ds, calibration=256, validation=16, test=16)
    x = ds.split("calibration")[0]
    policy = Policy.uniform(trace(model.module, model.input_shape), "w4a8")
    out = {"calibration": int(len(x)), "precision": "w4a8", "seconds": {}, "estimated": {}}

    def timed(cfg) -> float:
        t = time.perf_counter()
        quantize(model.module, policy, x, cfg)
        return time.perf_counter() - t

    for label in labels:
        log(f"resnet18: {label}")
        cfg = quant_config(label)
        if cfg.weights != "adaround":
            out["seconds"][label] = timed(cfg)
            continue
        # learned rounding of a 224x224 ResNet runs for 20 minutes (layer) to hours (block) on this
        # CPU: two short runs give the time per iteration, extrapolated to the default iterations
        # (labelled so)
        from dataclasses import replace

        from edgempq.quant.weights import algorithm

        short = [timed(replace(cfg, weight_params={**cfg.weight_params, "iters": n})) for n in ESTIMATE_ITERS]
        per_iter = (short[1] - short[0]) / (ESTIMATE_ITERS[1] - ESTIMATE_ITERS[0])
        iters = algorithm(cfg.weights, cfg.weight_params).params.iters
        out["estimated"][label] = {"iters": list(ESTIMATE_ITERS), "measured_s": short,
                                   "seconds": short[0] + per_iter * (iters - ESTIMATE_ITERS[0]), "at_iters": iters}
    return out


def mixed_policies(folder: Path) -> list[tuple[str, dict]]:
    """(model, precisions) of every distinct mixed policy parts 1 and 2 measured on the trained
    MNIST models."""
    seen, out = set(), []
    for part, field in (("device", "precisions"), ("methods", "bits")):
        res = benchkit.load(part, folder) or {}
        for m in res.get("models", []):
            if m["model"] not in benchkit.TRAINED:
                continue
            for r in m["rows"]:
                bits = r.get(field)
                if not r.get("feasible") or not bits or len(set(bits.values())) < 2:
                    continue
                key = (m["model"], tuple(sorted(bits.items())))
                if key not in seen:
                    seen.add(key)
                    out.append((m["model"], bits))
    return out


def mixed(folder: Path, quick: bool) -> dict:
    """The mixed policies of parts 1 and 2, simulated with the first round's PTQ and the default."""
    from edgempq.schema import Policy, Precision

    rows = []
    policies = mixed_policies(folder)[: 6 if quick else None]
    models = {}
    for i, (name, bits) in enumerate(policies):
        if name not in models:
            models[name] = benchkit.trained_model(name)[:2]
        model, ds = models[name]
        pol = Policy({k: Precision.parse(v) for k, v in bits.items()})
        log(f"mixed policy {i + 1}/{len(policies)} ({name})")
        old, new = (correct_on_test(model, ds, pol, label) for label in ("minmax", DEFAULT))
        rows.append({"model": name, "precisions": bits, "minmax_top1": float(old.mean()),
                     "default_top1": float(new.mean()), **paired(old, new)})
    return {"policies": len(rows), "rows": rows}


def correct_on_test(model, ds, policy, label: str):
    """Per test sample, whether `label`'s simulation of `policy` classifies it right."""
    from edgempq.pipeline import simulate

    q, _ = simulate(model, ds, policy, quant_config(label))
    return benchkit.correct_on_test(q, ds)


def paired(old, new) -> dict:
    """The samples only min-max gets right and only the default gets right, and the one-sided
    exact (McNemar / sign) test's p-value that the default is the worse: P(X >= only_minmax)
    for X ~ Binomial(discordant, 1/2)."""
    from edgempq.standing import p_worse

    b, c = int((old & ~new).sum()), int((new & ~old).sum())
    return {"only_minmax": b, "only_default": c, "p_worse": p_worse(b, c)}


def rerun_mixed(folder: Path = RESULTS) -> dict:
    """Simulate the mixed policies again (with per-sample outcomes), keeping the rest of part 5."""
    res = benchkit.load("ptq", folder)
    if res is None:
        raise SystemExit(f"no part 5 results in {folder}; run tools/bench_ptq.py first")
    res["mixed"] = mixed(folder, bool(res.get("quick")))
    res["mixed"]["date"] = benchkit.machine()["date"]
    benchkit.save("ptq", res, folder)
    return res


def run(quick: bool = False, folder: Path = RESULTS) -> dict:
    labels = QUICK_CONFIGS if quick else tuple(CONFIGS)
    out = {"part": "ptq", "quick": quick, "default": DEFAULT, "train": USER_TRAIN, "machine": benchkit.machine(),
           "configs": {k: {"weights": v[0], "params": v[1], "bias_correction": v[2], "runs": v[3],
                           "deployed": v[4]} for k, v in CONFIGS.items() if k in labels},
           "models": []}
    for name in MODELS[:1] if quick else MODELS:
        for seed in QUICK_SEEDS if quick else SEEDS:
            out["models"].append(run_model(name, seed, labels, folder))
            benchkit.save("ptq", out, folder)
    out["resnet18"] = resnet18_times(labels, folder)
    benchkit.save("ptq", out, folder)
    out["mixed"] = mixed(folder, quick)
    benchkit.save("ptq", out, folder)
    return out


# ---------------------------------------------------------------- BENCHMARKS.md


def _pts(v: float) -> str:
    return f"{100 * v:+.1f}"


def _rows(res: dict, prec: str, label: str) -> list[tuple[dict, dict]]:
    return [(m, r) for m in res["models"] for r in m["rows"] if r["precision"] == prec and r["ptq"] == label]


def targets(res: dict) -> list[list[str]]:
    """Rows of BENCHMARKS.md's Targets table."""
    out = []
    for name in dict.fromkeys(m["model"] for m in res["models"]):
        drops = [(m["seed"], m["float_top1"] - r["artifact_top1"]) for m, r in _rows(res, "w4a8", res["default"])
                 if m["model"] == name and "artifact_top1" in r]
        if drops:
            ok = all(d <= FLOAT_GAP + 1e-9 for _, d in drops)
            out.append([f"default PTQ ({res['default']}): uniform w4a8 deployed within {100 * FLOAT_GAP:.1f} point "
                        f"of float ({name}, Adam-trained)", ", ".join(f"seed {s}: {_pts(-d)}" for s, d in drops),
                        "met" if ok else "**not met**"])
    agree = [r["agreement"] for m in res["models"] for r in m["rows"] if "agreement" in r]
    if agree:
        out.append([f"simulation/artifact top-1 agreement ≥ {100 * AGREEMENT:.1f} % on every artifact of this part",
                    f"{len(agree)} artifacts, lowest {100 * min(agree):.1f} %, "
                    f"median {100 * statistics.median(agree):.1f} %",
                    "met" if min(agree) >= AGREEMENT else "**not met**"])
    t = res.get("resnet18", {}).get("seconds", {}).get(res["default"])
    if t is not None:
        out.append([f"PTQ of ResNet-18 at 224 (256 calibration images) with the default under "
                    f"{R18_SECONDS / 60:.0f} min",
                    f"{t:.0f} s", "met" if t <= R18_SECONDS else "**not met**"])
    mix = res.get("mixed", {}).get("rows", [])
    if mix:
        worse = [r for r in mix if r["default_top1"] < r["minmax_top1"]]
        out.append(["no mixed policy of parts 1 and 2 loses accuracy against the first round's min-max PTQ",
                    f"{len(mix) - len(worse)}/{len(mix)} policies as good or better",
                    "met" if not worse else "**not met**"])
        if all("p_worse" in r for r in mix):
            sig = [r for r in mix if r["p_worse"] < SIGNIFICANT]
            low = min(r["p_worse"] for r in worse) if worse else None
            out.append([f"… none significantly worse (paired exact test on the test samples, p < {SIGNIFICANT})",
                        f"{len(sig)} significantly worse" + (f"; lowest p among those below: {low:.2f}" if worse
                                                              else ""),
                        "met" if not sig else "**not met**"])
    return out


def section(res: dict, table) -> str:
    """BENCHMARKS.md's part 5, with `table(head, rows)` from bench_all."""
    labels = list(res["configs"])
    seeds = ", ".join(str(x) for x in sorted({m["seed"] for m in res["models"]}))
    out = ["## 5. Low-bit PTQ: the weight algorithms", "",
           f"Models trained here as a user quickly trains one (Adam, lr {USER_TRAIN['lr']}, batch "
           f"{USER_TRAIN['batch_size']}, {USER_TRAIN['epochs']} epochs over the MNIST training split, constant "
           f"learning rate, no augmentation), seeds {seeds}. Uniform policies; depthwise convs keep 8-bit "
           "weights (host's quantizer has no int4 depthwise kernel). "
           "Algorithms: `minmax` rounds to nearest on the min-max grid (the first round's PTQ), `mse` clips each "
           "channel by its output error, `gptq` is GPTQ (min-max grid, act-order), `adaround` is AdaRound "
           "layer by layer (every seed at w4a8, seed 0 at w3a8 and w2a8), `brecq` AdaRound block by block "
           "(seed 0, w4a8 and w2a8); `+bc` adds empirical bias correction. "
           f"The default is `{res['default']}`. Cells: top-1 change against float in points, simulated; deployed "
           "(artifact on `host`) in brackets. w3a8 and w2a8 are simulation only."
           + (f" The artifacts were validated again on {res['revalidated']} (`tools/bench_ptq.py --revalidate`) "
              "with the version that reads the simulation's logits as the artifact's integer output, rounds "
              "each integer layer's output as its op does (the rule measured on the artifact) and each residual "
              "add's output to the artifact's grid; their simulated top-1 is that simulation's."
              if res.get("revalidated") else ""), ""]
    for prec in DEPLOYABLE + SIMULATED:
        rows = []
        for m in res["models"]:
            cells = []
            for label in labels:
                r = next((r for r in m["rows"] if r["precision"] == prec and r["ptq"] == label), None)
                cells.append("–" if r is None else _pts(r["sim_top1"] - m["float_top1"])
                             + (f" [{_pts(r['artifact_top1'] - m['float_top1'])}]" if "artifact_top1" in r else ""))
            rows.append([f"{m['model']} #{m['seed']}", f"{100 * m['float_top1']:.1f} %", *cells])
        means = []
        for label in labels:
            d = [r["sim_top1"] - m["float_top1"] for m, r in _rows(res, prec, label)]
            means.append(f"**{_pts(statistics.mean(d))}** (worst {_pts(min(d))})" if d else "–")
        rows.append(["mean", "", *means])
        out += [f"### {prec}", "", table(["model #seed", "float", *labels], rows), ""]
    out += [_costs(res, labels, table), "", _fidelity(res, table), ""]
    if res.get("mixed", {}).get("rows"):
        out += [_mixed(res["mixed"]), ""]
    return "\n".join(out)


def _costs(res: dict, labels: list[str], table) -> str:
    rows = []
    for label in labels:
        t = [r["ptq_s"] for m in res["models"] for r in m["rows"] if r["ptq"] == label and r["precision"] == "w4a8"]
        r18 = res.get("resnet18", {}).get("seconds", {}).get(label)
        est = res.get("resnet18", {}).get("estimated", {}).get(label)
        r18_text = f"{r18:.0f} s" if r18 is not None else "–"
        if est:
            r18_text = (f"≈ {est['seconds'] / 60:.0f} min (estimated: {est['measured_s'][0]:.0f} s at "
                        f"{est['iters'][0]} and {est['measured_s'][1]:.0f} s at {est['iters'][1]} iterations, "
                        f"extrapolated to {est['at_iters']})")
        rows.append([label, f"{statistics.median(t):.1f} s" if t else "–", r18_text])
    r = res.get("resnet18", {})
    return "\n".join(["### PTQ time (wall, this machine)", "",
                      f"Calibration split of the MNIST models: 500 samples; ResNet-18 at 224x224 with random weights, "
                      f"{r.get('calibration', 256)} calibration images, {r.get('precision', 'w4a8')}. Each time "
                      "includes the two activation calibrations.", "",
                      table(["algorithm", "MNIST models, w4a8 (median)", "ResNet-18 @224"], rows)])


def _fidelity(res: dict, table) -> str:
    rows = []
    for label in res["configs"]:
        arts = [r for m in res["models"] for r in m["rows"] if r["ptq"] == label and "agreement" in r]
        if arts:
            ag = [r["agreement"] for r in arts]
            rows.append([label, str(len(arts)), f"{100 * min(ag):.1f} %", f"{100 * statistics.median(ag):.1f} %",
                         f"{sum(r['exact_layers'] for r in arts)}", f"{max(r['max_logit_error'] for r in arts):.3g}"])
    return "\n".join(["### Artifacts against their simulation", "",
                      "Every deployed artifact's integer weights, scales and biases are the simulation's, checked "
                      "bit for bit by deploy (layers checked below). Agreement: test samples whose top-1 class the "
                      "artifact and the simulation share.", "",
                      table(["algorithm", "artifacts", "agreement, lowest", "median", "layers checked bit for bit",
                             "largest logit error"], rows)])


def _mixed(mix: dict) -> str:
    rows = mix["rows"]
    diffs = [r["default_top1"] - r["minmax_top1"] for r in rows]
    worse = sorted(((d, r) for d, r in zip(diffs, rows, strict=True) if d < 0), key=lambda t: t[0])
    per = {}
    for r, d in zip(rows, diffs, strict=True):
        per.setdefault(r["model"], []).append(d)
    text = ", ".join(f"{k}: {len(v)} policies, median {_pts(statistics.median(v))}, range {_pts(min(v))} … "
                     f"{_pts(max(v))}" for k, v in per.items())
    out = ["### The mixed policies of parts 1 and 2", "",
           f"Every distinct mixed policy those parts measured on the demo-trained MNIST models ({len(rows)}), "
           "simulated with the first round's PTQ (min-max, no bias correction) and with the default; top-1 change "
           f"in points: {text}."]
    if worse:
        out.append("Policies where the default is below min-max: " + "; ".join(
            f"{r['model']} {_pts(d)} ({r['minmax_top1']:.3f} → {r['default_top1']:.3f}"
            + (f"; test samples only min-max gets right {r['only_minmax']}, only the default {r['only_default']}, "
               f"p = {r['p_worse']:.2f}" if "p_worse" in r else "") + ")" for d, r in worse) + ".")
    if all("p_worse" in r for r in rows):
        out.append(f"p is the one-sided exact sign (McNemar) test on the samples where the two disagree, that the "
                   f"default is the worse; below {SIGNIFICANT} would be a real loss"
                   + (f" (simulated again on {mix['date']})" if mix.get("date") else "") + ".")
    return "\n".join(out)


def revalidate(folder: Path = RESULTS) -> dict:
    """Validate every saved artifact of part 5 again with this version (a fix to the
    simulation or validate, without quantizing again): each deployed row takes the new
    simulated and artifact top-1, agreement and logit error, and the result says when."""
    from edgempq.pipeline import ValidateOptions, validate

    res = benchkit.load("ptq", folder)
    if res is None:
        raise SystemExit(f"no part 5 results in {folder}; run tools/bench_ptq.py first")
    for m in res["models"]:
        for r in m["rows"]:
            if "agreement" not in r:
                continue
            art = folder / "ptq_artifacts" / f"{m['model']}-{m['seed']}-{r['precision']}-{r['ptq']}"
            log(f"revalidate {art.name}")
            val = validate(art, TARGET, ValidateOptions(runs=1, find_divergence=False)).to_dict()
            r.update(sim_top1=val["simulated_top1"], artifact_top1=val["artifact_top1"],
                     agreement=val["agreement"]["top1"], max_logit_error=val["agreement"]["max_logit_error"])
    res["revalidated"] = benchkit.machine()["date"]
    benchkit.save("ptq", res, folder)
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one model, one seed, min-max and the default")
    ap.add_argument("--revalidate", action="store_true",
                    help="validate the saved artifacts again with this version, without quantizing again")
    ap.add_argument("--mixed", action="store_true",
                    help="simulate only the mixed policies of parts 1 and 2 again, keeping the rest")
    args = ap.parse_args()
    if args.revalidate:
        revalidate()
    if args.mixed:
        rerun_mixed()
    if not (args.revalidate or args.mixed):
        run(args.quick)
