"""The tables and summaries the CLI prints (rich), kept apart so the CLI only wires."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from .demo import DemoSummary
    from .schema.results import DeployResult, ValidationReport


def console() -> Any:
    """A rich console; a pipe gets 160 columns."""
    from rich.console import Console

    # Piped output gets a wide table rather than truncated layer names.
    return Console(width=None if sys.stdout.isatty() else 160)


def rows(rows: list, title: str) -> None:
    """Simulation results (the task's scores, weight KB, BOPs) one row each."""
    from rich.table import Table

    from .tasks import fmt, metric_name

    metrics = list(rows[0].scores) if rows else []
    t = Table("precision", *map(metric_name, metrics), "weights (KB)", "BOPs (G)", title=title)
    for r in rows:
        t.add_row(r.label, *(fmt(k, r.scores.get(k)) for k in metrics), f"{r.weight_bytes / 1024:.1f}",
                  f"{r.bops / 1e9:.2f}")
    console().print(t)


def layers(ls: list, checked: Any | None = None) -> None:
    """The traced layers (shapes, params, MACs, why a layer stays float) and, after the preflight,
    the TFLite op that carries each searchable layer's precision."""
    from rich.table import Table

    ops = {f.layer: f"{f.op} #{f.op_index}" for f in checked.fates if f.op} if checked else {}
    folded = checked.folded if checked else {}
    t = Table("layer", "kind", "in", "out", "params", "MACs", *(["TFLite op"] if checked else []), "note")
    for la in ls:
        t.add_row(la.name, la.kind, "x".join(map(str, la.in_shape)), "x".join(map(str, la.out_shape)),
                  f"{la.params:,}", f"{la.macs:,}", *([ops.get(la.name, "float")] if checked else []),
                  la.fixed_reason or folded.get(la.name, ""))
    console().print(t)
    click.echo(f"{sum(la.searchable for la in ls)} searchable layers, {sum(la.macs for la in ls):,} MACs")
    if checked:
        click.echo(f"preflight passed in {checked.seconds:.1f} s: the float model converts "
                   f"({checked.tflite_bytes / 1024:.1f} KB) and each of the {checked.searchable} searchable layers "
                   "has its TFLite op; deploy can give each its precision"
                   + (f" ({len(folded)} more kept at f32: the converter folds into their weights)" if folded else ""))


def profile(table: Any, title: str) -> None:
    """A profile's whole-model timings per precision, with the conversion costs between domains."""
    from rich.table import Table

    from .schema import DEPLOYABLE

    order = ("f32", "f16", *DEPLOYABLE)
    precs = sorted({r.precision for r in table.rows}, key=lambda p: order.index(p) if p in order else len(order))
    t = Table("layer", "kind", "MACs", *[f"{p} ms" for p in precs], title=title)
    for la in table.layers:
        if la.searchable:
            rows = [table.row(la.signature, p) for p in precs]
            t.add_row(la.name, la.kind, f"{la.macs:,}", *(f"{r.latency_ms:.3f}" if r else "-" for r in rows))
    console().print(t)
    if table.target.microcontroller:
        click.echo(f"{table.target.name} runs TFLite Micro's kernels on this CPU: its milliseconds are this CPU's, "
                   "not a microcontroller's; the arena and flash carry over to a board")
    for p, ms in table.whole_ms.items():
        rows_sum = ms - table.overhead_ms.get(p, 0.0)
        click.echo(f"uniform {p:>5}: whole model {ms:8.3f} ms measured; its layers alone sum to {rows_sum:8.3f} ms "
                   f"({(rows_sum - ms) / ms:+.1%})")
    _latency_model(table)


def _latency_model(table: Any) -> None:
    """The latency model's coefficients and how well it fits the profile's own whole models."""
    from .latency import latency_fit, profile_points

    fit = latency_fit(table)
    if fit.conversions:
        click.echo("a tensor converted between two domains costs, per million elements: " + ", ".join(
            f"{k.replace('>', ' to ')} {v * 1e6:.3f} ms" for k, v in sorted(fit.conversions.items())))
    if fit.ops:
        click.echo("the ops between layers cost, per million output elements: " + ", ".join(
            f"in {k} {v * 1e6:.3f} ms" for k, v in sorted(fit.ops.items())))
    if table.graph is None and table.whole_ms:
        click.echo("this profile predates the float graph's skeleton: the ops between layers and the conversions "
                   "next to them are not modelled; profile again for them (cached rows make it quick)")
    click.echo("layers' rows scaled inside the whole model by: "
               + ", ".join(f"{p} ×{v:.2f}" for p, v in sorted(fit.scales.items())))
    points = profile_points(table, fit)
    if points:
        errs = sorted(abs(q["predicted_ms"] / q["measured_ms"] - 1) for q in points if q["measured_ms"] > 0)
        how = (f"fitted on {fit.fitted_on} whole models, {len(table.probes)} of them random mixes" if fit.fitted_on
               else "solved from the uniform and alternating models")
        click.echo(f"latency model ({how}): on those, "
                   f"{sum(e <= 0.10 for e in errs)}/{len(errs)} within ±10 %, median error {errs[len(errs) // 2]:.1%}")


def sensitivity(sens: Any, layers: list, title: str) -> None:
    """Each layer's penalty per precision, and the layers that share one decision."""
    from rich.table import Table

    names = sens.layers()
    precs = list(dict.fromkeys(p for _, p in sens.penalties))
    kinds = {la.name: la.kind for la in layers}
    t = Table("layer", "kind", *precs, title=title + " — penalty, lower is better")
    for n in names:
        t.add_row(n, kinds.get(n, "?"), *(f"{sens.penalties[(n, p)]:.4g}" if (n, p) in sens.penalties else "-"
                                           for p in precs))
    console().print(t)
    for g in sens.groups:
        click.echo(f"shares one decision: {', '.join(g)}")


def standing(sens: Any) -> None:
    """What the benchmark said of the method that scored `sens`, when its policies lost to
    random ones somewhere (info's `below_random`)."""
    from .standing import warning

    text = warning(sens.method, sens.info)
    if text:
        click.echo("note: " + text)


def policy(policy: Any, layers: list, table: Any) -> None:
    """A policy's precision per layer and its predicted costs against the budget."""
    from rich.table import Table

    t = Table("layer", "kind", "precision", title=f"policy ({policy.method}, {policy.solver_status})")
    kinds = {la.name: la.kind for la in layers}
    for name, p in policy.precisions.items():
        t.add_row(name, kinds[name], str(p))
    console().print(t)
    pred, b = policy.predicted, policy.budget
    lines = [("latency", pred.get("latency_ms"), b.latency_ms, "ms", 1.0),
             ("size", pred["size_bytes"], b.size_kb, "KB", 1024.0), ("BOPs", pred["bops"], b.bops, "", 1.0),
             ("flash", pred.get("flash_bytes"), b.flash_kb, "KB", 1024.0),
             ("TFLite Micro arena" if "arena_bytes" in pred else "RAM (largest layer)", pred["ram_bytes"], b.ram_kb,
              "KB", 1024.0)]
    for label, v, limit, unit, scale in lines:
        if v is not None:
            cap = f" (budget {limit:g})" if limit is not None else ""
            click.echo(f"predicted {label}: {v / scale:.6g} {unit}{cap}")
    click.echo(f"objective {pred['objective']:.6g}" + (f", gap {policy.gap:.2%}" if policy.gap else "")
               + (f" (the least is {pred['least_objective']:.6g}: within --near-tie {pred['near_tie']:.0%} of it, the "
                  "faster policy was taken)" if "least_objective" in pred else ""))


def ptq_used(quant: Any, calibration: int) -> None:
    """How evaluate's policies were quantized: the PTQ algorithm, the parameters given, bias
    correction, activation ranges, the calibration samples."""
    from dataclasses import asdict

    from .quant.weights import algorithm

    defaults = asdict(algorithm(quant.weights, []).params)
    given = ", ".join(f"{k}={v}" for k, v in quant.weight_params.items() if defaults.get(k) != v)
    click.echo(f"PTQ {quant.weights} ({given or 'default parameters'}), "
               f"{'with' if quant.bias_correction else 'without'} bias correction, "
               f"activation ranges {quant.act_method}, on the calibration split ({calibration} samples)")


def quantizer_said(p: dict[str, Any]) -> str:
    """How a measuring method quantized each layer, for the summary line ('' for the others)."""
    if "ptq" not in p:
        return ""
    return (f", each layer quantized by PTQ {p['ptq']} ({p.get('ptq_params') or 'default parameters'}, "
            f"{'with' if p.get('bias_correction') else 'without'} bias correction, activation ranges "
            f"{p.get('act_range')})")


def searched(res: Any) -> None:
    """A search's policy and predictions, the limits taken from the target, the layers kept out
    of the search, the policy against all-int8 and all-float, and the warnings."""
    table = res.table
    policy(res.policy, list(table.layers), table)
    if res.from_target:
        click.echo("limits of target " + table.target.name + " applied: " + ", ".join(
            f"{k} = {getattr(res.budget, k):g}" for k in res.from_target) + " (--no-target-limits to lift them)")
    if res.kept:
        click.echo("kept out of the search: " + ", ".join(
            f"{n} at {p}" + ("" if why == "pinned" else f" ({why})") for n, p, why in res.kept))
    ms = res.policy.predicted.get("latency_ms")
    if ms is not None and res.references:
        click.echo(f"predicted latency {ms:.3g} ms against " + ", ".join(
            f"{r.label} {r.latency_ms:.3g} ms ({'measured' if r.measured else 'predicted'})" for r in res.references))
    if table.target.microcontroller:
        click.echo(f"{table.target.name}'s timings are of the CPU that profiled it, not of a microcontroller's: "
                   "its flash and RAM carry over, its milliseconds do not")
    for w in res.warnings:
        click.echo(f"warning: {w}", err=True)


def front(f: Any) -> None:
    """A sweep's front, one line a budget, the held target limits and the collapse warning."""
    if f.from_target:
        click.echo(f"held at target {f.target}'s limits: " + ", ".join(f"{k} = {getattr(f.held, k):g}"
                                                                          for k in f.from_target))
    for p in f.points:
        pred = p.get("predicted", {})
        click.echo(f"{f.key}={p['budget'][f.key]:<12.6g} " + (
            f"objective {p['objective']:<10.4g} latency {pred.get('latency_ms', float('nan')):.3f} ms, "
            f"size {pred['size_bytes'] / 1024:.1f} KB" if p["feasible"] else "infeasible"))
    if f.note:
        click.echo(f"warning: {f.note}", err=True)


def deployed(report: DeployResult, folder: str, device: str | None = None) -> None:
    """What deploy built: each layer's op and types, size, the PTQ summary, predicted latency."""
    from rich.table import Table

    from .tasks import describe, loss_warning

    t = Table("layer", "asked", "op", "weights", "activations", title=f"{report.model} on {report.target}")
    for r in report.layers:
        t.add_row(r.layer, r.precision, r.op, r.weight_type, r.activation_type)
    console().print(t)
    wb = report.weight_bytes
    sim = report.scores.get("simulated") or {"top1": report.simulated_top1}
    click.echo(f"simulated {describe(sim)} ({report.task}); model.tflite {report.tflite_bytes / 1024:.1f} KB, "
               f"weights {wb.artifact / 1024:.1f} KB (predicted {wb.predicted / 1024:.1f} KB)"
               + (f", TFLite Micro arena {report.arena_bytes / 1024:.1f} KB" if report.arena_bytes else "")
               + (f" (predicted {report.arena_predicted_bytes / 1024:.1f} KB)" if report.arena_predicted_bytes else ""))
    from .report import ptq_summary

    warning = loss_warning(report.task, report.scores.get("float", {}), sim)
    if warning:
        click.echo(f"warning: {warning}", err=True)
    text = ptq_summary(report)
    if text:
        click.echo(text.replace("`", ""))
    if report.latency is not None:
        click.echo(f"predicted latency on {report.target}: {report.latency.predicted_ms:.3f} ms")
    import shlex

    click.echo(f"wrote {folder}/ (report: {folder}/report.html); check it on the device with "
               f"`edgempq validate {shlex.quote(str(folder))} --device {shlex.quote(device or report.target)}`")


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{v:.2%}"


def validation(v: ValidationReport, report: str) -> None:
    """What validate measured: accuracy of float, simulation and artifact, agreement, latency, size."""
    from rich.table import Table

    from .report import scores_by_source
    from .tasks import agreement_words, fmt, loss_warning, metric_name

    scores = scores_by_source(None, v)
    metrics = list(scores.get("artifact") or scores.get("float") or {"top1": None})
    t = Table("", *map(metric_name, metrics), title=f"{v.artifact} on {v.target} ({v.samples} test samples, {v.task})")
    for label, key in (("float model", "float"), ("simulation", "simulated"), ("artifact on the device", "artifact")):
        t.add_row(label, *(fmt(k, scores.get(key, {}).get(k)) for k in metrics))
    console().print(t)
    warning = loss_warning(v.task, scores.get("float", {}), scores.get("simulated", {}))
    if warning:
        click.echo(f"warning: {warning}", err=True)
    if v.agreement:
        click.echo(f"agreement with the simulation: {agreement_words(v.task, v.agreement)}")
    lat = v.latency
    pred = (f", predicted {lat.predicted_ms:.3f} ms ({lat.error:+.1%})" if lat.predicted_ms is not None
            else " under emulation: the emulator's time, not the board's, held to no prediction" if lat.emulated
            else " (no prediction: give --profile)")
    rounds = f", fastest of {len(lat.rounds_ms)} rounds" if lat.rounds_ms else ""
    click.echo(f"latency median {lat.median_ms:.3f} ms (p10 {lat.p10_ms:.3f}, p90 {lat.p90_ms:.3f}{rounds}){pred}")
    size = v.size
    line = f"model.tflite {size.tflite_bytes / 1024:.1f} KB"
    if size.weight_bytes_artifact is not None:
        line += (f", weights {size.weight_bytes_artifact / 1024:.1f} KB "
                 f"(predicted {size.weight_bytes_predicted / 1024:.1f} KB)")
    if size.arena_bytes is not None:
        line += f", arena {size.arena_bytes / 1024:.1f} KB"
    click.echo(line)
    if v.data_note:
        click.echo(f"note: {v.data_note}")
    div = v.divergence
    if div:
        click.echo(f"artifact and simulation part at layer {div.layer}" if div.layer
                   else f"no single layer where they part{': ' + div.note if div.note else ''}")
    click.echo(f"report: {report}")


def demo(s: DemoSummary) -> None:
    """The demo's table: float, int8 and the mixed policy, simulated and on the device."""
    from rich.table import Table

    val, pred, lat, b = s.validation, s.policy.predicted, s.validation.latency, s.budget
    how = "cached weights" if s.train["cached"] else f"trained in {s.train['train_seconds']:.0f} s"
    t = Table("", "top-1", "weights (KB)", "latency predicted (ms)", "latency measured (ms)",
              title=f"{s.model} on {s.data} ({how}), target {s.target}, {s.method} sensitivity")
    t.add_row("float32", _pct(s.float_result.top1), f"{s.float_result.weight_bytes / 1024:.1f}", "",
              f"{s.f32_latency_ms:.3f}" if s.f32_latency_ms else "–")
    t.add_row("int8, simulated", _pct(s.int8_result.top1), f"{s.int8_result.weight_bytes / 1024:.1f}", "",
              f"{s.int8_latency_ms:.3f}")
    t.add_row("budget", "", f"≤ {b.size_kb:.1f}", f"≤ {b.latency_ms:.3f}", "")
    t.add_row("mixed, simulated", _pct(val.simulated_top1), f"{pred['size_bytes'] / 1024:.1f}",
              f"{pred['latency_ms']:.3f}", "")
    measured_pred = lat.predicted_ms if lat.predicted_ms is not None else float("nan")
    t.add_row(f"mixed artifact on {s.target}", _pct(val.artifact_top1),
              f"{s.deploy.weight_bytes.artifact / 1024:.1f}", f"{measured_pred:.3f}", f"{lat.median_ms:.3f}")
    console().print(t)
    counts: dict[str, int] = {}
    for p in map(str, s.policy.precisions.values()):
        counts[p] = counts.get(p, 0) + 1
    click.echo("policy: " + ", ".join(f"{n} x {p}" for p, n in sorted(counts.items())))
    if val.agreement:
        from .tasks import agreement_words

        click.echo(f"artifact vs simulation: {agreement_words(val.task, val.agreement)}")
    click.echo("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in s.seconds.items()))
    click.echo(f"wrote {s.folder}/; report: {s.report}")
