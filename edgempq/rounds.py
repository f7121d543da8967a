"""Timing on a device that other work shares: every model timed once per round, round-robin,
and the fastest round kept.

Other processes on the device (on a shared machine, its other tenants) only ever add time, and
they come and go in phases of seconds: the same model measured 3.5 ms in one second and 5.3 ms
in the next on this machine. Round-robin spreads a slow phase over all the models instead of
whichever one was being timed, and the fastest of a model's rounds (each the median of its
invokes) is what the device itself takes. Each round's timing is cached as it finishes, so an
interrupted profile keeps it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .progress import Progress
from .schema import Target, Timing

if TYPE_CHECKING:
    from .backends import Backend
    from .profile_cache import RowCache

ROUNDS = 3  # rounds per measurement in a profile
RUNS, SECONDS = 100, 0.25  # at most, invokes and seconds per timing after the first round (see runs_for)


@dataclass(frozen=True)
class Timed:
    """One model to time: its cache key, what the progress bar calls it, its flatbuffer."""

    key: str
    label: str
    model: bytes


def runs_for(target: Target, first_ms: float | None) -> int:
    """Invokes per timing: the target's in the first round; after it, as many more (up to RUNS)
    as fit in SECONDS at the first round's median, since a fast model's median over a few
    invokes is noisy and a slow model's is not."""
    if first_ms is None or first_ms <= 0:
        return target.runs
    return max(target.runs, min(RUNS, int(SECONDS / (first_ms / 1e3))))


def fastest(timings: list[Timing]) -> Timing:
    """The round with the least median: the device's own time, the others' interference left out."""
    return min(timings, key=lambda t: t.median_ms)


def timed_rounds(backend: Backend, models: list[Timed], cache: RowCache, rounds: int = ROUNDS,
                 on_step: Progress | None = None) -> dict[str, list[Timing]]:
    """Every model's timing in each of `rounds` round-robin rounds (cached rounds are not timed
    again), by key."""
    from . import stop

    times: dict[str, list[Timing]] = {m.key: [] for m in models}
    total = rounds * len(models)
    for r in range(rounds):
        for j, m in enumerate(models):
            if on_step:
                on_step(r * len(models) + j, total, f"timing {m.label} (round {r + 1}/{rounds})")
            stop.check()
            t = cache.get_round(m.key, r)
            if t is None:
                first = times[m.key][0].median_ms if times[m.key] else None
                t = backend.time(m.model, runs_for(backend.target, first))
                cache.put_round(m.key, r, t)
            times[m.key].append(t)
    return times
