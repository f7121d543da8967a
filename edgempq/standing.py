"""How each sensitivity method's policies fared against random ones in BENCHMARKS.md part 2, shipped with
the package (standing.json beside this file, written by tools/bench_methods.py from its
results), so that a user who runs a method is told where its policies were no better than
chance, with the numbers, instead of finding out on the device."""

from __future__ import annotations

from pathlib import Path
from typing import Any

FILE = Path(__file__).with_name("standing.json")
MAX_BYTES = 1 << 20  # the file is ours and small; a bigger one is not read
SIGNIFICANT = 0.05  # a loss to the random median is significant below this p


def _document(path: Path | None = None) -> dict[str, Any]:
    """The shipped standing, or {} when it is missing or unreadable (the method still runs)."""
    from .files import read_own_json

    doc = read_own_json(path or FILE, MAX_BYTES)
    return doc if isinstance(doc, dict) and isinstance(doc.get("methods"), dict) else {}


def standing(method: str, path: Path | None = None) -> dict[str, Any] | None:
    """What the benchmark said of `method`: a one-line summary and the budgets where its PTQ
    top-1 fell below the random policies' median (None when the benchmark did not run it)."""
    doc = _document(path)
    rec = doc.get("methods", {}).get(method)
    if not isinstance(rec, dict):
        return None
    below = [b for b in rec.get("below_random", []) if isinstance(b, dict)]
    total = rec.get("budgets", 0)
    text = (f"{doc.get('source', 'BENCHMARKS.md part 2')}: PTQ top-1 at or above the random policies' median "
            f"at {total - len(below)} of {total} budgets")
    return {"summary": text, "below_random": [describe(b) for b in below]}


def describe(b: dict[str, Any]) -> str:
    """One budget where the method lost to chance, with both numbers and how likely chance alone
    gives such a loss (the paired test against the median random policy, when measured)."""
    text = (f"{b.get('model')} {b.get('metric')} {b.get('share')}: {b.get('top1', float('nan')):.1f} % "
            f"against the random median {b.get('random_median', float('nan')):.1f} %")
    if isinstance(b.get("p_worse"), float | int):
        text += f" (paired exact test p = {b['p_worse']:.2g}" + (", significant)" if b["p_worse"] < SIGNIFICANT
                                                                 else ", within the test split's noise)")
    return text


def p_worse(only_first: int, only_second: int) -> float:
    """The one-sided exact sign (McNemar) test on the samples two models disagree on: how likely
    the second gets `only_second` or fewer of them right by chance when both are equally good,
    P(X >= only_first) for X ~ Binomial(only_first + only_second, 1/2)."""
    from math import comb

    n = only_first + only_second
    return sum(comb(n, k) for k in range(only_first, n + 1)) / 2**n if n else 1.0


def pack(correct: Any) -> str:
    """Per-sample right/wrong (a bool array) as hex, to keep in a results file."""
    import numpy as np

    return np.packbits(np.asarray(correct, bool)).tobytes().hex() + f":{len(correct)}"


def unpack(text: str) -> Any:
    """The bool array `pack` wrote."""
    import numpy as np

    bits, _, n = text.partition(":")
    return np.unpackbits(np.frombuffer(bytes.fromhex(bits), np.uint8))[: int(n)].astype(bool)


def _paired(row: dict[str, Any], against: dict[str, Any] | None) -> float | None:
    """p of `row`'s policy being worse than `against`'s on the same test samples, when both kept them."""
    if not against or "ptq_correct" not in row or "ptq_correct" not in against:
        return None
    mine, theirs = unpack(row["ptq_correct"]), unpack(against["ptq_correct"])
    return p_worse(int((theirs & ~mine).sum()), int((mine & ~theirs).sum()))


def with_standing(method: str, info: dict[str, Any]) -> dict[str, Any]:
    """`info` with the benchmark's standing of `method` added (`benchmark`, and `below_random`
    when its policies lost to random ones at some budget)."""
    s = standing(method)
    if s is None:
        return info
    out = {**info, "benchmark": s["summary"]}
    if s["below_random"]:
        out["below_random"] = s["below_random"]
    return out


def warning(method: str, info: dict[str, Any]) -> str | None:
    """The sentence a user sees when `info` says the method lost to random policies."""
    below = info.get("below_random")
    if not below:
        return None
    return (f"{method}'s policies were below the median of random policies in the benchmark at "
            f"{len(below)} budget(s) ({'; '.join(map(str, below))}): see the README's method table for "
            "when to use it")


def summarise(results: dict[str, Any], source: str) -> dict[str, Any]:
    """standing.json's content from part 2's results (tools/bench_methods.py): per method, the
    number of feasible budgets and those where its PTQ top-1 fell below the random median, each
    with the paired test against the median random policy."""
    methods: dict[str, dict[str, Any]] = {}
    for m in results["models"]:
        rows = [r for r in m["rows"] if r["feasible"] and r["metric"] is not None]
        for metric in sorted({r["metric"] for r in rows}):
            for share in sorted({r["share"] for r in rows if r["metric"] == metric}):
                here = [r for r in rows if r["metric"] == metric and r["share"] == share]
                for r, median in _against_random(here, m["methods"]):
                    rec = methods.setdefault(r["method"], {"budgets": 0, "below_random": []})
                    rec["budgets"] += 1
                    if r["ptq_top1"] < median["ptq_top1"]:
                        rec["below_random"].append({"model": m["model"], "metric": metric, "share": share,
                                                    "top1": round(100 * r["ptq_top1"], 2),
                                                    "random_median": round(100 * median["ptq_top1"], 2),
                                                    "p_worse": _paired(r, median)})
    return {"source": source, "significant": SIGNIFICANT, "methods": methods}


def _against_random(rows: list[dict[str, Any]], methods: list[str]) -> list[tuple[dict, dict]]:
    """Each method's row of one budget with the random policies' median row (the upper middle
    one when their number is even: the stricter)."""
    rand = sorted((r for r in rows if r["method"].startswith("random")), key=lambda r: r["ptq_top1"])
    if not rand:
        return []
    median = rand[len(rand) // 2]
    return [(r, median) for r in rows if r["method"] in methods]
