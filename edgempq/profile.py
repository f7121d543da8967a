"""Per-layer cost tables measured on the device (`edgempq profile`).

Each distinct (layer signature, precision) the target can run becomes a single-layer TFLite
model, quantized the way deployment quantizes, timed on the device. Every measurement is
written to the cache as soon as it completes (atomically, with a checksum), keyed by the
device's fingerprint, so a second profile is near-free and an interrupted one resumes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .backends import Backend, backend_for
from .cache import cache_dir
from .errors import ConfigError
from .files import write_json
from .schema import CostRow, CostTable, Layer, Precision, Target

Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class Job:
    layer: Layer  # the first layer with this signature
    precision: Precision

    @property
    def key(self) -> str:
        return f"{_digest(self.layer.signature)[:20]}-{self.precision}"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def device_key(target: Target, fingerprint: dict[str, Any]) -> str:
    """Cache folder name: the target and what the device reported, not where it is reached."""
    ident = {k: fingerprint.get(k) for k in ("backend", "cpu", "machine", "cores", "runtime", "runtime_version")}
    ident |= {"target": target.name, "threads": target.threads}
    return _digest(json.dumps(ident, sort_keys=True))[:16]


def jobs_for(layers: list[Layer], target: Target) -> list[Job]:
    """One job per distinct (signature, precision) of the searchable layers."""
    seen: dict[tuple[str, str], Job] = {}
    for la in layers:
        if la.searchable:
            for p in target.allowed(la.kind):
                seen.setdefault((la.signature, str(p)), Job(la, p))
    return list(seen.values())


class RowCache:
    """One JSON file per measured row; a truncated or edited file is ignored and re-measured."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder

    def get(self, job: Job) -> CostRow | None:
        if self.folder is None:
            return None
        path = self.folder / f"{job.key}.json"
        try:
            doc = json.loads(path.read_text())
            row = CostRow.from_dict(doc["row"])
        except (OSError, ValueError, KeyError, TypeError, ConfigError):
            return None
        if doc.get("sha256") != _digest(json.dumps(doc["row"], sort_keys=True)) or row.signature != job.layer.signature:
            return None
        return row

    def put(self, job: Job, row: CostRow) -> None:
        if self.folder is not None:
            d = row.to_dict()
            write_json(self.folder / f"{job.key}.json", {"row": d, "sha256": _digest(json.dumps(d, sort_keys=True))})


def measure(backend: Backend, job: Job, float_model: bytes) -> CostRow:
    """Build the single-layer model of `job` and time it (and its RAM, on TFLite Micro)."""
    from .export.layer_model import layer_model
    from .export.recipe import weight_ops

    model = layer_model(job.layer, job.precision, float_model)
    t = backend.time(model)
    return CostRow(job.layer.signature, str(job.precision), t.median_ms, t.p10_ms, t.p90_ms, t.runs,
                   weight_ops(model)[0].weight_bytes, len(model), backend.ram_bytes(model))


def profile(layers: list[Layer], target: Target, model_hash: str, use_cache: bool = True,
            on_step: Progress | None = None) -> CostTable:
    """The cost table of `layers` on `target`, measuring only what the cache lacks."""
    with backend_for(target) as backend:
        fingerprint = backend.check()
        cache = RowCache(cache_dir("profiles", device_key(target, fingerprint)) if use_cache else None)
        jobs = jobs_for(layers, target)
        rows, floats = [], {}
        for i, job in enumerate(jobs):
            if on_step:
                on_step(i, len(jobs), f"{job.layer.kind} {job.precision}")
            row = cache.get(job)
            if row is None:
                sig = job.layer.signature
                if sig not in floats:
                    from .export.layer_model import float_layer_model

                    floats = {sig: float_layer_model(job.layer)}  # keep one: jobs come grouped by layer
                row = measure(backend, job, floats[sig])
                cache.put(job, row)
            rows.append(row)
        if on_step:
            on_step(len(jobs), len(jobs), "done")
    return CostTable(target, fingerprint, model_hash, tuple(layers), tuple(rows))


def layer_latency(table: CostTable, layer: Layer, precision: Precision) -> float:
    """Measured latency of `layer` at `precision`, or a ConfigError naming what is missing."""
    row = table.row(layer.signature, precision)
    if row is None:
        raise ConfigError(f"the profile has no measurement of layer {layer.name} at {precision}; "
                          f"the target allows {', '.join(map(str, table.target.allowed(layer.kind)))}")
    return row.latency_ms
