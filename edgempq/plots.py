"""PNG plots, written atomically (matplotlib's Agg backend, imported only here)."""

from __future__ import annotations

import io
from pathlib import Path

from .files import atomic_write_bytes


def _save(fig, path: str | Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return atomic_write_bytes(Path(path), buf.getvalue())


def pareto_front(points: list[dict], key: str, title: str, path: str | Path) -> Path:
    """The objective against the swept budget, infeasible budgets marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [p for p in points if p["feasible"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([p["budget"][key] for p in ok], [p["objective"] for p in ok], "o-", label="objective (penalty)")
    bad = [p["budget"][key] for p in points if not p["feasible"]]
    if bad:
        ax.plot(bad, [0.0] * len(bad), "x", color="red", label="infeasible")
    ax.set_xlabel(key)
    ax.set_ylabel("total penalty (lower is better)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)
