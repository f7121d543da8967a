"""Device-side values: a Target (what a device is and can run), Timing, and the CostTable that
profiling measures and the solver reads."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..errors import ConfigError
from ..files import read_toml
from .core import (
    NO_INT4_KINDS,
    REQUIRED_KINDS,
    SCHEMA_VERSION,
    SEARCHABLE_KINDS,
    JsonDoc,
    Layer,
    Precision,
    _check_keys,
    _check_version,
)
from .graph import Graph

# Backend name -> the keys of its [connection] (where the device is and how to reach it). Each
# backend registers itself here as `edgempq.backends` imports it (which `import edgempq` does).
CONNECTION_KEYS: dict[str, frozenset[str]] = {}
MICROCONTROLLER_BACKENDS: set[str] = set()  # backends that run what a microcontroller runs


def register_backend(name: str, connection_keys: frozenset[str], microcontroller: bool = False) -> None:
    """Record that backend `name` exists, which [connection] keys its targets may hold and
    whether it runs models as a microcontroller does (integer kernels, an arena, flash)."""
    CONNECTION_KEYS[name] = frozenset(connection_keys)
    if microcontroller:
        MICROCONTROLLER_BACKENDS.add(name)


_HOST = re.compile(r"^[A-Za-z0-9_.:\[\]%-]+$")  # a name or address; never an option (leading '-')
SAFE_PATH = re.compile(r"^/[A-Za-z0-9_./+-]+$")  # a path on a device that no shell can misread
_OPS = {"dwconv": "DEPTHWISE_CONV_2D", "tconv": "TRANSPOSE_CONV"}
_TOP_KEYS = {"name", "description", "backend", "threads", "warmup", "runs", "max_seconds", "flash_kb", "ram_kb",
             "template", "allow_float", "precisions", "connection"}


@dataclass(frozen=True)
class Target(JsonDoc):
    """A device: the backend that reaches it, runtime options, the precisions it can run per
    layer kind, and for microcontrollers its flash and RAM."""

    what: ClassVar[str] = "target"
    name: str
    backend: str
    precisions: dict[str, tuple[Precision, ...]]
    description: str = ""
    threads: int = 1
    warmup: int = 5
    runs: int = 30
    max_seconds: float = 2.0  # per measurement: a slow model stops after at least 5 runs
    flash_kb: float | None = None
    ram_kb: float | None = None
    template: bool = False  # a template names no real device until the user edits it
    connection: dict[str, Any] = field(default_factory=dict)
    # a microcontroller target offers float layers only when its file says so (they are slow and
    # large there, and a host CPU's timings of TFLite Micro's float kernels make them look cheap)
    allow_float: bool = False

    def __post_init__(self) -> None:
        if self.backend not in CONNECTION_KEYS:
            raise ConfigError(f"target {self.name}: unknown backend {self.backend!r}; "
                              f"choose one of {', '.join(sorted(CONNECTION_KEYS))}")
        self._check_numbers()
        self._check_precisions()
        self._check_connection()

    def _check_numbers(self) -> None:
        for k in ("threads", "warmup", "runs"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if k == "warmup" else 1):
                least = "0 or more" if k == "warmup" else "1 or more"
                raise ConfigError(f"target {self.name}: {k} must be an integer, {least}, not {v!r}")
        for k in ("flash_kb", "ram_kb", "max_seconds"):
            v = getattr(self, k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < math.inf):
                raise ConfigError(f"target {self.name}: {k} must be a positive number, not {v!r}")

    def _check_precisions(self) -> None:
        missing = [k for k in REQUIRED_KINDS if not self.precisions.get(k)]
        unknown = set(self.precisions) - set(SEARCHABLE_KINDS)
        if missing or unknown or (self.precisions.get("tconv") == ()):
            raise ConfigError(f"target {self.name}: [precisions] must list {', '.join(REQUIRED_KINDS)} "
                              "(and may list tconv) "
                              f"(missing {missing or 'none'}, unknown {sorted(unknown) or 'none'})")
        floats = sorted({f"{k} {p}" for k, ps in self.precisions.items() for p in ps if p.is_float})
        if self.microcontroller and floats and not self.allow_float:
            raise ConfigError(f"target {self.name}: backend {self.backend} is a microcontroller's, which runs float "
                              f"layers slowly from a large flash, but [precisions] lists {', '.join(floats)}; "
                              "remove them, or set allow_float = true to offer float layers to the search")
        for kind, ps in self.precisions.items():
            for p in ps:
                if not p.deployable:
                    raise ConfigError(f"target {self.name}: {kind} precision {p} cannot be deployed; "
                                      "use w8a8, w4a8, w8a16, w4a16, f16 or f32")
                if kind in NO_INT4_KINDS and p.weight_bits == 4:
                    raise ConfigError(f"target {self.name}: {kind} cannot take {p}: the quantizer has no int4 "
                                      f"{_OPS[kind]} kernel and would silently leave the layer float")

    def _check_connection(self) -> None:
        extra = set(self.connection) - CONNECTION_KEYS[self.backend]
        if extra:
            allowed = ", ".join(sorted(CONNECTION_KEYS[self.backend])) or "none"
            raise ConfigError(f"target {self.name}: [connection] has unknown key(s) {', '.join(sorted(extra))} "
                              f"for backend {self.backend}; allowed: {allowed}")
        for k, v in self.connection.items():
            problem = _connection_problem(k, v)
            if problem:
                raise ConfigError(f"target {self.name}: [connection] {k} {problem}, not {v!r}")

    @property
    def microcontroller(self) -> bool:
        """Whether the target runs models as a microcontroller does (TFLite Micro: an arena, flash)."""
        return self.backend in MICROCONTROLLER_BACKENDS

    def same_device(self, other: Target) -> bool:
        """Whether `other` reaches the same device with the same runtime options, whatever its
        name, limits or precision lists: a profile measured through one holds for the other."""
        return (self.backend, self.threads, self.connection) == (other.backend, other.threads, other.connection)

    def allowed(self, kind: str) -> tuple[Precision, ...]:
        """Precisions this target runs for a layer kind (fixed kinds run float32 only); a
        transposed conv the target does not list takes its conv precisions without int4 weights."""
        if kind == "tconv" and kind not in self.precisions:
            return tuple(p for p in self.precisions["conv"] if p.is_float or p.weight_bits != 4)  # noqa: PLR2004
        return self.precisions.get(kind, (Precision(32, 32, True),))

    def to_dict(self) -> dict[str, Any]:
        """The target as a target file holds it (optional values only when set)."""
        d: dict[str, Any] = {"name": self.name, "description": self.description, "backend": self.backend,
                             "threads": self.threads, "warmup": self.warmup, "runs": self.runs,
                             "max_seconds": self.max_seconds}
        d.update({k: getattr(self, k) for k in ("flash_kb", "ram_kb") if getattr(self, k) is not None})
        if self.template:
            d["template"] = True
        if self.allow_float:
            d["allow_float"] = True
        d["precisions"] = {k: [str(p) for p in v] for k, v in self.precisions.items()}
        if self.connection:
            d["connection"] = dict(self.connection)
        return d

    @classmethod
    def from_dict(cls, d: Any) -> Target:
        """A target from a parsed target file, its keys and value types checked."""
        _check_keys(d, "target", {"name", "backend", "precisions"}, _TOP_KEYS)
        precs = d["precisions"]
        if not isinstance(precs, dict):
            raise ConfigError("target precisions must be a table, e.g. [precisions] conv = [\"w8a8\", \"f32\"]")
        for k, v in precs.items():
            if k not in SEARCHABLE_KINDS:
                raise ConfigError(f"target precisions has unknown key {k!r}; allowed: {', '.join(SEARCHABLE_KINDS)}")
            if not isinstance(v, list):
                raise ConfigError(f"target precisions.{k} must be a list such as [\"w8a8\", \"f32\"], not {v!r}")
        conn = d.get("connection", {})
        if not isinstance(conn, dict):
            raise ConfigError("target connection must be a table")
        for k in ("name", "backend", "description"):
            if k in d and not isinstance(d[k], str):
                raise ConfigError(f"target {k} must be a string, not {d[k]!r}")
        for k in ("template", "allow_float"):
            if not isinstance(d.get(k, False), bool):
                raise ConfigError(f"target {k} must be true or false")
        kw = {k: v for k, v in d.items() if k not in ("precisions", "connection")}
        return cls(precisions={k: tuple(Precision.parse(str(p)) for p in v) for k, v in precs.items()},
                   connection=dict(conn), **kw)

    @classmethod
    def from_toml(cls, path: str | Path) -> Target:
        """A target file (named after its file unless it sets `name`); errors name the file."""
        d = read_toml(path, "target")
        d.setdefault("name", Path(path).stem)
        try:
            return cls.from_dict(d)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    def to_toml(self) -> str:
        """The target as a TOML document that `from_toml` reads back to an equal Target."""
        d = self.to_dict()
        lines = [f"{k} = {_toml_value(v)}" for k, v in d.items() if not isinstance(v, dict)]
        for table in ("precisions", "connection"):
            if table in d:
                lines += ["", f"[{table}]"] + [f"{k} = {_toml_value(v)}" for k, v in d[table].items()]
        return "\n".join(lines) + "\n"


def _connection_problem(key: str, v: Any) -> str | None:
    """Why a [connection] value is unusable, or None. Hosts and users are checked so that no
    value can be read by ssh as an option; paths on the device must be plain absolute paths."""
    if key == "port":
        return None if isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 65535 else "must be 1..65535"
    if key == "timeout_s":
        ok = isinstance(v, int | float) and not isinstance(v, bool) and 1 <= v < math.inf
        return None if ok else "must be a number of seconds, at least 1"
    if not isinstance(v, str) or not v.strip():
        return "must be a non-empty string"
    if key in ("host", "user", "serial") and (not _HOST.match(v) or v.startswith("-")):
        return "may hold only letters, digits and . _ - : [ ] % (and must not start with '-')"
    if key == "remote_dir" and not SAFE_PATH.match(v):
        return "must be an absolute path of letters, digits and . _ / + -"
    if "\n" in v or "\0" in v:
        return "must be on one line"
    return None


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(i) for i in v) + "]"
    return json.dumps(str(v))  # a TOML basic string: JSON's escapes are TOML's


@dataclass(frozen=True)
class Timing:
    """Latency of repeated runs on a device, in milliseconds."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int

    @classmethod
    def from_samples(cls, samples_ms: list[float]) -> Timing:
        """Median, 10th and 90th percentile of the run times `samples_ms`."""
        import numpy as np

        a = np.asarray(samples_ms, dtype=float)
        return cls(float(np.median(a)), float(np.percentile(a, 10)), float(np.percentile(a, 90)), len(a))


@dataclass(frozen=True)
class CostRow:
    """What one layer signature costs at one precision, measured on the device: the
    single-layer model end to end (median, p10, p90 over `runs`), its weight bytes as stored,
    the model's size and, on TFLite Micro, the arena it needs."""

    signature: str
    precision: str
    latency_ms: float
    p10_ms: float
    p90_ms: float
    runs: int
    weight_bytes: int
    model_bytes: int
    ram_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The row as the profile's JSON holds it."""
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: Any) -> CostRow:
        """A row from a profile's JSON, its numbers and precision checked."""
        _check_keys(d, "cost row", set(cls.__dataclass_fields__) - {"ram_bytes"}, {"ram_bytes"})
        for k in ("latency_ms", "p10_ms", "p90_ms"):
            v = d[k]
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < math.inf:
                raise ConfigError(f"cost row {k} must be a non-negative number, not {v!r}")
        for k in ("runs", "weight_bytes", "model_bytes", "ram_bytes"):
            v = d.get(k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ConfigError(f"cost row {k} must be a non-negative integer, not {v!r}")
        if not isinstance(d["signature"], str) or not isinstance(d["precision"], str):
            raise ConfigError("cost row signature and precision must be strings")
        Precision.parse(d["precision"])
        return cls(**d)


@dataclass(frozen=True)
class CostTable(JsonDoc):
    """A model's per-layer costs on one device: the traced layers, one row per (signature,
    precision), and per uniform precision the whole model measured end to end and what the
    rows do not account for (`overhead_ms` = whole - sum of the rows; negative when layers
    alone cost more than inside the model)."""

    what: ClassVar[str] = "profile"
    target: Target
    fingerprint: dict[str, Any]
    model_hash: str
    layers: tuple[Layer, ...]
    rows: tuple[CostRow, ...]
    whole_ms: dict[str, float] = field(default_factory=dict)
    overhead_ms: dict[str, float] = field(default_factory=dict)
    # (producer, consumer, elements): where a tensor passes from one searched layer to another
    edges: tuple[tuple[str, str, int], ...] = ()
    # whole-model latency of policies that alternate two domains layer by layer ("f32~w8a8": ms)
    mixed_ms: dict[str, float] = field(default_factory=dict)
    # layers the preflight found the converter folds into (layer: why): the search keeps them at f32
    folded: dict[str, str] = field(default_factory=dict)
    # the architecture and input shape measured (models.arch_hash): what later stages check,
    # since latency does not depend on the weights; None in profiles older than it
    arch_hash: str | None = None
    # per uniform precision, the whole model's flatbuffer bytes and (TFLite Micro) arena bytes:
    # what the flash and RAM predictions are calibrated on
    whole_bytes: dict[str, int] = field(default_factory=dict)
    whole_arena_bytes: dict[str, int] = field(default_factory=dict)
    # on microcontrollers, the float graph's skeleton the arena is predicted on (see edgempq.arena)
    graph: Graph | None = None

    def row(self, signature: str, precision: Precision | str) -> CostRow | None:
        """The measurement of layer signature `signature` at `precision`, None if it was not measured."""
        p = str(precision)
        return next((r for r in self.rows if r.signature == signature and r.precision == p), None)

    def to_dict(self) -> dict[str, Any]:
        """The profile as `edgempq profile` writes it, with the checksum `from_dict` verifies."""
        d = {"schema_version": SCHEMA_VERSION, "target": self.target.to_dict(), "fingerprint": self.fingerprint,
             "model_hash": self.model_hash, "layers": [la.to_dict() for la in self.layers],
             "rows": [r.to_dict() for r in self.rows], "whole_ms": dict(self.whole_ms),
             "overhead_ms": dict(self.overhead_ms), "edges": [list(e) for e in self.edges],
             "mixed_ms": dict(self.mixed_ms)}
        if self.folded:  # only when there are any, so profiles without them keep their checksum
            d["folded"] = dict(self.folded)
        if self.arch_hash is not None:
            d["arch_hash"] = self.arch_hash
        for k in ("whole_bytes", "whole_arena_bytes"):
            if getattr(self, k):
                d[k] = dict(getattr(self, k))
        if self.graph is not None:
            d["graph"] = self.graph.to_dict()
        return d | {"sha256": _checksum(d)}

    @classmethod
    def from_dict(cls, d: Any) -> CostTable:
        """A profile as `edgempq profile` wrote it: its checksum must match, so a truncated or
        hand-edited profile (one changed latency would steer the search) is refused, not used."""
        _check_keys(d, "profile", {"schema_version", "target", "fingerprint", "model_hash", "layers", "rows"},
                    {"whole_ms", "overhead_ms", "edges", "mixed_ms", "folded", "arch_hash", "whole_bytes",
                     "whole_arena_bytes", "graph", "sha256"})
        _check_version(d, "profile")
        if not all(isinstance(d[k], list) for k in ("layers", "rows")) or not isinstance(d["fingerprint"], dict):
            raise ConfigError("profile layers and rows must be lists and fingerprint an object")
        edges = d.get("edges", [])
        if not isinstance(edges, list) or not all(
                isinstance(e, list) and len(e) == 3 and isinstance(e[0], str) and isinstance(e[1], str)
                and isinstance(e[2], int) and not isinstance(e[2], bool) and e[2] >= 0 for e in edges):
            raise ConfigError("profile edges must be a list of [producer, consumer, elements]")
        for key in d.get("mixed_ms", {}) if isinstance(d.get("mixed_ms"), dict) else ():
            parts = str(key).split("~")
            if len(parts) != 2:
                raise ConfigError(f"profile mixed_ms key {key!r} must name two precisions as A~B")
            for part in parts:
                Precision.parse(part)
        for k in ("whole_ms", "overhead_ms", "mixed_ms"):
            v = d.get(k, {})
            if not isinstance(v, dict) or not all(isinstance(x, int | float) for x in v.values()):
                raise ConfigError(f"profile {k} must map precisions to numbers")
        _check_extras(d)
        folded = d.get("folded", {})
        body = {k: v for k, v in d.items() if k != "sha256"}
        if "sha256" not in d:
            raise ConfigError("profile has no checksum (it was not written by edgempq profile, or by an older "
                              "version); profile the model again")
        if d["sha256"] != _checksum(body):
            raise ConfigError("profile does not match its checksum: it was edited or damaged after it was "
                              "measured, and a changed number would steer the search; profile the model again")
        return cls(Target.from_dict(d["target"]), d["fingerprint"], str(d["model_hash"]),
                   tuple(Layer.from_dict(la) for la in d["layers"]), tuple(CostRow.from_dict(r) for r in d["rows"]),
                   {k: float(v) for k, v in d.get("whole_ms", {}).items()},
                   {k: float(v) for k, v in d.get("overhead_ms", {}).items()},
                   tuple((a, b, n) for a, b, n in edges), {k: float(v) for k, v in d.get("mixed_ms", {}).items()},
                   dict(folded), d.get("arch_hash"), dict(d.get("whole_bytes", {})),
                   dict(d.get("whole_arena_bytes", {})), _graph(d.get("graph")))


def _check_extras(d: dict[str, Any]) -> None:
    """The optional maps a profile may hold (folded layers, the architecture fingerprint, the
    uniform whole models' bytes and arenas), their types checked."""
    folded = d.get("folded", {})
    if not isinstance(folded, dict) or not all(isinstance(v, str) for v in folded.values()):
        raise ConfigError("profile folded must map layer names to reasons")
    if not isinstance(d.get("arch_hash", ""), str):
        raise ConfigError("profile arch_hash must be a string")
    for k in ("whole_bytes", "whole_arena_bytes"):
        v = d.get(k, {})
        if not isinstance(v, dict) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                              for n in v.values()):
            raise ConfigError(f"profile {k} must map precisions to byte counts")


def _graph(d: Any) -> Graph | None:
    return Graph.from_dict(d) if d is not None else None


def _checksum(d: dict[str, Any]) -> str:
    """sha256 of a document's canonical JSON (keys sorted): what `save` wrote, reproducibly."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()
