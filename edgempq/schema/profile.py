"""The profile's values: one CostRow per (layer signature, precision) measured on the device,
and the CostTable that holds them with the whole-model timings the solver reads."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import ConfigError
from .core import SCHEMA_VERSION, JsonDoc, Layer, Precision, _check_keys, _check_version, canonical_sha256
from .device import Target
from .graph import Graph


@dataclass(frozen=True)
class CostRow:
    """What one layer signature costs at one precision, measured on the device: the
    single-layer model end to end (median, p10, p90 over `runs` in the fastest of its rounds,
    `edgempq.rounds`), its weight bytes as stored, the model's size and, on TFLite Micro, the
    arena it needs."""

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
class Probe:
    """A random mixed policy the profile measured whole (its fastest round's median, ms), for the
    latency model to be fitted on policies like the ones the search returns, not only on uniform
    and alternating ones."""

    precisions: dict[str, str]
    median_ms: float

    def to_dict(self) -> dict[str, Any]:
        """The probe as the profile's JSON holds it."""
        return {"precisions": dict(self.precisions), "median_ms": self.median_ms}

    @classmethod
    def from_dict(cls, d: Any) -> Probe:
        """A probe from a profile's JSON, its precisions and latency checked."""
        _check_keys(d, "profile probe", {"precisions", "median_ms"})
        v, pr = d["median_ms"], d["precisions"]
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < math.inf:
            raise ConfigError(f"profile probe median_ms must be a non-negative number, not {v!r}")
        if not isinstance(pr, dict) or not all(isinstance(k, str) and isinstance(q, str) for k, q in pr.items()):
            raise ConfigError("profile probe precisions must map layer names to precisions")
        for q in pr.values():
            Precision.parse(q)
        return cls(dict(pr), float(v))


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
    # the float graph's skeleton the latency model and the arena work on (see edgempq.qgraph)
    graph: Graph | None = None
    # random mixed policies measured whole, on which the latency model is fitted (see edgempq.latency)
    probes: tuple[Probe, ...] = ()

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
        if self.probes:
            d["probes"] = [p.to_dict() for p in self.probes]
        return d | {"sha256": canonical_sha256(d)}

    @classmethod
    def from_dict(cls, d: Any) -> CostTable:
        """A profile as `edgempq profile` wrote it: its checksum must match, so a truncated or
        hand-edited profile (one changed latency would steer the search) is refused, not used."""
        _check_keys(d, "profile", {"schema_version", "target", "fingerprint", "model_hash", "layers", "rows"},
                    {"whole_ms", "overhead_ms", "edges", "mixed_ms", "folded", "arch_hash", "whole_bytes",
                     "whole_arena_bytes", "graph", "probes", "sha256"})
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
        if d["sha256"] != canonical_sha256(body):
            raise ConfigError("profile does not match its checksum: it was edited or damaged after it was "
                              "measured, and a changed number would steer the search; profile the model again")
        return cls(_measured_target(d["target"]), d["fingerprint"], str(d["model_hash"]),
                   tuple(Layer.from_dict(la) for la in d["layers"]), tuple(CostRow.from_dict(r) for r in d["rows"]),
                   {k: float(v) for k, v in d.get("whole_ms", {}).items()},
                   {k: float(v) for k, v in d.get("overhead_ms", {}).items()},
                   tuple((a, b, n) for a, b, n in edges), {k: float(v) for k, v in d.get("mixed_ms", {}).items()},
                   dict(folded), d.get("arch_hash"), dict(d.get("whole_bytes", {})),
                   dict(d.get("whole_arena_bytes", {})), _graph(d.get("graph")),
                   _probes(d.get("probes", []), d["layers"]))


def _probes(d: Any, layers: list[Any]) -> tuple[Probe, ...]:
    """The profile's probes, each naming every searched layer of the profile and no other."""
    if not isinstance(d, list):
        raise ConfigError("profile probes must be a list")
    probes = tuple(Probe.from_dict(p) for p in d)
    names = {la.get("name") for la in layers if isinstance(la, dict)}
    for p in probes:
        if not set(p.precisions) <= names:
            raise ConfigError(f"a profile probe names layers the profile does not have: "
                              f"{', '.join(sorted(set(p.precisions) - names))}")
    return probes


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


def _measured_target(d: Any) -> Target:
    """The target a profile was measured on. A microcontroller target of an older edgempq may list
    float precisions without `allow_float` (which later files need): the profile holds them as measured."""
    try:
        return Target.from_dict(d)
    except ConfigError:
        if not isinstance(d, dict) or "allow_float" in d:
            raise
        return Target.from_dict(d | {"allow_float": True})


def _graph(d: Any) -> Graph | None:
    return Graph.from_dict(d) if d is not None else None
