"""What `edgempq search` does around the solver (torch-free): the user's budgets plus the
profiled target's own flash and RAM, the layers kept out of the search, the precisions allowed,
the solved policy, and what it is worth on the device against the uniform policies (all-int8,
all-float), with a warning when it is far slower than all-int8."""

from __future__ import annotations

from dataclasses import dataclass, replace

from .errors import ConfigError
from .schema import Budget, CostTable, Policy, Precision, Sensitivity
from .solve import SolveOptions, shared_input_groups, solve
from .standing import warning as standing_warning

SLOW_FACTOR = 2.0  # a policy predicted slower than this many times all-int8 is warned about
NEAR_TIE = 0.01  # without a latency budget, penalties within 1 % of the least are a tie the fastest wins
REFERENCES = (("all-int8", "w8a8"), ("all-float", "f32"))


@dataclass(frozen=True)
class SearchRequest:
    """A search as the user asks for it: budgets, layers that share a precision, layers pinned
    (`NAME` or `NAME=PRECISION`), precisions allowed or excluded everywhere else, the solver's
    time, whether the target's own ram_kb and flash_kb apply, and the near-tie fraction (see
    `SolveOptions.near_tie`)."""

    budget: Budget
    groups: tuple[str, ...] = ()  # comma-separated layer names, one group each
    group_shared_inputs: bool = False
    pins: tuple[str, ...] = ()
    allow: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    time_limit_s: float = 30.0
    target_limits: bool = True
    near_tie: float = NEAR_TIE


@dataclass(frozen=True)
class Reference:
    """A uniform policy to hold a searched one against: its latency on the device, measured
    (the profile's whole-model timing) or predicted."""

    label: str  # all-int8, all-float
    precision: str
    latency_ms: float
    measured: bool


@dataclass(frozen=True)
class Searched:
    """A search's outcome: the policy, the profile it was solved on, the budget as applied, which
    limits came from the target, the layers kept out of the search (name, precision, why), the
    references, and warnings."""

    policy: Policy
    table: CostTable
    budget: Budget
    from_target: tuple[str, ...]
    kept: tuple[tuple[str, str, str], ...]
    references: tuple[Reference, ...]
    warnings: tuple[str, ...]


def applied_budget(budget: Budget, table: CostTable, use_target: bool,
                   swept: str | None = None) -> tuple[Budget, tuple[str, ...]]:
    """`budget` with the profiled target's ram_kb and flash_kb where the user set none (unless
    `use_target` is False, or a sweep varies that key), and the names of the limits taken."""
    if not use_target:
        return budget, ()
    taken = {k: getattr(table.target, k) for k in ("ram_kb", "flash_kb")
             if getattr(table.target, k) is not None and getattr(budget, k) is None and k != swept}
    return replace(budget, **taken), tuple(taken)


def limit_warnings(budget: Budget, table: CostTable, policy: Policy) -> list[str]:
    """What the user should know of the flash, RAM and latency the policy was held to: a budget
    above the target's own (deploy checks the target's), and limits held on per-layer estimates."""
    out = [f"--{k.replace('_', '-')} {getattr(budget, k):g} is above target {table.target.name}'s {k} = "
           f"{getattr(table.target, k):g}: deploy holds the artifact to the target's"
           for k in ("ram_kb", "flash_kb") if getattr(budget, k) is not None and getattr(table.target, k) is not None
           and getattr(budget, k) > getattr(table.target, k)]
    if table.target.microcontroller and budget.ram_kb is not None and "arena_bytes" not in policy.predicted:
        out.append("this profile has no whole-model measurements (profiled with --layers-only, or by an older "
                   "edgempq), so RAM was held on each layer's own single-layer arena, not on the model's; "
                   "profile again without --layers-only for TFLite Micro's arena")
    if budget.flash_kb is not None and not table.whole_bytes:
        out.append("this profile has no whole-model sizes, so flash was held on the layers' weights alone (the "
                   "graph and the fixed layers' overhead are not counted); profile again without --layers-only")
    if table.whole_ms and table.graph is None:
        out.append("this profile predates the float graph's skeleton, so latency was predicted on the layers alone "
                   "(the ops between them and the conversions next to those are not counted); profile again")
    return out


def solve_options(request: SearchRequest, table: CostTable) -> tuple[SolveOptions, tuple[tuple[str, str, str], ...]]:
    """The solver's options for `request`, and each layer kept out of the search with why:
    pinned by the user, or kept at f32 because the converter folds into it."""
    from .preflight import converter_fixed

    groups = tuple(tuple(n.strip() for n in g.split(",") if n.strip()) for g in request.groups)
    if request.group_shared_inputs:
        groups += shared_input_groups(table)
    pins = tuple((n.strip(), p.strip()) for n, _, p in (f.partition("=") for f in request.pins))
    folded = converter_fixed(table, {n for n, _ in pins})
    why = [(n, p, "pinned") for n, p in pins] + [(n, p, "the converter folds into its weights") for n, p in folded]
    options = SolveOptions(groups, request.time_limit_s, pins + folded, request.allow, request.exclude,
                           request.near_tie)
    return options, tuple(why)


def search(table: CostTable, sens: Sensitivity, request: SearchRequest) -> Searched:
    """The least-penalty policy under the request's budgets on the profiled target, with the
    uniform policies it is held against and what is worth a warning."""
    budget, from_target = applied_budget(request.budget, table, request.target_limits)
    if not budget.items():
        why = ("--no-target-limits lifted the target's own" if not request.target_limits
               else "the profiled target sets no flash or RAM limit of its own")
        raise ConfigError(f"give at least one budget: --latency-ms, --size-kb, --flash-kb, --bops or --ram-kb "
                          f"(or --sweep); {why}")
    options, kept = solve_options(request, table)
    policy = solve(list(table.layers), sens, table, budget, table.target, options)
    kept = tuple((n, str(policy.precisions[n]), why) for n, _, why in kept)
    refs = references(table)
    warnings = slow_warnings(policy, table, refs) + limit_warnings(budget, table, policy)
    warnings += [w for w in [standing_warning(sens.method, sens.info)] if w]
    return Searched(policy, table, budget, from_target, kept, refs, tuple(warnings))


def references(table: CostTable) -> tuple[Reference, ...]:
    """All-int8 and all-float as the target runs them (where it does): the profile's whole-model
    median when it measured one, else the latency model's prediction."""
    from .assign import uniform_assignment
    from .latency import predict_latency

    out = []
    for label, p in REFERENCES:
        assign = uniform_assignment(list(table.layers), table.target, p)
        if assign is None:
            continue
        if p in table.whole_ms:
            out.append(Reference(label, p, table.whole_ms[p], True))
        elif table.rows:
            out.append(Reference(label, p, predict_latency(table, assign), False))
    return tuple(out)


def slow_warnings(policy: Policy, table: CostTable, refs: tuple[Reference, ...]) -> list[str]:
    """A warning when the policy is predicted over SLOW_FACTOR times all-int8, naming the layers
    that cost the most."""
    from .latency import policy_latency

    int8 = next((r for r in refs if r.precision == "w8a8"), None)
    ms = policy.predicted.get("latency_ms")
    if int8 is None or ms is None or int8.latency_ms <= 0 or ms <= SLOW_FACTOR * int8.latency_ms:
        return []
    per_layer = policy_latency(table, policy.precisions)["layers_ms"]
    worst = sorted(per_layer.items(), key=lambda kv: -kv[1])[:3]
    names = ", ".join(f"{n} at {policy.precisions[n]} ({v:.3g} ms)" for n, v in worst)
    slow = sorted({str(p) for p in policy.precisions.values() if p.is_float or p.act_bits > 8})  # noqa: PLR2004
    fix = f"--exclude {slow[0]}" if slow else "--latency-ms"
    return [f"the policy is predicted at {ms:.3g} ms, {ms / int8.latency_ms:.1f}x all-int8's {int8.latency_ms:.3g} ms "
            f"on {table.target.name}, for little accuracy: most of it is {names}; give a latency budget "
            f"(--latency-ms) or {fix} to trade less speed for it"]


@dataclass(frozen=True)
class Front:
    """A budget sweep's points (see `sweep.sweep`) with what the search adds: the budgets held
    (the target's limits among them) and the note when the points collapse to one policy."""

    key: str
    method: str
    target: str
    held: Budget
    from_target: tuple[str, ...]
    points: list[dict]
    note: str | None

    def to_dict(self) -> dict:
        """The front as search --sweep writes it."""
        return {"sweep": self.key, "method": self.method, "target": self.target, "held": self.held.to_dict(),
                "points": self.points} | ({"note": self.note} if self.note else {})


def sweep_search(table: CostTable, sens: Sensitivity, spec: str, request: SearchRequest) -> Front:
    """The front of the sweep `spec` (e.g. latency_ms=LO:HI:N), the request's other budgets and
    the target's limits held; an InfeasibleError when no budget of it can be met."""
    from .errors import InfeasibleError
    from .sweep import Sweep, sweep

    held, from_target = applied_budget(request.budget, table, request.target_limits, spec.partition("=")[0].strip())
    budgets = Sweep.parse(spec, held)
    # each point the least penalty under its budget: a front, so no near-ties traded for speed
    options = replace(solve_options(request, table)[0], near_tie=0.0)
    points = sweep(list(table.layers), sens, table, budgets, table.target, options)
    if not any(p["feasible"] for p in points):
        raise InfeasibleError(f"none of the budgets of the sweep {spec} can be met; at the loosest, "
                              f"{points[-1]['reason']}")
    return Front(budgets.key, sens.method, table.target.name, held, from_target, points, collapsed(points))


def collapsed(points: list[dict]) -> str | None:
    """When every feasible point of a sweep is one policy, the sentence saying so (else None)."""
    feasible = [p for p in points if p["feasible"]]
    if len(feasible) < 2:  # noqa: PLR2004
        return None
    picks = {tuple(sorted((r["layer"], r["precision"]) for r in p["policy"]["layers"])) for p in feasible}
    if len(picks) > 1:
        return None
    uniform = {p for _, p in next(iter(picks))}
    what = f"all {next(iter(uniform))}" if len(uniform) == 1 else "one mixed policy"
    return (f"all {len(feasible)} feasible budgets of the sweep give the same policy ({what}): the swept budget "
            "does not bind over this range; sweep lower values, or hold another budget with it")


def precision_list(texts: tuple[str, ...]) -> tuple[str, ...]:
    """Comma-separated precisions (repeatable flags) as one tuple of canonical names."""
    return tuple(str(Precision.parse(t)) for text in texts for t in text.split(",") if t.strip())
