"""Device-side values: a Target (what a device is and can run) and Timing. The profile's
values (CostRow, CostTable) are in `profile.py`."""

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
    SEARCHABLE_KINDS,
    JsonDoc,
    Precision,
    _check_keys,
)

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
             "template", "allow_float", "emulated", "precisions", "connection"}


# the most a target may ask for, checked when it loads (for every backend alike): more threads
# than any board has cores, or runs and seconds that would time one model for days, are typos
LIMITS = {"threads": 256, "warmup": 10_000, "runs": 100_000, "max_seconds": 3600.0,
          "flash_kb": 1024.0 ** 3, "ram_kb": 1024.0 ** 3}


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
    # an emulator runs it (qemu-user on another CPU): what it computes is the board's, its times
    # are the emulator's, so profile refuses it and validate keeps its time out of any latency figure
    emulated: bool = False

    def __post_init__(self) -> None:
        if self.backend not in CONNECTION_KEYS:
            raise ConfigError(f"target {self.name}: unknown backend {self.backend!r}; "
                              f"choose one of {', '.join(sorted(CONNECTION_KEYS))}")
        self._check_numbers()
        self._check_precisions()
        self._check_connection()

    def _check_numbers(self) -> None:
        for k in ("threads", "warmup", "runs"):
            v, most = getattr(self, k), LIMITS[k]
            if isinstance(v, bool) or not isinstance(v, int) or not (0 if k == "warmup" else 1) <= v <= most:
                least = "0" if k == "warmup" else "1"
                raise ConfigError(f"target {self.name}: {k} must be an integer from {least} to {most}, not {v!r}")
        for k in ("flash_kb", "ram_kb", "max_seconds"):
            v = getattr(self, k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v <= LIMITS[k]):
                raise ConfigError(f"target {self.name}: {k} must be a positive number up to {LIMITS[k]:g}, not {v!r}")

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

    def check_timeable(self) -> None:
        """Refuse to profile an emulated target: its times are the emulator's, not the board's."""
        if self.emulated:
            raise ConfigError(f"target {self.name} is emulated (emulated = true): its times are the emulator's, "
                              "not the board's, so it cannot be profiled; profile the real board (this target "
                              "with the board's host in [connection]), and validate artifacts here")

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
        if self.emulated:
            d["emulated"] = True
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
        for k in ("template", "allow_float", "emulated"):
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
