"""The profile's cache: one file per measurement (a single-layer model's row, a whole model's
timing, a round of either, the float graph's skeleton), keyed by the device and the toolchain,
written atomically with a checksum; and the lock that keeps two profiles of one device apart."""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .files import exclusive, write_json
from .progress import Progress
from .schema import CostRow, Layer, Precision, Target, Timing


@dataclass(frozen=True)
class Job:
    """One measurement to make: a layer signature at one precision."""

    layer: Layer  # the first layer with this signature
    precision: Precision

    @property
    def key(self) -> str:
        """Cache file name: a digest of the layer's signature and the precision."""
        return f"{digest(self.layer.signature)[:20]}-{self.precision}"


def digest(text: str) -> str:
    """The SHA-256 hex digest of `text`."""
    return hashlib.sha256(text.encode()).hexdigest()


# bump when the single-layer models or what a row means change (4: the fastest of interleaved rounds)
PROFILE_FORMAT = 4


def _toolchain() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for pkg in ("ai-edge-quantizer", "tensorflow", "onnx2tf"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "none"
    return out


def device_key(target: Target, fingerprint: dict[str, Any]) -> str:
    """Cache folder name: the target's timing options, what the device reported (not where it
    is reached, nor the target's name or limits: a renamed or re-limited copy of a target finds
    the same measurements), and the toolchain that builds the measured models."""
    ident = {k: fingerprint.get(k) for k in ("backend", "cpu", "machine", "cores", "runtime", "runtime_version")}
    ident |= {"threads": target.threads, "warmup": target.warmup, "runs": target.runs,
              "max_seconds": target.max_seconds, "format": PROFILE_FORMAT, **_toolchain()}
    return digest(json.dumps(ident, sort_keys=True))[:16]


def jobs_for(layers: list[Layer], target: Target) -> list[Job]:
    """One job per distinct (signature, precision) of the searchable layers."""
    seen: dict[tuple[str, str], Job] = {}
    for la in layers:
        if la.searchable:
            for p in target.allowed(la.kind):
                seen.setdefault((la.signature, str(p)), Job(la, p))
    return list(seen.values())


class RowCache:
    """One JSON file per measurement, with a checksum: a truncated or hand-edited file is
    ignored and measured again. `folder=None` caches nothing."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder

    def _get(self, key: str) -> dict | None:
        if self.folder is None:
            return None
        try:
            doc = json.loads((self.folder / f"{key}.json").read_text())
            ok = doc.get("sha256") == digest(json.dumps(doc["row"], sort_keys=True))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        return doc["row"] if ok else None

    def _put(self, key: str, d: dict) -> None:
        if self.folder is not None:
            write_json(self.folder / f"{key}.json", {"row": d, "sha256": digest(json.dumps(d, sort_keys=True))})

    def get(self, job: Job) -> CostRow | None:
        """The cached row of `job`, or None if it is missing, damaged or of another measurement."""
        d = self._get(job.key)
        try:
            row = CostRow.from_dict(d) if d is not None else None
        except (ConfigError, TypeError):
            return None
        # the file name says which measurement it holds; a row of another layer or precision
        # (a copied or renamed file) is measured again, never used in its place
        ok = row is not None and row.signature == job.layer.signature and str(row.precision) == str(job.precision)
        return row if ok else None

    def put(self, job: Job, row: CostRow) -> None:
        """Cache the measured `row` of `job`."""
        self._put(job.key, row.to_dict())

    def get_sizes(self, arch_key: str, precision: str) -> dict[str, float]:
        """The cached whole-model record of `arch_key` at `precision`: median_ms, and when
        measured model_bytes (the flatbuffer) and arena_bytes (TFLite Micro's); {} if none."""
        d = self._get(f"whole-{arch_key}-{precision}")
        if not isinstance(d, dict):
            return {}
        return {k: v for k, v in d.items() if isinstance(v, int | float) and not isinstance(v, bool) and v >= 0}

    def get_graph(self, arch_key: str) -> dict | None:
        """The cached float-graph skeleton of `arch_key`, or None."""
        return self._get(f"graph-{arch_key}")

    def put_graph(self, arch_key: str, graph: dict) -> None:
        """Cache the float-graph skeleton of `arch_key`."""
        self._put(f"graph-{arch_key}", graph)

    def put_whole(self, arch_key: str, precision: str, ms: float, sizes: dict[str, int] | None = None) -> None:
        """Cache a whole-model latency of `ms` milliseconds (and its `sizes`)."""
        self._put(f"whole-{arch_key}-{precision}", {"median_ms": ms, **(sizes or {})})

    def get_round(self, key: str, r: int) -> Timing | None:
        """The cached timing of measurement `key` in round `r`, or None."""
        d = self._get(f"round-{key}-{r}")
        try:
            return Timing(float(d["median_ms"]), float(d["p10_ms"]), float(d["p90_ms"]), int(d["runs"]))
        except (TypeError, KeyError, ValueError):
            return None

    def put_round(self, key: str, r: int, t: Timing) -> None:
        """Cache the timing of measurement `key` in round `r`."""
        self._put(f"round-{key}-{r}", dict(t.__dict__))


def device_lock(folder: Path, target: Target, on_step: Progress | None = None) -> contextlib.AbstractContextManager:
    """Hold the device for one profile at a time (an advisory lock on a file in its cache
    folder): a second profile of the same device waits, then finds the first one's measurements
    in the cache, instead of measuring everything again while the device is busy with the first
    (which would also skew both timings). Identical boards share the cache folder but each has
    its own lock, named by where it is reached, so a farm times them at once."""
    target_name = target.name
    def waiting() -> None:
        if on_step:
            on_step(0, 0, f"waiting for another profile of {target_name} to finish")

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot use the profile cache {folder} ({e.strerror}); make it writable, set "
                          "EDGEMPQ_CACHE to another folder") from None
    board = digest(json.dumps(target.connection, sort_keys=True, default=str))[:12] if target.connection else ""
    return exclusive(folder / (f".lock-{board}" if board else ".lock"), waiting)
