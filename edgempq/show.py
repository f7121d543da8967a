"""The tables and summaries the CLI prints (rich), kept apart so the CLI only wires."""

from __future__ import annotations

import sys
from typing import Any

import click


def console() -> Any:
    from rich.console import Console

    # Piped output gets a wide table rather than truncated layer names.
    return Console(width=None if sys.stdout.isatty() else 160)


def rows(rows: list, title: str) -> None:
    from rich.table import Table

    t = Table("precision", "top-1", "weights (KB)", "BOPs (G)", title=title)
    for r in rows:
        t.add_row(r.label, f"{r.top1:.2%}", f"{r.weight_bytes / 1024:.1f}", f"{r.bops / 1e9:.2f}")
    console().print(t)


def profile(table: Any, title: str) -> None:
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
    for p, ms in table.whole_ms.items():
        rows_sum = ms - table.overhead_ms.get(p, 0.0)
        click.echo(f"uniform {p:>5}: whole model {ms:8.3f} ms measured; its layers alone sum to {rows_sum:8.3f} ms "
                   f"({(rows_sum - ms) / ms:+.1%}); the difference is kept as overhead")
    from .latency import conversion_ms_per_element, domain
    from .schema import Precision

    per_element = conversion_ms_per_element(table)
    for key, ms in table.mixed_ms.items():
        pair = "~".join(sorted(domain(Precision.parse(p)) for p in key.split("~")))
        cost = per_element.get(pair)
        click.echo(f"alternating {key}: whole model {ms:8.3f} ms measured; a tensor converted between "
                   + (f"{pair.replace('~', ' and ')} costs {cost * 1e6:.3f} ms per million elements" if cost is not None
                      else f"{pair.replace('~', ' and ')}: no crossing edge to fit"))


def sensitivity(sens: Any, layers: list, title: str) -> None:
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


def policy(policy: Any, layers: list, table: Any) -> None:
    from rich.table import Table

    t = Table("layer", "kind", "precision", title=f"policy ({policy.method}, {policy.solver_status})")
    kinds = {la.name: la.kind for la in layers}
    for name, p in policy.precisions.items():
        t.add_row(name, kinds[name], str(p))
    console().print(t)
    pred, b = policy.predicted, policy.budget
    lines = [("latency", pred.get("latency_ms"), b.latency_ms, "ms", 1.0),
             ("size", pred["size_bytes"], b.size_kb, "KB", 1024.0), ("BOPs", pred["bops"], b.bops, "", 1.0),
             ("RAM (largest layer)", pred["ram_bytes"], b.ram_kb, "KB", 1024.0)]
    for label, v, limit, unit, scale in lines:
        if v is not None:
            cap = f" (budget {limit:g})" if limit is not None else ""
            click.echo(f"predicted {label}: {v / scale:.6g} {unit}{cap}")
    click.echo(f"objective {pred['objective']:.6g}" + (f", gap {policy.gap:.2%}" if policy.gap else ""))


def deployed(report: dict, folder: str) -> None:
    from rich.table import Table

    t = Table("layer", "asked", "op", "weights", "activations", title=f"{report['model']} on {report['target']}")
    for r in report["layers"]:
        t.add_row(r["layer"], r["precision"], r["op"], r["weight_type"], r["activation_type"])
    console().print(t)
    wb = report["weight_bytes"]
    click.echo(f"simulated top-1 {report['simulated_top1']:.2%}; model.tflite {report['tflite_bytes'] / 1024:.1f} KB, "
               f"weights {wb['artifact'] / 1024:.1f} KB (predicted {wb['predicted'] / 1024:.1f} KB)"
               + (f", TFLite Micro arena {report['arena_bytes'] / 1024:.1f} KB" if report.get("arena_bytes") else ""))
    click.echo(f"wrote {folder}/")
