"""The integer program's numbers: per layer its choices (penalty, latency, size, BOPs, RAM,
flash), the pairwise and any-of terms, the rows, and the cases a policy's latency depends on as a
whole; what a pick costs. Torch- and solver-free: `program.py` solves them."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .errors import ConfigError, InfeasibleError


@dataclass(frozen=True)
class Choice:
    """One option of one layer, as numbers."""

    layer: str
    precision: str
    penalty: float
    latency_ms: float = 0.0
    size_bytes: float = 0.0
    bops: float = 0.0
    ram_bytes: float = 0.0
    flash_bytes: float = 0.0  # what the layer adds to the flatbuffer (weights, bias, quantization, op)


@dataclass(frozen=True)
class Problem:
    """Options per layer (model order), pairwise penalties, groups that share a precision, and
    what the fixed layers add to each total (e.g. their float32 weight bytes)."""

    choices: dict[str, list[Choice]]
    pairs: dict[tuple[tuple[str, str], tuple[str, str]], float] = field(default_factory=dict)
    groups: tuple[tuple[str, ...], ...] = ()
    constant: dict[str, float] = field(default_factory=dict)  # metric field -> value
    # ms the device spends between two layers for their pair of choices (tensor conversions)
    latency_pairs: dict[tuple[tuple[str, str], tuple[str, str]], float] = field(default_factory=dict)
    # linear rows every policy must meet: Σ coefficient × [layer takes precision] ≤ limit
    rows: tuple[Row, ...] = ()
    # ms paid when some of several choices is picked (a tensor converted once for all its readers)
    latency_any: tuple[AnyOf, ...] = ()
    # settings of what the latency depends on as a whole (the policy's common bits), each with
    # the rows that say when it holds: the solver takes the best policy over all of them
    cases: tuple[Case, ...] = ()


@dataclass(frozen=True)
class Row:
    """A linear constraint on the choices: Σ coefficient · x(layer, precision) ≤ limit."""

    coefficients: dict[tuple[str, str], float]
    limit: float


@dataclass(frozen=True)
class AnyOf:
    """`ms` paid when one of the `given` choices is picked (always, when empty) and so is one of
    the `readers`: e.g. a tensor converted once, whichever of its readers needs it."""

    ms: float
    given: tuple[tuple[str, str], ...]
    readers: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Case:
    """One setting of what the latency depends on as a whole: `rows` say which policies it
    holds for; it adds latency per choice, per pair of choices, any-of terms and a constant."""

    label: str
    rows: tuple[Row, ...] = ()
    latency: dict[tuple[str, str], float] = field(default_factory=dict)
    pairs: dict[tuple[tuple[str, str], tuple[str, str]], float] = field(default_factory=dict)
    any_of: tuple[AnyOf, ...] = ()
    constant_ms: float = 0.0


def with_case(problem: Problem, case: Case) -> Problem:
    """`problem` restricted to the policies `case` holds for, with the latency it adds."""
    choices = {la: [replace(c, latency_ms=c.latency_ms + case.latency.get((la, c.precision), 0.0)) for c in cs]
               for la, cs in problem.choices.items()}
    pairs = dict(problem.latency_pairs)
    for k, v in case.pairs.items():
        pairs[k] = pairs.get(k, 0.0) + v
    constant = problem.constant | {"latency_ms": problem.constant.get("latency_ms", 0.0) + case.constant_ms}
    return replace(problem, choices=choices, latency_pairs=pairs, latency_any=problem.latency_any + case.any_of,
                   rows=problem.rows + case.rows, constant=constant, cases=())


@dataclass(frozen=True)
class Solution:
    """The solver's answer: a precision per layer, its penalty and totals, and how sure it is."""

    precisions: dict[str, str]
    objective: float
    totals: dict[str, float]  # latency_ms, size_bytes, bops, ram_bytes (the largest layer)
    status: str  # optimal, or feasible when the time limit stopped the proof
    gap: float
    seconds: float
    least: float | None = None  # the least penalty, when a near-tie gave a faster policy above it


def totals(problem: Problem, pick: dict[str, str]) -> dict[str, float]:
    """What a pick costs: sums of latency (with the conversions between its layers), size and
    BOPs, and the largest layer's RAM."""
    chosen = [next(c for c in problem.choices[la] if c.precision == p) for la, p in pick.items()]
    out = {k: sum(getattr(c, k) for c in chosen) + problem.constant.get(k, 0.0)
           for k in ("latency_ms", "size_bytes", "bops", "flash_bytes")}
    out["latency_ms"] += _picked_pairs(problem.latency_pairs, pick) + _picked_any(problem.latency_any, pick)
    out["ram_bytes"] = max([c.ram_bytes for c in chosen] + [problem.constant.get("ram_bytes", 0.0)])
    return out


def _picked_pairs(pairs: dict, pick: dict[str, str]) -> float:
    return sum(v for (a, b), v in pairs.items() if pick.get(a[0]) == a[1] and pick.get(b[0]) == b[1])


def _picked_any(terms: tuple[AnyOf, ...], pick: dict[str, str]) -> float:
    def hit(cs: tuple[tuple[str, str], ...]) -> bool:
        return any(pick.get(la) == p for la, p in cs)

    return sum(t.ms for t in terms if (not t.given or hit(t.given)) and hit(t.readers))


def objective(problem: Problem, pick: dict[str, str]) -> float:
    """Σ penalties of the picked choices plus the pairwise terms both of whose choices are picked."""
    own = sum(next(c.penalty for c in problem.choices[la] if c.precision == p) for la, p in pick.items())
    return own + _picked_pairs(problem.pairs, pick)


def merge_groups(groups: tuple[tuple[str, ...], ...]) -> list[tuple[str, ...]]:
    """Groups that share a layer become one group (sharing a precision is transitive)."""
    merged: list[list[str]] = []
    for g in groups:
        if not g:
            raise ConfigError("a group of layers is empty; list two or more layers, comma-separated")
        hit = [m for m in merged if set(m) & set(g)]
        new = list(dict.fromkeys([la for m in hit for la in m] + list(g)))
        merged = [m for m in merged if m not in hit] + [new]
    return [tuple(m) for m in merged]


def group_options(problem: Problem) -> list[tuple[tuple[str, ...], list[str]]]:
    """Decision units: each group (or lone layer) with the precisions all its members have."""
    groups = merge_groups(problem.groups)
    grouped = {la for g in groups for la in g}
    units = list(groups) + [(la,) for la in problem.choices if la not in grouped]
    out = []
    for members in units:
        missing = [la for la in members if la not in problem.choices]
        if missing:
            raise ConfigError(f"group {', '.join(members)} names layer(s) {', '.join(missing)} that are not searched")
        common = [c.precision for c in problem.choices[members[0]]
                  if all(any(o.precision == c.precision for o in problem.choices[m]) for m in members[1:])]
        if not common:
            raise InfeasibleError(f"layers {', '.join(members)} must share a precision but have none in common; "
                                  "drop the group or give them a common precision")
        out.append((members, common))
    return out
