"""Part 6 of the benchmarks: any model a user brings. Eleven edge architectures
(`tools/benchnets.py`) through layers -> preflight -> profile -> sensitivity -> search -> deploy
-> validate on `host`, as a user would run them, each step timed and its outcome recorded (the
error sentence where one fails).

    .venv/bin/python tools/bench_models.py [--quick] [--only NAME ...]   (or bench_all.py --part models)

Each model is trained for a few epochs on its task's loss, on synthetic data of its input shape
(a fixed random pattern per class, constant over blocks of SMOOTH x SMOOTH positions, plus half
as much noise, 600 samples, written as a .npz; the
autoencoder's .npz has no y, the segmentation net's y labels each pixel), so that its outputs are
confident enough for agreement to mean something; the numbers say whether the pipeline carries
the model, not how good the model is. The size budget sits 40 % of the way
from the smallest policy the target runs to the all-int8 one.
Results: bench_results/all/models.json.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchkit  # noqa: E402
import benchnets  # noqa: E402
from benchkit import RESULTS, TARGET, log  # noqa: E402

SAMPLES = 600
EPOCHS = 10
NOISE = 0.5  # of the per-class pattern's unit spread
SMOOTH = 4  # positions per pattern block: pixel-wise noise patterns average out under global pooling
SIZE_SHARE = 0.6
METHOD = "csmpq"
QUICK = ("ds_cnn", "conv1d_audio", "tiny_vit")
MLPERF_TINY = ("ds_cnn", "mobilenet_v1_025", "resnet8", "fc_autoencoder")  # also run on MCU_TARGET
MCU_TARGET = "tflm-host"
STEPS = ("layers", "preflight", "profile", "sensitivity", "search", "deploy", "validate")


def _data(name: str, folder: Path) -> Path:
    """600 samples of the model's input shape for its task: each class a fixed blocky random
    pattern plus noise (classify; the autoencoder gets the samples alone, its own targets); for the
    segmentation net, label maps of random rectangles, each class a fixed colour plus noise."""
    import torch

    model = benchnets.NETS[name]()
    task = benchnets.TASKS[name]
    rng = np.random.default_rng(0)
    path = folder / f"{name}.npz"
    if task == "dense":
        x, y = _label_maps(model.input_shape, 4, rng)
        np.savez(path, x=x, y=y)
        return path
    with torch.no_grad():
        out = model.eval()(torch.zeros(2, *model.input_shape))
    classes = min(int(out.shape[1]), 10) if task == "classify" else 4
    patterns = _patterns(classes, model.input_shape, rng)
    y = np.repeat(np.arange(classes), -(-SAMPLES // classes))[:SAMPLES]
    x = patterns[y] + rng.normal(0, NOISE, (len(y), *model.input_shape)).astype(np.float32)
    np.savez(path, **({"x": x, "y": y} if task == "classify" else {"x": x}))
    return path


def _patterns(classes: int, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """One unit-normal pattern per class over `shape` (C x ...), constant over blocks of SMOOTH
    positions along each spatial axis (a shallow net's pooled features tell such patterns apart;
    pixel-wise ones they average away). Flat inputs get pixel-wise patterns."""
    import torch
    import torch.nn.functional as F

    if len(shape) == 1:
        return rng.normal(0, 1, (classes, *shape)).astype(np.float32)
    coarse = [-(-d // SMOOTH) for d in shape[1:]]
    p = torch.from_numpy(rng.normal(0, 1, (classes, shape[0], *coarse)).astype(np.float32))
    return F.interpolate(p, size=tuple(shape[1:]), mode="nearest").numpy()


def _label_maps(shape: tuple[int, ...], classes: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(x, y): per-pixel labels of a few rectangles of each class over class 0, and images whose
    pixels are their class's colour (a fixed random vector over the channels) plus noise."""
    c, h, w = shape
    y = np.zeros((SAMPLES, h, w), np.int64)
    for k in range(SAMPLES):
        for cls in range(1, classes):
            r, s = rng.integers(0, h * 3 // 4, 2)
            y[k, r:r + rng.integers(h // 8, h // 3), s:s + rng.integers(w // 8, w // 3)] = cls
    colours = rng.normal(0, 1, (classes, c)).astype(np.float32)
    x = colours[y].transpose(0, 3, 1, 2) + rng.normal(0, NOISE, (SAMPLES, c, h, w)).astype(np.float32)
    return x.astype(np.float32), y


class _Run:
    """One model's way through the pipeline, step by step, stopping at the first refusal."""

    def __init__(self, name: str, folder: Path, target: str = TARGET) -> None:
        self.name, self.target = name, target
        self.folder = folder / target
        self.folder.mkdir(parents=True, exist_ok=True)
        self.spec = f"{Path(benchnets.__file__).resolve()}:{name}"
        self.row: dict[str, Any] = {"model": name, "target": target, "task": benchnets.TASKS[name], "steps": {}}

    def step(self, key: str, fn: Any) -> Any:
        """Run `fn` as step `key`: its seconds and outcome recorded; a user error stops the model."""
        from edgempq.errors import EdgeMPQError

        t = time.perf_counter()
        try:
            out = fn()
        except EdgeMPQError as e:
            self.row["steps"][key] = {"ok": False, "seconds": time.perf_counter() - t, "error": str(e)}
            log(f"{self.name}: {key} refused: {e}")
            raise
        self.row["steps"][key] = {"ok": True, "seconds": time.perf_counter() - t}
        return out

    def run(self) -> dict[str, Any]:
        """Every step in order; the row records how far the model got."""
        from edgempq.errors import EdgeMPQError

        with contextlib.suppress(EdgeMPQError):  # recorded by `step`
            self._steps()
        return self.row

    def _steps(self) -> None:
        from edgempq.layers import trace
        from edgempq.preflight import preflight
        from edgempq.simulation import load_model_and_data

        data = str(_data(self.name, self.folder))
        model, ds = self.step("layers", lambda: load_model_and_data(self.spec, data))
        layers = trace(model.module, model.input_shape)
        self.row.update(layers=len(layers), searchable=sum(la.searchable for la in layers),
                        macs=sum(la.macs for la in layers),
                        fixed={la.name: la.fixed_reason for la in layers if not la.searchable})
        checked = self.step("preflight", lambda: preflight(model.module, model.input_shape, layers))
        self.row["folded"] = checked.folded
        model, ds = self._trained(model, ds, data)
        self._pipeline(model, ds, layers, data, checked.folded)

    def _trained(self, model: Any, ds: Any, data: str) -> tuple[Any, Any]:
        """The model after a few epochs on the synthetic data, saved and loaded as a user's weights."""
        import torch

        from edgempq.simulation import load_model_and_data, state_bytes
        from edgempq.train import TrainConfig, fit

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            cfg = (TrainConfig(epochs=EPOCHS, batch_size=32, lr=0.05) if model.task == "classify" else
                   TrainConfig(epochs=EPOCHS, batch_size=32, lr=3e-3, optimizer="adam", task=model.task))
            fit(model.module, *ds.split("train"), cfg)
        weights = self.folder / f"{self.name}.pt"
        weights.write_bytes(state_bytes(model.module))
        self.row["weights"] = str(weights)
        return load_model_and_data(self.spec, data, weights)

    def _pipeline(self, model: Any, ds: Any, layers: list, data: str, folded: dict) -> None:
        """profile -> sensitivity -> search -> deploy -> validate, as the CLI chains them (the
        preflight's folded layers recorded in the profile and kept at f32 by the search)."""
        from dataclasses import replace

        from edgempq.export.stage import DeployConfig
        from edgempq.pipeline import ValidateOptions, deploy, layer_precisions, sensitivity, validate
        from edgempq.profile import WholeModel, profile
        from edgempq.schema import Budget
        from edgempq.search import SearchRequest, search
        from edgempq.targets import load_target

        target = load_target(self.target)
        whole = WholeModel(model.module, model.input_shape)  # as `edgempq profile` measures by default
        table = self.step("profile", lambda: replace(profile(layers, target, model.model_hash, whole=whole),
                                                     folded=folded, arch_hash=model.arch_hash))
        sens = self.step("sensitivity", lambda: sensitivity(model, ds, METHOD, layer_precisions(layers,
                                                                                                 device=self.target)))
        budget = Budget(size_kb=_size_budget(layers, target, set(folded)) / 1024)
        # as `edgempq search` does: the target's flash and RAM held too, the folded layers at f32
        policy = self.step("search", lambda: search(table, sens, SearchRequest(budget)).policy)
        self.row["policy"] = {n: str(p) for n, p in policy.precisions.items()}
        self.row["predicted_arena"] = policy.predicted.get("arena_bytes")
        folder = self.folder / f"{self.name}-artifact"
        cfg = DeployConfig(profile=table, weights=self.row["weights"], data_spec=data)
        dep = self.step("deploy", lambda: deploy(model, ds, policy, self.target, folder, cfg))
        self.row.update(float_top1=dep.float_top1, simulated_top1=dep.simulated_top1, exact_layers=dep.exact.layers,
                        scores=dep.scores)
        val = self.step("validate", lambda: validate(folder, self.target, ValidateOptions(runs=10)))
        self.row.update(artifact_top1=val.artifact_top1, agreement=val.agreement.top1 if val.agreement else None,
                        snr_db=val.agreement.snr_db if val.agreement else None, scores=val.scores,
                        latency_ms=val.latency.median_ms, predicted_ms=val.latency.predicted_ms,
                        tflite_bytes=val.size.tflite_bytes, arena=val.size.arena_bytes)


def _size_budget(layers: list, target: Any, folded: set[str]) -> float:
    """Bytes: SIZE_SHARE of the way from the smallest policy the target runs to the all-int8 one
    (a share of int8 alone can be out of reach where the target has no int4 kernel for a kind),
    the layers the converter folds into counted at f32 in both."""
    from edgempq.costs import F32, weight_bytes
    from edgempq.schema import Precision

    fixed = sum(weight_bytes(la, F32) for la in layers if not la.searchable)
    fixed += sum(weight_bytes(la, F32) for la in layers if la.name in folded)
    free = [la for la in layers if la.searchable and la.name not in folded]
    low = fixed + sum(min(weight_bytes(la, p) for p in target.allowed(la.kind)) for la in free)
    int8 = fixed + sum(weight_bytes(la, Precision.parse("w8a8")) for la in free)
    return low + (1 - SIZE_SHARE) * (int8 - low)


def run(quick: bool = False, folder: Path = RESULTS, only: list[str] | None = None) -> dict:
    """Every architecture (three with `quick`) through the pipeline; saved as models.json."""
    import tempfile

    names = only or (QUICK if quick else tuple(benchnets.NETS))
    out = {"part": "models", "quick": quick, "target": TARGET, "method": METHOD, "size_share": SIZE_SHARE,
           "epochs": EPOCHS, "samples": SAMPLES, "machine": benchkit.machine(), "models": []}
    before = os.environ.get("EDGEMPQ_CACHE")
    with tempfile.TemporaryDirectory(prefix="edgempq-bench-models-") as work:
        os.environ["EDGEMPQ_CACHE"] = str(Path(work) / "cache")  # cold profiles: their times are measured
        try:
            mcu = [] if quick else [(n, MCU_TARGET) for n in names if n in MLPERF_TINY]
            runs = [(n, TARGET) for n in names] + mcu
            for name, target in runs:
                log(f"models: {name} on {target}")
                out["models"].append(_Run(name, Path(work), target).run())
                benchkit.save("models", out, folder)
        finally:
            if before is None:
                os.environ.pop("EDGEMPQ_CACHE", None)
            else:
                os.environ["EDGEMPQ_CACHE"] = before
    return out


# ---------------------------------------------------------------- BENCHMARKS.md

def _cell(step: dict | None) -> str:
    if step is None:
        return "–"
    return f"✔ {step['seconds']:.1f} s" if step["ok"] else "✘"


def _agreement(m: dict) -> str:
    """Artifact vs simulation: class agreement (per pixel for dense) and, for values, the output SNR."""
    agree, snr = m.get("agreement"), m.get("snr_db")
    parts = ([] if agree is None else [f"{100 * agree:.1f} %"]) + \
            ([f"SNR {snr:.1f} dB" if snr < 200 else "outputs identical"] if snr is not None and m["task"] != "classify"
             else [])
    return ", ".join(parts) or "–"


def section(res: dict, table: Any) -> str:
    """Part 6 of BENCHMARKS.md: each architecture's steps, their times, the agreement reached, and
    the sentence of the step that refused it."""
    rows, notes = [], []
    for m in res["models"]:
        steps = m["steps"]
        rows.append([m["model"], m.get("target", res["target"]), m["task"],
                     f"{m.get('searchable', '–')}/{m.get('layers', '–')}",
                     *(_cell(steps.get(s)) for s in STEPS), _agreement(m)])
        failed = next((s for s in STEPS if s in steps and not steps[s]["ok"]), None)
        if failed:
            notes.append(f"- **{m['model']}** on {m.get('target', res['target'])}, {failed}: {steps[failed]['error']}")
        agree, floats = m.get("agreement"), (m.get("scores") or {}).get("float", {})
        if agree is not None and agree < 0.99:
            notes.append(f"- {m['model']} on {m.get('target', res['target'])}: agreement {100 * agree:.1f} % with the "
                         f"float model at {100 * floats.get('top1', float('nan')):.1f} % top-1 (logits near ties flip "
                         f"on small differences); output SNR {m.get('snr_db', float('nan')):.1f} dB")
        if m.get("target", res["target"]) != res["target"]:
            if m.get("arena") and m.get("predicted_arena"):
                notes.append(f"- {m['model']} on {m['target']}: TFLite Micro arena {m['arena'] / 1024:.1f} KB "
                             f"measured, {m['predicted_arena'] / 1024:.1f} KB predicted by the search "
                             f"({100 * (m['predicted_arena'] / m['arena'] - 1):+.2f} %)")
            continue  # the layer notes are the host row's
        if m.get("folded"):
            notes.append(f"- {m['model']}: kept at f32 by the preflight (the converter folds into their weights): "
                         + ", ".join(m["folded"]))
        fixed = m.get("fixed") or {}
        if fixed:
            reasons = sorted(set(fixed.values()))
            notes.append(f"- {m['model']}: {len(fixed)} layer(s) kept float — " + "; ".join(reasons))
    head = ["model", "target", "task", "searchable / layers", *STEPS, "agreement"]
    return "\n".join([
        "## 6. Any model: eleven edge architectures", "",
        f"`tools/bench_models.py`: each architecture of `tools/benchnets.py` (MLPerf Tiny's DS-CNN, "
        f"MobileNetV1-0.25, ResNet-8 and FC autoencoder, and seven of the kinds users bring) as a user runs it on "
        f"`{res['target']}`: layers, the preflight, profile, {res['method']} sensitivity, a search under a size "
        f"budget {100 * (1 - res['size_share']):.0f} % of the way from the smallest policy the target runs to "
        "the all-int8 one, deploy and validate. Each is trained "
        f"{res['epochs']} epochs on {res['samples']} synthetic samples of its input shape for its task (a "
        f"fixed pattern per class, constant over {SMOOTH} x {SMOOTH} blocks, plus noise; the autoencoder "
        "reconstructs such samples; the segmentation net "
        "labels the pixels of random rectangles), so agreement (artifact vs simulation over the test split: "
        "top-1 class, per pixel for the segmentation net, and the output SNR for dense outputs) is about the "
        "pipeline, not the model. ✘: the step refused the model; the sentence it said is below. "
        f"The MLPerf Tiny four run on `{MCU_TARGET}` too (TFLite Micro's kernels; its RAM and flash limits "
        "apply; its times are this CPU's, not a microcontroller's).", "",
        table(head, rows), "", *notes, ""])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="three architectures only")
    ap.add_argument("--only", action="append", choices=sorted(benchnets.NETS), help="this architecture (repeatable)")
    args = ap.parse_args(argv)
    run(args.quick, RESULTS, args.only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
