"""The budget sweep: one budget from LO to HI in N even steps, the other budgets held, each
solved by `solve`: the Pareto front of penalty against that budget, infeasible budgets marked."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError, InfeasibleError
from .program import METRICS
from .schema import Budget, CostTable, Layer, Sensitivity, Target
from .solve import SolveOptions, solve


@dataclass(frozen=True)
class Sweep:
    """The budgets of a front: `key` from `lo` to `hi` in `n` even steps, the `held` budgets fixed."""

    key: str
    lo: float
    hi: float
    n: int
    held: Budget = Budget()

    @classmethod
    def parse(cls, text: str, held: Budget | None = None) -> Sweep:
        """`latency_ms=LO:HI:N` (or size_kb, bops, ram_kb), checked, the other budgets `held`."""
        try:
            key, rng = text.split("=", 1)
            lo, hi, n = rng.split(":")
            out = cls(key.strip(), float(lo), float(hi), int(n), held if held is not None else Budget())
        except ValueError:
            raise ConfigError(f"sweep {text!r} must look like latency_ms=LO:HI:N (or size_kb, bops, ram_kb)") from None
        if out.key not in METRICS:
            raise ConfigError(f"cannot sweep {out.key!r}; choose one of {', '.join(METRICS)}")
        if not (0 < out.lo <= out.hi) or out.n < 1:
            raise ConfigError(f"sweep {text!r} needs 0 < LO <= HI and N >= 1")
        return out

    def values(self) -> list[float]:
        """The swept budget's values, LO first and HI last (LO alone when N is 1)."""
        return [self.lo if self.n == 1 else self.lo + (self.hi - self.lo) * i / (self.n - 1) for i in range(self.n)]


def sweep(layers: list[Layer], sensitivity: Sensitivity, costs: CostTable | None, budgets: Sweep, target: Target,
          options: SolveOptions | None = None) -> list[dict]:
    """Solve each budget of `budgets`: the Pareto front, one point per budget with its
    objective, predicted totals and policy (or, when infeasible, the reason)."""
    key = budgets.key
    points = []
    for value in budgets.values():
        b = Budget(**(budgets.held.to_dict() | {key: value}))
        try:
            pol = solve(layers, sensitivity, costs, b, target, options)
        except InfeasibleError as e:
            points.append({"budget": {key: value}, "feasible": False, "reason": str(e)})
            continue
        points.append({"budget": {key: value}, "feasible": True, "objective": pol.predicted["objective"],
                       "predicted": dict(pol.predicted), "status": pol.solver_status, "policy": pol.to_dict()})
    return points
