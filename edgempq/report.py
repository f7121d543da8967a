"""report.md and a self-contained report.html (plots embedded, also written as PNGs) for a
deployed artifact: the precision chosen per layer with its latency, predicted against measured
latency, the Pareto front of a sweep, accuracy, size, and where the artifact parts from the
simulation. Both files are built from one list of blocks, so they always say the same."""

from __future__ import annotations

import base64
import html
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .schema.results import DeployResult, Divergence, PredictedLatency, ValidationReport

Block = tuple  # ("h1"|"h2"|"p", text) | ("table", header, rows) | ("img", caption, file name)
PLOTS = ("report_layers.png", "report_latency.png", "report_pareto.png")
FILES = ("report.md", "report.html", *PLOTS)  # what `write_report` may write


def _kb(v: float | None) -> str:
    return "–" if v is None else f"{v / 1024:.1f} KB"


def _ms(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f} ms"


def _old_scores(**top1: float | None) -> dict[str, dict[str, float]]:
    return {k: {"top1": v} for k, v in top1.items() if v is not None}


def scores_by_source(d: DeployResult | None, v: ValidationReport | None) -> dict[str, dict[str, float]]:
    """The task's scores of the float model, the simulation and the artifact (validate's over
    deploy's where both have them); a file written before scores were recorded gives its top-1s."""
    out: dict[str, dict[str, float]] = {}
    if d is not None:
        out |= d.scores or _old_scores(float=d.float_top1, simulated=d.simulated_top1)
    if v is not None:
        out |= v.scores or _old_scores(float=v.float_top1, simulated=v.simulated_top1, artifact=v.artifact_top1)
    return out


def check_sweep(sweep: object, where: str) -> None:
    """Refuse, before anything is built, a sweep that is not search --sweep's JSON."""
    from .errors import ConfigError

    ok = isinstance(sweep, dict) and isinstance(sweep.get("sweep"), str) and isinstance(sweep.get("points"), list)
    for p in sweep.get("points", []) if ok else []:
        ok = ok and isinstance(p, dict) and isinstance(p.get("feasible"), bool) \
            and isinstance(p.get("budget"), dict) and isinstance(p["budget"].get(sweep["sweep"]), int | float) \
            and (not p["feasible"] or isinstance(p.get("objective"), int | float))
    if not ok:
        raise ConfigError(f"{where} is not a sweep written by `edgempq search --sweep`; give that file")


@dataclass(frozen=True)
class Figure:
    """A plot of the report: its file name and how to draw it into a path."""

    name: str
    draw: Callable[[Path], Any]


@dataclass(frozen=True)
class Rendered:
    """The report's content: blocks (both report.md and report.html are made from them) and plots."""

    blocks: list[Block]
    figures: list[Figure] = field(default_factory=list)


def render(deploy: DeployResult | None, validation: ValidationReport | None, where: str = "") -> Rendered:
    """The report of an artifact: what deploy built and, once validated, what the device measured."""
    target = validation.target if validation else deploy.target if deploy else "?"
    model = (deploy.model if deploy else None) or (validation.model if validation else None) or "artifact"
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    done = ("Validated on the device." if validation else "Not validated yet: run `edgempq validate` on this folder "
            "for the artifact's accuracy and latency on the device.")
    out = Rendered([("h1", f"edgempq report: {model} on {target}"), ("p", f"Generated {when}{where}. {done}")])
    pred = deploy.latency if deploy and deploy.latency and deploy.latency.target == target else None
    _accuracy(out, deploy, validation, target)
    if deploy is not None:
        out.blocks.extend(ptq_blocks(deploy))
    _latency(out, validation, pred, target)
    _size(out, deploy, validation)
    if deploy is not None:
        _layers(out, deploy, validation, pred, target)
    _latency_plot(out, validation, pred, target)
    if deploy is not None and deploy.sweep and deploy.sweep.get("points"):
        _pareto(out, deploy, target)
    if validation is not None and validation.divergence is not None:
        _divergence(out, validation.divergence)
    return out


def _accuracy(out: Rendered, d: DeployResult | None, v: ValidationReport | None, target: str) -> None:
    """The float model's, the simulation's and the artifact's scores for the task, how the
    simulation was made and how well it agrees."""
    from .tasks import agreement_words, fmt, loss_warning, metric_name

    n = f" ({v.samples} samples)" if v else ""
    task = v.task if v else d.task if d else "classify"
    scores = scores_by_source(d, v)
    metrics = list(next(iter(scores.values()), {"top1": None}))
    rows = [[label, *(fmt(k, scores.get(key, {}).get(k)) for k in metrics)]
            for label, key in (("float model", "float"), ("simulation (fake-quantized PyTorch)", "simulated"),
                               (f"artifact on {target}{n}", "artifact"))]
    heading = "Accuracy" if task in ("classify", "dense") else "Scores"
    out.blocks.extend([("h2", f"{heading} (test split, task {task})"),
                       ("table", ["", *map(metric_name, metrics)], rows)])
    warning = loss_warning(task, scores.get("float", {}), scores.get("simulated", {}))
    if warning:
        out.blocks.append(("p", f"Warning: {warning}."))
    if v is None:
        return
    if v.simulation:
        out.blocks.append(("p", f"Simulation: {v.simulated_policy}, {v.simulation}."))
        out.blocks.extend([("p", f"Note: {note}.") for note in v.simulation_notes])
    if v.data_note:
        out.blocks.append(("p", f"Note: {v.data_note}."))
    if v.agreement:
        out.blocks.append(("p", f"Simulation and artifact: {agreement_words(task, v.agreement)}."))


def _latency(out: Rendered, v: ValidationReport | None, pred: PredictedLatency | None, target: str) -> None:
    """Measured latency against the prediction (or the prediction alone before validate)."""
    pred_ms = v.latency.predicted_ms if v and v.latency.predicted_ms is not None else pred.predicted_ms if pred \
        else None
    out.blocks.append(("h2", "Latency"))
    if v is None:
        out.blocks.append(("p", f"Predicted {_ms(pred_ms)}; not measured yet."))
        return
    lat = v.latency
    err = f" ({100 * lat.error:+.1f} % against the prediction)" if lat.error is not None else ""
    rounds = (f", the fastest of {len(lat.rounds_ms)} rounds ({', '.join(_ms(r) for r in lat.rounds_ms)})"
              if lat.rounds_ms else "")
    out.blocks.append(("p", f"Measured on {target}: median {_ms(lat.median_ms)} over {lat.runs} runs{rounds} "
                            f"(p10 {_ms(lat.p10_ms)}, p90 {_ms(lat.p90_ms)}); predicted {_ms(pred_ms)}{err}."))
    if lat.emulated:
        out.blocks.append(("p", f"{target} is emulated ({v.device.get('machine', 'another CPU')} under an "
                                "emulator): these milliseconds are the emulator's, not the board's, and are held "
                                "to no prediction. What the artifact computes there is the board's."))
    if v.device.get("runtime") == "tflite_micro":
        out.blocks.append(("p", f"These are TFLite Micro's kernels timed on this host's CPU "
                                f"({v.device.get('cpu', 'unknown')}), not on a microcontroller: the arena and "
                                "flash carry over to a board, the milliseconds do not."))


def _size(out: Rendered, d: DeployResult | None, v: ValidationReport | None) -> None:
    """The artifact's bytes, its weights predicted and stored, the arena."""
    wb = d.weight_bytes if d else None
    rows = [["model.tflite", _kb(v.size.tflite_bytes if v else d.tflite_bytes if d else None)],
            ["weights, predicted by the solver's size model", _kb(wb.predicted if wb else None)],
            ["weights, stored in the artifact", _kb(wb.artifact if wb else None)]]
    arena = (v.size.arena_bytes if v else None) or (d.arena_bytes if d else None)
    if arena:
        rows.append(["TFLite Micro arena, measured", _kb(arena)])
    if d is not None and d.arena_predicted_bytes:
        rows.append(["TFLite Micro arena, predicted from the profile", _kb(d.arena_predicted_bytes)])
    out.blocks.extend([("h2", "Size"), ("table", ["", "bytes"], rows)])


def _layers(out: Rendered, d: DeployResult, v: ValidationReport | None, pred: PredictedLatency | None,
            target: str) -> None:
    """Each layer's precision, op, types, weight bytes and predicted latency, as a table and a plot."""
    from . import plots

    if not d.layers:
        return
    layer_ms = (v.latency.layers_ms if v else None) or (pred.layers_ms if pred else None) or {}
    rows = [[r.layer, r.precision, r.op, r.weight_type, r.activation_type, f"{r.weight_bytes / 1024:.2f}",
             f"{layer_ms[r.layer]:.4f}" if r.layer in layer_ms else "–"] for r in d.layers]
    out.blocks.extend([("h2", "Layers"), ("table", ["layer", "precision", "op", "weights", "activations", "weight KB",
                                                 "predicted ms"], rows)])
    prow = [{"layer": r.layer, "precision": r.precision, "weight_bytes": r.weight_bytes, "ms": layer_ms.get(r.layer)}
            for r in d.layers]
    name = "report_layers.png"
    out.figures.append(Figure(name, lambda p: plots.layer_precisions(prow, p, f"precision per layer on {target}")))
    out.blocks.append(("img", "Precision chosen per layer and the layer's predicted latency on the device "
                              "(the profile's measurement, scaled to the whole model).", name))


def _latency_plot(out: Rendered, v: ValidationReport | None, pred: PredictedLatency | None, target: str) -> None:
    """The profile's whole-model timings against their predictions, and this artifact's."""
    from . import plots

    known = (v.latency.points if v else None) or (pred.points if pred else None) or ()
    points = [p.to_dict() for p in known]
    if v is not None and v.latency.predicted_ms is not None:
        points.append({"label": "this artifact", "predicted_ms": v.latency.predicted_ms,
                       "measured_ms": v.latency.median_ms, "artifact": True})
    if not points:
        return
    name = "report_latency.png"
    out.figures.append(Figure(name, lambda p: plots.latency_check(points, p, f"latency on {target}")))
    out.blocks.append(("img", "Measured against predicted whole-model latency: the profile's own timings (dots) and "
                              "this artifact measured by validate (star).", name))


def _pareto(out: Rendered, d: DeployResult, target: str) -> None:
    """The sweep's front with the deployed policy on it, as a plot and a table."""
    from . import plots

    sweep, pol = d.sweep, d.policy
    key = sweep["sweep"]
    chosen = ((pol.budget[key], pol.predicted["objective"])
              if key in pol.budget and "objective" in pol.predicted else None)
    held = ", ".join(f"{k} {v:.4g}" for k, v in (sweep.get("held") or {}).items())
    title = f"{sweep.get('method', '')} on {sweep.get('target', target)}" + (f" ({held})" if held else "")
    name = "report_pareto.png"
    out.figures.append(Figure(name, lambda p: plots.pareto_front(sweep["points"], key, title, p, chosen)))
    rows = [[f"{p['budget'][key]:.4g}", "yes" if p["feasible"] else "no",
             f"{p['objective']:.4g}" if p["feasible"] else "–",
             _ms(p.get("predicted", {}).get("latency_ms")), _kb(p.get("predicted", {}).get("size_bytes"))]
            for p in sweep["points"]]
    out.blocks.extend([("h2", "Pareto front"),
                   ("img", f"The solver's objective (total sensitivity penalty) against the {key} budget.", name),
                   ("table", [key, "feasible", "objective", "predicted latency", "predicted size"], rows)])


def _divergence(out: Rendered, div: Divergence) -> None:
    """The first layer where artifact and simulation part, and every layer's error."""
    out.blocks.append(("h2", "Where the artifact parts from the simulation"))
    if div.layer:
        out.blocks.append(("p", f"First diverging layer: {div.layer} (relative error above {div.tol:g} and over "
                                f"{div.jump:g} x every earlier layer's, on {div.samples} samples)."))
    else:
        out.blocks.append(("p", div.note or "No layer parts from the simulation: the difference builds up gradually."))
    if div.layers:
        out.blocks.append(("table", ["layer", "precision", "op", "relative error", ""],
                           [[r.layer, r.precision, str(r.op_index),
                             "–" if r.relative_error is None else f"{r.relative_error:.4f}",
                             "parts here" if r.parts else r.note or ""] for r in div.layers]))


def ptq_summary(d: DeployResult) -> str | None:
    """One sentence on how deploy quantized the policy and what it checked bit for bit."""
    ptq = d.ptq
    if ptq is None:
        return None
    params = ", ".join(f"{k}={v}" for k, v in ptq.params.items())
    text = (f"Weights by `{ptq.weights}`" + (f" ({params})" if params else "")
            + (" with bias correction" if ptq.bias_correction else "")
            + f", activation ranges by {d.quant_config.get('act_method', 'minmax')}, on the calibration split "
            f"({ptq.seconds:.1f} s).")
    if d.exact is not None:
        text += (f" The artifact stores the simulation's integer weights, scales and biases in all {d.exact.layers} "
                 "integer layers, checked bit for bit.")
    text += _ranges_summary(d.input_ranges)
    text += rounding_summary(d.output_rounding, d.skip_rounding, list(d.skip_notes))
    notes = [*ptq.notes, *([d.quantizer_note] if d.quantizer_note else [])]
    return text + "".join(f" Note: {n}." for n in notes)


def _ranges_summary(ranges: dict[str, dict]) -> str:
    """Whose input ranges the artifact's integer layers quantize with: the simulation's, or the graph's."""
    text = ""
    kept = [r.get("scale_change") or 0.0 for r in ranges.values() if r.get("from") == "simulation"]
    if kept:
        text += (f" The artifact quantizes the inputs of {len(kept)} integer layer(s) with the simulation's "
                 f"calibrated scale and zero point (up to float rounding: largest relative scale difference "
                 f"{max(kept):.1e}, zero points within 1; the simulation then takes the artifact's exact values).")
    tied = [n for n, r in ranges.items() if r.get("from") == "artifact"]
    if tied:
        text += (f" The input ranges of {', '.join(tied)} are the artifact's, not the simulation's calibration (the "
                 "graph ties them to another tensor's, e.g. through an average pool); the simulation uses them too.")
    return text


def rounding_summary(rounding: dict, between: dict | None = None, notes: list | None = None) -> str:
    """How the simulation rounds the integer layers' outputs (each op's rule, as measured on this
    machine's LiteRT, and any op no rule reproduced) and the tensors between layers."""
    from .export.skips import describe

    text = ""
    if isinstance(between, dict) and between:
        text = f" Between the layers, {describe(between)} are rounded to the artifact's grids."
    text += "".join(f" Note: {n}." for n in notes or [] if isinstance(n, str))
    if not rounding:
        return text
    rows = [r for r in rounding.values() if isinstance(r, dict)]
    rules = sorted({str(r.get("rule")) for r in rows})
    counts = ", ".join(f"{sum(str(r.get('rule')) == k for r in rows)} {k}" for k in rules)
    text = (f" The simulation rounds each integer layer's output to the artifact op's grid with the rule LiteRT's "
            f"kernel was measured to use on this machine ({counts})." + text)
    matched = {n: r.get("matched") for n, r in rounding.items() if isinstance(r, dict)}
    off = [f"{n} ({100 * v:.4f} %)" if isinstance(v, int | float) else f"{n} (unknown)"
           for n, v in matched.items() if not isinstance(v, int | float) or v < 1.0]
    if off:
        text += f" Share of the output values the rule reproduced, where not all: {', '.join(off)}."
    skipped = [f"{n}: {r['note']}" for n, r in rounding.items() if isinstance(r, dict) and r.get("note")]
    if skipped:
        text += f" Kept float outputs: {'; '.join(skipped)}."
    return text


def ptq_blocks(d: DeployResult) -> list[Block]:
    """The report's quantization section: the PTQ used and each layer's output error."""
    text = ptq_summary(d)
    if text is None:
        return []
    out: list[Block] = [("h2", "Quantization"), ("p", text)]
    rows, seen = [], set()
    for name, info in d.ptq.layers.items():
        if not info:
            continue
        block = info.get("block", "")
        errors = [_sci(info.get("rtn_error")), _sci(info.get("error"))]
        if block and block in seen:
            errors = ["(the block's, above)"] * 2
        seen.add(block)
        rows.append([name, *errors, _sci(info.get("bias_shift", info.get("bias_correction"))), block])
    if rows:
        out.append(("p", "Output error of each layer on the calibration data, E‖ŵx̂ − wx‖² / E‖wx‖², with "
                         "min-max rounding and with this PTQ (for layers reconstructed together, the block's "
                         "output error, on its first layer's row); bias shift: the largest correction, in units "
                         "of the layer's output spread; block: the layers reconstructed together."))
        out.append(("table", ["layer", "error, min-max rounding", "error, this PTQ", "bias shift", "block"], rows))
    return out


def _sci(v: Any) -> str:
    return v if isinstance(v, str) else ("–" if v is None else f"{v:.3g}")


def _cell_md(text: Any) -> str:
    return str(text).replace("|", "\\|")


def to_markdown(bl: list[Block]) -> str:
    """The blocks as Markdown (images by file name, beside the report)."""
    lines: list[str] = []
    for b in bl:
        if b[0] == "h1":
            lines += [f"# {b[1]}", ""]
        elif b[0] == "h2":
            lines += [f"## {b[1]}", ""]
        elif b[0] == "p":
            lines += [b[1], ""]
        elif b[0] == "table":
            lines.append("| " + " | ".join(_cell_md(h) for h in b[1]) + " |")
            lines.append("|" + "---|" * len(b[1]))
            lines += ["| " + " | ".join(_cell_md(c) for c in row) + " |" for row in b[2]]
            lines.append("")
        elif b[0] == "img":
            lines += [f"![{b[1]}]({b[2]})", "", f"*{b[1]}*", ""]
    return "\n".join(lines)


_CSS = ("body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}"
        "th{background:#f3f3f3}img{max-width:100%}figcaption{font-size:.9em;color:#555}")


def to_html(bl: list[Block], folder: Path) -> str:
    """One file: the plots are embedded as data URIs."""
    e = html.escape
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'>",
             f"<title>{e(next((b[1] for b in bl if b[0] == 'h1'), 'edgempq report'))}</title>",
             f"<style>{_CSS}</style></head><body>"]
    for b in bl:
        if b[0] in ("h1", "h2", "p"):
            parts.append(f"<{b[0]}>{e(b[1])}</{b[0]}>")
        elif b[0] == "table":
            head = "".join(f"<th>{e(str(h))}</th>" for h in b[1])
            body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in b[2])
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif b[0] == "img":
            data = base64.b64encode((folder / b[2]).read_bytes()).decode()
            parts.append(f"<figure><img alt='{e(b[1])}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{e(b[1])}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(folder: str | Path, deploy: DeployResult | None,
                 validation: ValidationReport | None = None, shown_as: str | Path | None = None) -> dict[str, Path]:
    """Write report.md, report.html and their PNGs (those of `FILES` this report has) into
    `folder` (each atomically); returns their paths. `shown_as` is the folder the report says
    it is in (the deploy folder, when `folder` is its staging folder)."""
    from .files import atomic_write_text

    folder = Path(folder)
    r = render(deploy, validation, f" from {shown_as or folder}")
    paths = {f.name: f.draw(folder / f.name) for f in r.figures}
    paths["report.md"] = atomic_write_text(folder / "report.md", to_markdown(r.blocks))
    paths["report.html"] = atomic_write_text(folder / "report.html", to_html(r.blocks, folder))
    return paths
