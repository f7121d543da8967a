"""A model's numbers for the integer program (`program.py`), solved into a Policy.

`build_problem` turns the traced layers, the device profile and a sensitivity into `Choice`s
(penalty, predicted latency, weight bytes, BOPs, RAM per layer and precision); `solve` cuts them
to the layers kept out of the search and solves. The budget sweep (the Pareto front) is `sweep.py`."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from .costs import bops, weight_bytes, working_set_bytes
from .errors import ConfigError
from .program import Choice, Problem, Row, solve_problem, with_case
from .schema import Budget, CostTable, Layer, Policy, Precision, Sensitivity, Target


def _check_same_layers(layers: list[Layer], sensitivity: Sensitivity) -> None:
    names = [la.name for la in layers if la.searchable]
    scored = set(sensitivity.layers())
    foreign = [n for n in sensitivity.layers() if n not in set(names)]
    unscored = [n for n in names if n not in scored]
    if foreign or unscored:
        what = (f"scores layer(s) {', '.join(foreign[:5])} that the profiled model does not have" if foreign
                else f"does not score layer(s) {', '.join(unscored[:5])} of the profiled model")
        raise ConfigError(f"the {sensitivity.method} sensitivity {what}; compute the sensitivity and the profile "
                          "for the same model")


def build_problem(layers: list[Layer], sensitivity: Sensitivity, costs: CostTable | None, target: Target,
                  groups: tuple[tuple[str, ...], ...] = ()) -> Problem:
    """The numbers of a model: per searchable layer, the target's precisions for its kind with
    the sensitivity's penalty, the profile's latency (and measured RAM when it has it), the
    artifact's weight bytes and the BOPs; with a profile, the cases of the policy's common bits
    and the latency of the conversions and the ops between layers in each (`latency_program`)."""
    from .latency import latency_fit, layer_cost_ms
    from .latency_program import latency_cases
    from .memory import flash_offset, layer_flash

    _check_same_layers(layers, sensitivity)
    fit = latency_fit(costs) if costs is not None else None
    choices: dict[str, list[Choice]] = {}
    for la in layers:
        if not la.searchable:
            continue
        opts = []
        for p in target.allowed(la.kind):
            row = costs.row(la.signature, p) if costs is not None else None
            if costs is not None and row is None:
                raise ConfigError(f"the profile has no measurement of layer {la.name} at {p}; "
                                  f"profile the model again on {target.name}")
            opts.append(Choice(la.name, str(p), sensitivity.penalty(la.name, p),
                               layer_cost_ms(costs, la, p, fit) if costs is not None else 0.0,
                               weight_bytes(la, p), bops(la, p),
                               row.ram_bytes if row is not None and row.ram_bytes else working_set_bytes(la, p),
                               layer_flash(costs, la, p)))
        choices[la.name] = opts
    f32 = Precision(32, 32, True)
    fixed = [la for la in layers if not la.searchable]
    constant = {"size_bytes": sum(weight_bytes(la, f32) for la in fixed), "bops": sum(bops(la, f32) for la in fixed),
                "ram_bytes": max((working_set_bytes(la, f32) for la in fixed), default=0),  # the largest, not a sum
                "flash_bytes": flash_offset(costs, layers)[0]}
    known = {la.name for la in layers if la.searchable}
    pairs = {(a, b): v for (a, b), v in sensitivity.pairs.items() if a[0] in known and b[0] in known}
    all_groups = tuple(dict.fromkeys(tuple(g) for g in (*sensitivity.groups, *groups)))
    cases = () if costs is None else latency_cases(costs, fit, {n: [c.precision for c in cs]
                                                                for n, cs in choices.items()})
    return Problem(choices, pairs, all_groups, constant, cases=cases)


@dataclass(frozen=True)
class SolveOptions:
    """What a search adds to the model's numbers: layers that must share one precision (on top
    of the sensitivity's groups), how long the solver may take per budget, layers pinned to
    one precision, and the precisions every other layer may (`allow`) or may not (`exclude`) take."""

    groups: tuple[tuple[str, ...], ...] = ()
    time_limit_s: float = 30.0
    # layers kept out of the search at one precision: (name, "w8a8" / "f32" / "" = the widest)
    fixed: tuple[tuple[str, str], ...] = ()
    allow: tuple[str, ...] = ()  # when given, the only precisions the searched layers may take
    exclude: tuple[str, ...] = ()
    # with a profile and no latency budget: policies whose penalty is within this fraction of the
    # least count as tied, and the fastest of them wins (a hair of penalty is not worth 60x the time)
    near_tie: float = 0.0


def solve(layers: list[Layer], sensitivity: Sensitivity, costs: CostTable | None, budget: Budget, target: Target,
          options: SolveOptions | None = None) -> Policy:
    """The policy of least penalty that meets `budget` on `target`; a latency budget needs
    `costs` (the device profile). On a microcontroller profile with its graph, the RAM budget
    holds TFLite Micro's predicted arena (see `arena`)."""
    if budget.latency_ms is not None and costs is None:
        raise ConfigError("a latency budget needs the device profile; give --profile")
    options = options if options is not None else SolveOptions()
    problem = fix_layers(build_problem(layers, sensitivity, costs, target, options.groups), options.fixed, target)
    problem = restrict(problem, options, target)
    near_tie = options.near_tie if costs is not None and budget.latency_ms is None else 0.0
    from .arena import arena_model

    model = arena_model(costs) if costs is not None and target.microcontroller else None
    if model is not None:
        sol, arena = _solve_in_arena(problem, budget, model, _Timed(options.time_limit_s, near_tie))
    else:
        sol, arena = solve_problem(problem, budget, options.time_limit_s, near_tie), None
    predicted = {"objective": sol.objective, "size_bytes": sol.totals["size_bytes"], "bops": sol.totals["bops"],
                 "ram_bytes": sol.totals["ram_bytes"] if arena is None else arena,
                 "flash_bytes": sol.totals["flash_bytes"], "solve_seconds": sol.seconds}
    if arena is not None:
        predicted["arena_bytes"] = arena
    if sol.least is not None and sol.least < sol.objective:  # said: the penalty is not the least
        predicted |= {"least_objective": sol.least, "near_tie": near_tie}
    if costs is not None:
        predicted["latency_ms"] = sol.totals["latency_ms"]
    from .schema.core import QUANTIZER_KEYS, _quantizer

    quantizer = {k: sensitivity.params[k] for k in QUANTIZER_KEYS if k in sensitivity.params}
    return Policy({la: Precision.parse(p) for la, p in sol.precisions.items()}, budget, sensitivity.method,
                  target.name, sensitivity.model_hash, predicted, sol.status, sol.gap,
                  _quantizer(quantizer) if "ptq" in quantizer else None)


ARENA_ROUNDS = 24


class _Timed:
    """The arena loop's solves, which share one time limit between them: each gets what is left."""

    def __init__(self, time_limit_s: float, near_tie: float) -> None:
        self.limit, self.near_tie, self.solves = time_limit_s, near_tie, 0
        self.end = time.perf_counter() + time_limit_s

    def __call__(self, problem: Problem, budget: Budget, explain: bool = True) -> Any:
        from .errors import SolverTimeoutError

        left = self.end - time.perf_counter()
        if left <= 0:
            raise SolverTimeoutError(f"the RAM search used its whole time limit ({self.limit:g} s, {self.solves} "
                                     "solves) before a policy fit the arena; raise --time-limit")
        self.solves += 1
        return solve_problem(problem, budget, left, self.near_tie, explain=explain)


def _solve_in_arena(problem: Problem, budget: Budget, model: Any, solver: _Timed) -> tuple[Any, int]:
    """Solve with the RAM budget held on TFLite Micro's predicted arena. The solver holds the
    bytes alive at every op (linear in the choices) plus the persistent tail under the budget,
    in each of the problem's cases (`latency_program`: the width the ops between layers compute
    at, held by its majority rows); the planner's packing adds to those bytes, so each solution's
    arena is predicted exactly and the rows are tightened while it is over (bisected when too tight)."""
    from .errors import InfeasibleError

    if budget.ram_kb is None:
        sol = solver(problem, budget)
        return sol, model.predict(_precisions(sol)).total
    free = replace(budget, ram_kb=None)
    first = solver(problem, free)  # the other budgets' own infeasibility is theirs to say
    seen = [(model.predict(_precisions(first)), first)]
    if seen[0][0].total <= budget.ram_kb * 1024:
        return first, seen[0][0].total
    choices = {n: [c.precision for c in cs] for n, cs in problem.choices.items()}
    fits = []
    for case in problem.cases:  # one per common width: the ops between layers compute at it
        fits += _fit_width(with_case(problem, case), free, model,
                           (budget.ram_kb * 1024, model.live_rows(choices, int(case.label))), solver, seen)
    if fits:
        sol, arena = min(fits, key=lambda f: f[0].objective)
        return sol, arena
    _narrowest(problem, free, model, solver, seen)
    least = min(seen, key=lambda s: s[0].total)[0]
    where = f" (it peaks where the tensors of {', '.join(least.peak_layers[:4])} are alive)" if least.peak_layers \
        else ""
    raise InfeasibleError(f"budget ram_kb={budget.ram_kb:g} cannot be met on TFLite Micro: the policies meeting the "
                          f"other budgets need {least.total / 1024:.1f} KB of arena at least{where}; raise ram_kb to "
                          "that, or make those layers' activations smaller (a smaller input, fewer channels)")


def _fit_width(problem: Problem, budget: Budget, model: Any, ram: tuple[float, list], solver: _Timed,
               seen: list) -> list[tuple[Any, int]]:
    """The policy under `ram` = (bytes, live rows) for one common width: each solution over the
    budget is cut from the problem (the planner's packing put it over, not the live bytes) and
    the rows are tightened by its excess, bisected back when they rule everything out; [] if
    none fits. Every arena predicted is added to `seen` (arena, solution)."""
    from .arena import ALIGN
    from .errors import InfeasibleError

    limit, live = ram
    tail = model.anchor_tail()
    lo, hi, excess = 0.0, None, 0.0
    cuts: list[Row] = []
    for _ in range(ARENA_ROUNDS):
        rows = tuple(Row({k: v for k, v in r.items() if k != ("", "")}, limit - tail - excess - r[("", "")])
                     for r in live)
        try:
            sol = solver(replace(problem, rows=problem.rows + rows + tuple(cuts)), budget, explain=False)
        except InfeasibleError:
            if excess <= 0:
                return []  # the live bytes alone are over the budget at this width, or every fit is cut
            hi = excess
            excess = (lo + hi) / 2 if hi - lo > ALIGN else 0.0  # the cuts may rule out what fit at lo
            lo = lo if excess else 0.0
            continue
        arena = model.predict(_precisions(sol))
        seen.append((arena, sol))
        if arena.total <= limit:
            return [(sol, arena.total)]
        cuts.append(Row({(n, p): 1.0 for n, p in sol.precisions.items()}, len(sol.precisions) - 1.0))
        lo = excess
        excess += arena.total - limit
        if hi is not None:
            excess = min(excess, (lo + hi) / 2)
    return []


def _narrowest(problem: Problem, budget: Budget, model: Any, solver: _Timed, seen: list) -> None:
    """Add to `seen` the arena of the narrowest activations every layer can take, when that
    policy meets the other budgets: the least arena the error can quote."""
    from .errors import InfeasibleError

    def width(c: Choice) -> tuple[int, int]:
        p = Precision.parse(c.precision)
        return p.act_bits, -p.weight_bits

    narrow = {n: [min(cs, key=width)] for n, cs in problem.choices.items()}
    try:
        sol = solver(replace(problem, choices=narrow), budget, explain=False)
    except InfeasibleError:
        return
    seen.append((model.predict(_precisions(sol)), sol))


def _precisions(sol: Any) -> dict[str, Precision]:
    return {n: Precision.parse(p) for n, p in sol.precisions.items()}


def _widest(options: list[Choice]) -> Choice:
    """Float first (f32 over f16), then the most weight bits, then the most activation bits."""
    def rank(c: Choice) -> tuple[bool, int, int]:
        p = Precision.parse(c.precision)
        return p.is_float, p.weight_bits, p.act_bits

    return max(options, key=rank)


def fix_layers(problem: Problem, fixed: tuple[tuple[str, str], ...], target: Target) -> Problem:
    """`problem` with each named layer's choices cut to the one precision it is fixed at (the
    widest the target allows when none is given); an unknown layer or a precision the target does
    not offer for it is refused."""
    if not fixed:
        return problem
    choices = dict(problem.choices)
    for name, text in fixed:
        if name not in choices:
            raise ConfigError(f"--pin {name}: the model has no searchable layer of that name; "
                              f"choose from {', '.join(choices) or '(none)'}")
        if not text:
            choices[name] = [_widest(choices[name])]
            continue
        want = str(Precision.parse(text))
        kept = [c for c in choices[name] if c.precision == want]
        if not kept:
            raise ConfigError(f"--pin {name}={text}: {target.name} does not offer {want} for that layer; "
                              f"choose from {', '.join(c.precision for c in choices[name])}")
        choices[name] = kept
    return replace(problem, choices=choices)


def restrict(problem: Problem, options: SolveOptions, target: Target) -> Problem:
    """`problem` with the precisions of `options.allow` only, less `options.exclude`, on every
    layer not fixed (a pinned precision wins); a precision the target never offers, or a layer
    left with nothing to choose, is refused, naming what it could take."""
    if not options.allow and not options.exclude:
        return problem
    offered = {c.precision for cs in problem.choices.values() for c in cs}
    offered |= {str(p) for ps in target.precisions.values() for p in ps}
    allow = {_offered(t, offered, "--allow") for t in options.allow}
    exclude = {_offered(t, offered, "--exclude") for t in options.exclude}
    pinned = {n for n, _ in options.fixed}
    choices = dict(problem.choices)
    for name, cs in problem.choices.items():
        if name in pinned:
            continue
        kept = [c for c in cs if (not allow or c.precision in allow) and c.precision not in exclude]
        if not kept:
            raise ConfigError(f"layer {name} takes {', '.join(c.precision for c in cs)} on {target.name}, and "
                              "--allow/--exclude leave it none; allow one of those, or --pin the layer")
        choices[name] = kept
    return replace(problem, choices=choices)


def _offered(text: str, offered: set[str], flag: str) -> str:
    p = str(Precision.parse(text))
    if p not in offered:
        raise ConfigError(f"{flag} {text}: the target offers no layer {p}; choose from {', '.join(sorted(offered))}")
    return p


def shared_input_groups(costs: CostTable) -> tuple[tuple[str, ...], ...]:
    """Layers that read the same activation (the same producers in the profile's graph), e.g. a
    block's first conv and its downsample: one group each, so that they take one precision and
    the tensor they read is converted for one domain only."""
    readers: dict[tuple[str, ...], list[str]] = {}
    for consumer in dict.fromkeys(c for _, c, _ in costs.edges):
        key = tuple(sorted(p for p, c, _ in costs.edges if c == consumer))
        readers.setdefault(key, []).append(consumer)
    return tuple(tuple(g) for g in readers.values() if len(g) > 1)
