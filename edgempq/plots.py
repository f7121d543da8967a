"""PNG plots, written atomically (matplotlib's Agg backend, imported only here)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

from .files import atomic_write_bytes

if TYPE_CHECKING:
    from types import ModuleType

    from matplotlib.figure import Figure


def _save(fig: Figure, path: str | Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return atomic_write_bytes(Path(path), buf.getvalue())


def pareto_front(points: list[dict], key: str, title: str, path: str | Path,
                 chosen: tuple[float, float] | None = None) -> Path:
    """The objective against the swept budget, infeasible budgets marked; `chosen` (budget,
    objective) marks the deployed policy."""
    plt = _pyplot()
    ok = [p for p in points if p["feasible"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([p["budget"][key] for p in ok], [p["objective"] for p in ok], "o-", label="objective (penalty)")
    bad = [p["budget"][key] for p in points if not p["feasible"]]
    if bad:
        ax.plot(bad, [0.0] * len(bad), "x", color="red", label="infeasible")
    if chosen is not None:
        ax.plot([chosen[0]], [chosen[1]], "*", ms=14, color="tab:red", label="deployed policy")
    ax.set_xlabel(key)
    ax.set_ylabel("total penalty (lower is better)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def _pyplot() -> ModuleType:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def layer_precisions(rows: list[dict], path: str | Path, title: str) -> Path:
    """One bar per layer (execution order, top to bottom): its predicted latency on the device
    at the chosen precision when known (`ms`), else its weight bytes; colour = precision."""
    plt = _pyplot()
    use_ms = all(r.get("ms") is not None for r in rows)
    values = [r["ms"] if use_ms else r["weight_bytes"] / 1024 for r in rows]
    precisions = sorted({r["precision"] for r in rows}, key=lambda p: (p.startswith("f"), p))
    cmap = plt.get_cmap("tab10")
    colour = {p: cmap(i % 10) for i, p in enumerate(precisions)}
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(rows) + 1.5))
    y = list(range(len(rows)))[::-1]
    ax.barh(y, values, color=[colour[r["precision"]] for r in rows])
    ax.set_yticks(y, [f"{r['layer']} ({r['precision']})" for r in rows], fontsize=8)
    for yi, v in zip(y, values, strict=True):
        ax.text(v, yi, f" {v:.3g}", va="center", fontsize=7)
    ax.set_xlabel("predicted latency on the device (ms)" if use_ms else "weight storage (KB)")
    ax.set_xlim(0, max(values) * 1.15 if max(values) > 0 else 1)
    ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=colour[p]) for p in precisions], labels=precisions,
              fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), title="precision")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def latency_check(points: list[dict], path: str | Path, title: str) -> Path:
    """Measured against predicted whole-model latency: the profile's own policies (uniform,
    alternating) and the deployed artifact, with the y = x line and a +-10 % band; log axes
    when the timings span more than a decade."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    lo = min(min(p["predicted_ms"], p["measured_ms"]) for p in points) * 0.8
    hi = max(max(p["predicted_ms"], p["measured_ms"]) for p in points) * 1.25
    if hi / lo > 10:
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.plot([lo, hi], [lo, hi], color="grey", lw=1, label="measured = predicted")
    ax.fill_between([lo, hi], [lo * 0.9, hi * 0.9], [lo * 1.1, hi * 1.1], color="grey", alpha=0.15, label="+-10 %")
    prof = [p for p in points if not p.get("artifact")]
    if prof:
        ax.plot([p["predicted_ms"] for p in prof], [p["measured_ms"] for p in prof], "o", color="tab:blue",
                label="profile's whole-model timings")
        for p in prof:
            ax.annotate(p["label"], (p["predicted_ms"], p["measured_ms"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    for p in (p for p in points if p.get("artifact")):
        ax.plot([p["predicted_ms"]], [p["measured_ms"]], "*", ms=14, color="tab:red", label=p["label"])
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("predicted (ms)")
    ax.set_ylabel("measured (ms)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
