"""Splits: which samples calibrate, validate, test and train; numpy only.

A split is given as a share (a float from 0 to 1: 1.0 is every sample of the main source, a
share above 0 at least one), a count (an integer), a list of the main source's sample indices,
or a .npz file whose samples are that split alone (data.py reads it and puts its samples after
the main source's). Shares and counts are drawn seeded and stratified by class from the main
source's samples that no list pins. Validation and test are disjoint from each other and from
calibration; train is the main source (and a calibration file) less validation and test, so
the calibration samples are training samples, as in PTQ practice."""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import ConfigError, DataError

SPLITS = ("calibration", "validation", "test")
DEFAULT_SPLITS = {"calibration": 0.1, "validation": 0.1, "test": 0.2}


def check_split(where: str, key: str, v: Any) -> None:
    """A ConfigError naming `where` and splits.`key` unless `v` is a share (float from 0 to 1),
    a count (int, 0 or more), a list of sample indices or a file name."""
    if isinstance(v, bool) or not isinstance(v, int | float | str | list):
        bad = "must be a share from 0.0 to 1.0, a count, a list of sample indices or a .npz file"
    elif isinstance(v, float) and not 0 <= v <= 1:
        bad = "is a share, which must be from 0.0 to 1.0 (1.0 is every sample); write a count as an integer"
    elif isinstance(v, int) and v < 0:
        bad = "is a count, which must be 0 or more"
    elif isinstance(v, list) and not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in v):
        bad = "must list sample indices as integers of 0 or more"
    elif v == "":
        bad = "must name a .npz file"
    else:
        return
    shown = repr(v) if len(repr(v)) <= 40 else repr(v)[:37] + "..."
    raise ConfigError(f"{where}: splits.{key} = {shown} {bad}")


def resolve_splits(splits: dict[str, Any], y: np.ndarray, pool: int, files: dict[str, tuple[int, int]],
                   seed: int, where: str) -> dict[str, np.ndarray]:
    """Each split's sample indices (calibration, validation, test, train) from its value in
    `splits`: samples 0..`pool` are the main source's, `files` the index range of each split
    file's; errors name `where` (the manifest) and the split."""
    pinned = {k: _pinned(splits[k], f"{where}: splits.{k}", pool, files.get(k))
              for k in SPLITS if isinstance(splits[k], str | list)}
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1:]:
            both = np.intersect1d(pinned.get(a, []), pinned.get(b, []))
            if len(both):
                raise DataError(f"{where}: splits.{a} and splits.{b} both list sample {int(both[0])} "
                                f"({len(both)} shared in all); a sample can be in one of them only")
    free = np.setdiff1d(np.arange(pool), np.concatenate([np.zeros(0, np.int64), *pinned.values()]))
    drawn = stratified_splits(y, _counts(splits, pool, len(free), where), seed, free)
    res = {k: pinned.get(k, drawn[k]) for k in SPLITS}
    trainable = np.arange(pool)
    if isinstance(splits["calibration"], str):
        trainable = np.concatenate([trainable, res["calibration"]])
    res["train"] = np.setdiff1d(trainable, np.concatenate([res["validation"], res["test"]]))
    return res


def _pinned(v: str | list[int], where: str, pool: int, block: tuple[int, int] | None) -> np.ndarray:
    if isinstance(v, str):
        if block is None:
            raise ConfigError(f"{where} names file {v}, which was not read; name split files in a manifest")
        return np.arange(*block)
    if v and max(v) >= pool:
        raise DataError(f"{where} lists sample {max(v)}, but the data has {pool} samples; "
                        f"give indices from 0 to {pool - 1}")
    idx, n = np.unique(np.asarray(v, np.int64), return_counts=True)
    if (n > 1).any():
        raise DataError(f"{where} lists sample {int(idx[n > 1][0])} more than once; list each sample once")
    return idx


def _counts(splits: dict[str, Any], n: int, free: int, where: str) -> dict[str, int]:
    """Samples to draw for each split: a share of the main source's `n` (at least one when above
    0), a count, or 0 for a pinned split; together they must fit in the `free` samples."""
    counts = {}
    for k in SPLITS:
        v = splits[k]
        check_split(where, k, v)
        if isinstance(v, str | list):
            counts[k] = 0
        else:
            counts[k] = max(1, round(v * n)) if isinstance(v, float) and v > 0 else int(v)
    if sum(counts.values()) > free:
        raise DataError(f"{where}: {free} samples to draw splits from are too few for {counts}; "
                        "lower the split sizes (a share of 1.0 is every sample)")
    return counts


def _quotas(n: int, per_class: np.ndarray) -> np.ndarray:
    """Split n over classes in proportion to their sizes (largest remainders get the rest)."""
    if n == 0:
        return np.zeros_like(per_class)
    exact = n * per_class / per_class.sum()
    q = np.floor(exact).astype(int)
    order = np.argsort(-(exact - q), kind="stable")
    q[order[: n - q.sum()]] += 1
    return np.minimum(q, per_class)


def strata(y: np.ndarray) -> np.ndarray:
    """What splits are stratified by: the class labels, or one stratum for other targets
    (per-pixel labels, values, none)."""
    if y.ndim == 1 and np.issubdtype(y.dtype, np.integer):
        return y
    return np.zeros(len(y), np.int64)


def stratified_splits(y: np.ndarray, counts: dict[str, int], seed: int,
                      pool: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Seeded, class-stratified indices drawn from `pool` (default: every sample): test,
    validation and calibration are disjoint; train = the pool but validation and test."""
    rng = np.random.default_rng(seed)
    pool = np.arange(len(y)) if pool is None else np.asarray(pool, np.int64)
    labels = y[pool]
    pools = [rng.permutation(pool[labels == c]) for c in np.unique(labels)]
    sizes = np.array([len(p) for p in pools], int)
    out: dict[str, list[np.ndarray]] = {k: [np.zeros(0, np.int64)] for k in ("test", "validation", "calibration")}
    offsets = np.zeros(len(pools), int)
    for k in ("test", "validation", "calibration"):
        q = _quotas(counts[k], sizes - offsets)
        for i, p in enumerate(pools):
            out[k].append(p[offsets[i] : offsets[i] + q[i]])
        offsets += q
    res = {k: np.sort(np.concatenate(v)) for k, v in out.items()}
    res["train"] = np.setdiff1d(pool, np.concatenate([res["validation"], res["test"]]))
    return {k: res[k] for k in ("calibration", "validation", "test", "train")}


def spread(n: int, count: int | None) -> np.ndarray:
    """`count` sample indices spread evenly over `n` (all of them when `count` is None or
    larger): splits may be sorted by class, so a prefix would see a few classes only."""
    if count is None or count >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, count).round().astype(int))
