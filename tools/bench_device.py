"""Part 1 of the benchmarks: device-aware vs proxy-aware policies.

    .venv/bin/python tools/bench_device.py [--quick]     (or tools/bench_all.py --part device)

Per model, on `host`: a fresh profile (not the cache: prediction and measurement then come
from one session of the device), one sensitivity (`measured` with KL to the float logits on the
trained MNIST models, `csmpq` on the 224x224 models with random weights), and 5 latency budgets
evenly between the all-int8 and the all-float whole-model latency the profile measured. At each
budget the solver picks, with the same penalties:

- `latency`: under the profile's latency budget, from every precision the target runs (edgempq);
- `bops` and `size`: under a BOPs or weight-size budget of the same relative tightness (the
  papers' way: the latency budget's share of the all-int8 latency, applied to the all-int8
  model's BOPs or size), from the same precisions;
- `bops-a8` and `size-a8`: the same budgets in the papers' search space, integer weights with
  8-bit activations only.

Every distinct policy is deployed (the real export: ONNX, onnx2tf, the per-layer quantizer)
and the artifacts of one model are timed side by side in interleaved rounds. On the trained
models each artifact's top-1 is measured on the test split, and for every proxy policy a
latency-aware policy is solved under the proxy's measured latency (`match`), deployed and
timed in the same rounds: the accuracy at equal measured latency. Results:
bench_results/all/device.json; the artifacts stay in bench_results/all/artifacts/ for part 4.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchkit  # noqa: E402
from benchkit import RESULTS, TARGET, log  # noqa: E402

if TYPE_CHECKING:
    from edgempq.backends.base import Backend
    from edgempq.data import Dataset
    from edgempq.models import LoadedModel
    from edgempq.schema import CostTable, Policy, Sensitivity, Target

POSITIONS = (1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6)  # of the way from the faster to the slower uniform model
QUICK_POSITIONS = (2 / 6, 4 / 6)
ROUNDS, QUICK_ROUNDS = 5, 2
KINDS = ("latency", "bops", "size", "bops-a8", "size-a8")
PROXIES = KINDS[1:]


def proxy_budgets(latency_ms: float, int8: dict) -> dict:
    """The budgets of one relative tightness: `latency_ms`, and the same share of the
    all-int8 model's BOPs and weight size (for the proxies in either search space)."""
    share = latency_ms / int8["latency_ms"]
    bops, size = {"bops": share * int8["bops"]}, {"size_kb": share * int8["size_bytes"] / 1024}
    return {"share_of_int8": share, "latency": {"latency_ms": latency_ms},
            "bops": bops, "size": size, "bops-a8": bops, "size-a8": size}


def papers_space(target: Target) -> Target:
    """The target restricted to the papers' search space: integer weights with 8-bit
    activations (no float layers, no 16-bit activations)."""
    return replace(target, precisions={k: tuple(p for p in ps if not p.is_float and p.act_bits == 8)
                                       for k, ps in target.precisions.items()})


def latency_budgets(int8_ms: float, f32_ms: float, positions: tuple[float, ...]) -> list[float]:
    """Budgets evenly between the all-int8 and the all-float latency (whichever is faster first)."""
    lo, hi = sorted((int8_ms, f32_ms))
    return [lo + (hi - lo) * p for p in positions]


def policy_key(precisions: dict) -> str:
    """A short stable key of a policy's precisions: its artifact folder's name."""
    return hashlib.sha256(json.dumps(sorted((k, str(v)) for k, v in precisions.items())).encode()).hexdigest()[:10]


def profile_error(rows: list[dict]) -> dict:
    """The profile's prediction error, measured on the policies it did not choose (uniform and
    proxy policies), timed in the same rounds as the latency-aware ones: (measured -
    predicted) / predicted, as a budget's overshoot is (measured - budget) / budget."""
    held_out = {r["key"]: r for r in rows if r.get("feasible") and r["kind"] not in ("latency", "match")}
    errs = {k: benchkit.rel(r["measured_ms"], r["predicted_ms"]) for k, r in held_out.items()}
    return {"max_abs": max((abs(e) for e in errs.values()), default=0.0), "policies": len(errs),
            "errors": sorted(errs.values())}


def equal_latency(rows: list[dict]) -> list[dict]:
    """Per proxy policy, the latency-aware policy solved under its measured latency: both
    measured latencies and accuracies, and the accuracy difference (latency-aware minus proxy)."""
    by_key = {r["key"]: r for r in rows if r.get("feasible")}
    out = []
    for r in rows:
        if r["kind"] not in PROXIES or not r.get("feasible") or r.get("match") is None:
            continue
        m = by_key.get(r["match"])
        if m is None or m.get("top1") is None or r.get("top1") is None:
            continue
        out.append({"budget": r["budget_index"], "proxy": r["kind"], "proxy_ms": r["measured_ms"],
                    "proxy_top1": r["top1"], "latency_ms": m["measured_ms"], "latency_top1": m["top1"],
                    "top1_gain": m["top1"] - r["top1"]})
    return out


def summary(rows: list[dict], prof_err: float) -> dict:
    """How often each kind of policy breaks its latency budget, and by how much."""
    out = {}
    for kind in KINDS:
        rs = [r for r in rows if r["kind"] == kind and r.get("feasible") and r.get("budget_index") is not None]
        over = [benchkit.rel(r["measured_ms"], r["latency_budget_ms"]) for r in rs]
        broken = [o for o in over if o > 0]
        out[kind] = {"policies": len(rs), "over_budget": len(broken), "max_over": max(over, default=None),
                     "median_over": sorted(over)[len(over) // 2] if over else None}
    lat = out["latency"]
    lat["within_profile_error"] = lat["max_over"] is None or lat["max_over"] <= prof_err
    return out


Solved = tuple["Policy | None", "float | None", "str | None"]  # the policy, solve seconds, why infeasible


@dataclass
class _Run:
    """One model's policies as they are solved, deployed and timed: a row per solved budget
    (or uniform policy), each distinct policy once, and the artifacts built so far."""

    name: str
    trained: bool
    art_root: Path
    model: LoadedModel
    ds: Dataset
    meta: dict
    layers: list
    table: CostTable
    sens: Sensitivity
    rows: list[dict] = field(default_factory=list)
    policies: dict[str, Policy] = field(default_factory=dict)
    built: dict[str, dict] = field(default_factory=dict)
    target_name: str = TARGET  # what the policies deploy to

    def solve(self, target: Target, budget: dict) -> Solved:
        """The least-penalty policy under `budget` on `target`, or why there is none."""
        from edgempq.errors import InfeasibleError
        from edgempq.schema import Budget
        from edgempq.solve import solve

        try:
            t = time.perf_counter()
            pol = solve(self.layers, self.sens, self.table, Budget(**budget), target)
            return pol, time.perf_counter() - t, None
        except InfeasibleError as e:
            return None, None, str(e)

    def add(self, kind: str, index: int | None, latency_budget: float | None, budget: dict,
            solved: Solved) -> dict:
        """A row for one solved budget (its policy recorded once by key)."""
        pol, secs, reason = solved
        row = {"kind": kind, "budget_index": index, "latency_budget_ms": latency_budget, "budget": budget,
               "feasible": pol is not None, "solve_s": secs, "reason": reason}
        if pol is not None:
            key = policy_key(pol.precisions)
            self.policies.setdefault(key, pol)
            row.update(key=key, predicted_ms=pol.predicted["latency_ms"], size_bytes=pol.predicted["size_bytes"],
                       bops=pol.predicted["bops"], objective=pol.predicted.get("objective"),
                       precisions={k: str(v) for k, v in pol.precisions.items()})
        self.rows.append(row)
        return row

    def add_uniform(self) -> None:
        """The all-int8 and all-float policies, their latency predicted by the profile."""
        from edgempq.latency import predict_latency
        from edgempq.layers import policy_bops, policy_weight_bytes
        from edgempq.schema import Policy

        for p in ("w8a8", "f32"):
            pol = Policy.uniform(self.layers, p)
            pol = Policy(pol.precisions, method=f"uniform {p}", target=self.target_name,
                         model_hash=self.model.model_hash,
                         predicted={"latency_ms": predict_latency(self.table, pol.precisions),
                                    "size_bytes": policy_weight_bytes(self.layers, pol),
                                    "bops": policy_bops(self.layers, pol)})
            self.add(f"uniform {p}", None, None, {}, (pol, 0.0, None))

    def build_all(self, backend: Backend) -> None:
        """Deploy every policy not yet built (and on the trained models, measure its top-1)."""
        for key, pol in self.policies.items():
            if key not in self.built:
                log(f"{self.name}: deploy {key} ({len(self.built) + 1}/{len(self.policies)})")
                self.built[key] = self._build(key, pol, backend)

    def _build(self, key: str, pol: Policy, backend: Backend) -> dict:
        from edgempq.export.stage import DeployConfig
        from edgempq.pipeline import deploy

        d = self.art_root / key
        t = time.perf_counter()
        deploy(self.model, self.ds, pol, self.target_name, d,
               DeployConfig(profile=self.table, weights=self.meta["weights"],
                            data_spec="mnist" if self.trained else "digits"))
        secs = time.perf_counter() - t
        data = (d / "model.tflite").read_bytes()
        entry = {"deploy_s": secs, "tflite_bytes": len(data), "folder": str(d)}
        if self.trained:
            x, y = self.ds.split("test")
            from edgempq.layout import to_model

            shape = json.loads((d / "deploy.json").read_text())["input"]["shape"]
            ev = backend.evaluate(data, to_model(x, shape), y)
            entry["top1"] = ev.top1
        return entry

    def artifacts(self) -> dict[str, bytes]:
        """The built artifacts' bytes by policy key."""
        return {k: (self.art_root / k / "model.tflite").read_bytes() for k in self.built}

    def match_proxies(self, backend: Backend, rounds: int, target: Target) -> None:
        """Per feasible proxy policy, the latency-aware policy under its measured latency, built."""
        first = benchkit.interleaved_ms(backend, self.artifacts(), max(2, rounds // 2), log=log)
        for r in [r for r in self.rows if r["kind"] in PROXIES and r["feasible"]]:
            budget = {"latency_ms": first[r["key"]]["ms"]}
            m = self.add("match", None, budget["latency_ms"], budget, self.solve(target, budget))  # counted apart
            m.update({"for": r["key"], "for_kind": r["kind"], "for_budget": r["budget_index"]})
            r["match"] = m.get("key")
        self.build_all(backend)

    def add_timings(self, timing: dict[str, dict]) -> None:
        """Each feasible row's measured latency and its artifact's numbers."""
        for r in self.rows:
            if r["feasible"]:
                r["measured_ms"] = timing[r["key"]]["ms"]
                r["rounds_ms"] = timing[r["key"]]["rounds_ms"]
                b = self.built[r["key"]]
                r.update({k: b[k] for k in ("top1", "deploy_s", "tflite_bytes", "folder") if k in b})


def _fresh(folder: Path) -> Path:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def _int8(layers: list, table: CostTable) -> dict:
    from edgempq.layers import policy_bops, policy_weight_bytes
    from edgempq.schema import Policy

    int8_pol = Policy.uniform(layers, "w8a8")
    return {"latency_ms": table.whole_ms["w8a8"], "f32_ms": table.whole_ms["f32"],
            "bops": policy_bops(layers, int8_pol), "size_bytes": policy_weight_bytes(layers, int8_pol)}


def run_model(name: str, trained: bool, quick: bool, folder: Path) -> dict:
    """One model's part 1: profile, sensitivity, the policies of every kind at each latency
    budget (and the uniform ones), each deployed and timed in interleaved rounds."""
    from edgempq.backends import backend_for
    from edgempq.layers import trace
    from edgempq.pipeline import layer_precisions, sensitivity
    from edgempq.profile import WholeModel, profile
    from edgempq.targets import load_target

    art_root = _fresh(folder / "artifacts" / name)
    model, ds, meta = benchkit.trained_model(name) if trained else benchkit.random_model(name, art_root)
    layers = trace(model.module, model.input_shape)
    target = load_target(TARGET)
    log(f"{name}: profile on {TARGET}")
    # measured now, not from the cache: the prediction and the artifacts' timings then come
    # from the same session of the device (this host drifts by up to ~15 % between windows)
    table, profile_s = benchkit.timed(lambda: profile(layers, target, model.model_hash, use_cache=False,
                                                      whole=WholeModel(model.module, model.input_shape)))
    table.save(art_root / "profile.json")
    method, params = ("measured", ["loss=kl"]) if trained else ("csmpq", None)
    log(f"{name}: {method} sensitivity")
    sens, sens_s = benchkit.timed(lambda: sensitivity(model, ds, method, layer_precisions(layers, device=TARGET),
                                                      params))
    targets = {k: papers_space(target) if k.endswith("-a8") else target for k in KINDS}
    int8 = _int8(layers, table)
    budgets = latency_budgets(int8["latency_ms"], int8["f32_ms"], QUICK_POSITIONS if quick else POSITIONS)

    run = _Run(name, trained, art_root, model, ds, meta, layers, table, sens)
    for i, lat in enumerate(budgets):
        b = proxy_budgets(lat, int8)
        for kind in KINDS:
            run.add(kind, i, lat, b[kind], run.solve(targets[kind], b[kind]))
    run.add_uniform()

    backend = backend_for(target)
    run.build_all(backend)
    rounds = QUICK_ROUNDS if quick else ROUNDS
    if trained:  # the latency-aware policy at each proxy policy's measured latency
        run.match_proxies(backend, rounds, target)
    models = run.artifacts()
    log(f"{name}: {len(models)} artifacts, {rounds} interleaved rounds")
    timing = benchkit.interleaved_ms(backend, models, rounds, log=log)
    backend.close()
    run.add_timings(timing)
    rows = run.rows
    perr = profile_error(rows)
    return {"model": name, "trained": trained, "method": method, "params": params,
            "input_shape": list(model.input_shape), "int8": int8, "latency_budgets_ms": budgets,
            "profile_s": profile_s, "sensitivity_s": sens_s, "profile_error": perr, "rows": rows,
            "summary": summary(rows, perr["max_abs"]), "equal_latency": equal_latency(rows), "rounds": rounds}


def run(quick: bool = False, folder: Path = RESULTS, only: list[str] | None = None) -> dict:
    """Every model, or with `only` those models again, replacing their results in the file."""
    ms = benchkit.models(quick)
    out = {"part": "device", "quick": quick, "target": TARGET, "machine": benchkit.machine(), "models": []}
    old = benchkit.load("device", folder) if only else None
    order = [(n, True) for n in ms.trained] + [(n, False) for n in ms.latency_only]
    for name, trained in order:
        if only and name not in only:
            kept = next((m for m in (old or {}).get("models", []) if m["model"] == name), None)
            if kept:
                out["models"].append(kept)
            continue
        out["models"].append(run_model(name, trained, quick, folder))
        benchkit.save("device", out, folder)  # each model as it finishes: a later failure keeps it
    benchkit.save("device", out, folder)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one model, two budgets, two rounds")
    run(ap.parse_args().quick)
