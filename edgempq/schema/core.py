"""The values that flow between the stages, as frozen dataclasses with JSON round-trips.

Units live in field names; `from_dict` rejects unknown keys and checks `schema_version`, so a
hand-edited or foreign file fails with a message instead of being half-understood.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..errors import ConfigError
from ..files import parse_json, read_json, write_json

SCHEMA_VERSION = 1

_INT_RE = re.compile(r"^w(\d+)a(\d+)$")
_FLOAT_RE = re.compile(r"^f(16|32)$")
MIN_BITS, MAX_BITS = 2, 16
# What a TFLite artifact can carry per layer; other integer widths exist in simulation only.
DEPLOYABLE = ("w8a8", "w4a8", "w8a16", "w4a16", "f16", "f32")


@dataclass(frozen=True, order=True)
class Precision:
    """Bits of a layer's weights and input activations; `is_float` for f16 / f32 layers."""

    weight_bits: int
    act_bits: int
    is_float: bool = False

    def __post_init__(self) -> None:
        if self.is_float:
            if (self.weight_bits, self.act_bits) not in ((16, 32), (32, 32)):
                raise ConfigError("a float precision must be f16 or f32")
        elif not (MIN_BITS <= self.weight_bits <= MAX_BITS and MIN_BITS <= self.act_bits <= MAX_BITS):
            raise ConfigError(
                f"precision w{self.weight_bits}a{self.act_bits} is out of range; integer widths "
                f"go from {MIN_BITS} to {MAX_BITS} bits"
            )

    @classmethod
    def parse(cls, text: str) -> Precision:
        """Parse `w4a8`, `w8a16`, `f16`, `f32`, or a research width such as `w2a4`."""
        t = str(text).strip().lower()
        if m := _INT_RE.match(t):
            return cls(int(m[1]), int(m[2]))
        if m := _FLOAT_RE.match(t):
            # f16 stores weights in half precision; a CPU computes activations in float32.
            return cls(int(m[1]), 32, True)
        raise ConfigError(
            f"unknown precision {text!r}; write wNaM for N-bit weights and M-bit activations "
            f"(e.g. w8a8, w4a8, w8a16) or f16 / f32"
        )

    def __str__(self) -> str:
        return f"f{self.weight_bits}" if self.is_float else f"w{self.weight_bits}a{self.act_bits}"

    @property
    def deployable(self) -> bool:
        """True if a TFLite artifact can carry this precision (else simulation only)."""
        return str(self) in DEPLOYABLE


def _check_keys(d: Any, what: str, required: set[str], optional: set[str] = frozenset()) -> None:
    if not isinstance(d, dict):
        raise ConfigError(f"{what} must be a JSON object, not {type(d).__name__}")
    unknown = set(d) - required - optional
    if unknown:
        raise ConfigError(
            f"{what} has unknown key(s) {', '.join(sorted(unknown))}; "
            f"allowed: {', '.join(sorted(required | optional))}"
        )
    missing = required - set(d)
    if missing:
        raise ConfigError(f"{what} lacks required key(s) {', '.join(sorted(missing))}")


def _check_version(d: dict, what: str) -> None:
    v = d.get("schema_version")
    if v != SCHEMA_VERSION:
        raise ConfigError(
            f"{what} has schema_version {v!r}, this edgempq reads {SCHEMA_VERSION}; "
            "regenerate the file with this version"
        )


def _ints(v: Any, what: str) -> tuple[int, ...]:
    if not isinstance(v, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in v):
        raise ConfigError(f"{what} must be a list of integers, not {v!r}")
    return tuple(v)


def _typed(v: Any, types: type | tuple[type, ...], what: str) -> Any:
    if not isinstance(v, types) or isinstance(v, bool) and bool not in _as_tuple(types):
        raise ConfigError(f"{what} has the wrong type: {v!r}")
    return v


def _as_tuple(t: type | tuple[type, ...]) -> tuple[type, ...]:
    return t if isinstance(t, tuple) else (t,)


class JsonDoc:
    """Mixin: `to_json` / `from_json` strings and atomic `save` / `load` of a file."""

    what: ClassVar[str] = "document"

    def to_dict(self) -> dict[str, Any]:  # pragma: no cover - overridden
        """The document as a JSON-ready dict."""
        raise NotImplementedError

    @classmethod
    def from_dict(cls, d: Any) -> Any:  # pragma: no cover - overridden
        """The document from a parsed JSON value, checked; a ConfigError if it does not fit."""
        raise NotImplementedError

    def to_json(self) -> str:
        """The document as indented JSON text."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Any:
        """The document parsed from JSON text; a ConfigError if it is not valid JSON or does not fit."""
        return cls.from_dict(parse_json(text, cls.what))

    def save(self, path: str | Path) -> Path:
        """Write the document to `path` as JSON, atomically; returns the path written."""
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Any:
        """Read the document from a JSON file; errors name the file."""
        d = read_json(path, cls.what)
        try:
            return cls.from_dict(d)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None


@dataclass(frozen=True)
class Layer(JsonDoc):
    """One Conv2d / Linear of the model, as seen in a real forward pass (batch of one).

    `kind` is conv, dwconv, linear or tconv (a ConvTranspose2d) for layers the deployment
    quantizes; a layer it cannot
    quantize keeps its own kind and carries `fixed_reason`.
    """

    what: ClassVar[str] = "layer"
    name: str
    kind: str
    in_shape: tuple[int, ...]  # one sample, no batch dimension
    out_shape: tuple[int, ...]
    in_channels: int
    out_channels: int
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int
    bias: bool
    params: int  # weights + bias
    macs: int  # one sample
    signature: str  # everything that sets the layer's cost, not its name
    fixed_reason: str | None = None

    @property
    def searchable(self) -> bool:
        """True if the policy chooses this layer's precision (it has no `fixed_reason`)."""
        return self.fixed_reason is None

    @property
    def weight_count(self) -> int:
        """Number of weights, bias excluded."""
        return self.params - (self.out_channels if self.bias else 0)

    def to_dict(self) -> dict[str, Any]:
        """The layer's fields, tuples as lists."""
        d = {k: getattr(self, k) for k in _LAYER_FIELDS}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: Any) -> Layer:
        """A layer from its dict, every field checked for its type."""
        _check_keys(d, "layer", set(_LAYER_FIELDS) - {"fixed_reason"}, {"fixed_reason"})
        kw: dict[str, Any] = {}
        for k in _LAYER_FIELDS:
            v = d.get(k)
            if k in _LAYER_TUPLES:
                kw[k] = _ints(v, f"layer field {k}")
            elif k in ("name", "kind", "signature"):
                kw[k] = _typed(v, str, f"layer field {k}")
            elif k == "bias":
                kw[k] = _typed(v, bool, "layer field bias")
            elif k == "fixed_reason":
                kw[k] = None if v is None else _typed(v, str, "layer field fixed_reason")
            else:
                kw[k] = _typed(v, int, f"layer field {k}")
        return cls(**kw)


_LAYER_FIELDS = ("name", "kind", "in_shape", "out_shape", "in_channels", "out_channels", "kernel",
                 "stride", "padding", "dilation", "groups", "bias", "params", "macs", "signature",
                 "fixed_reason")
_LAYER_TUPLES = {"in_shape", "out_shape", "kernel", "stride", "padding", "dilation"}
SEARCHABLE_KINDS = ("conv", "dwconv", "linear", "tconv")
# A target must list these; a transposed conv (`tconv`) takes the target's conv precisions that
# its TFLite kernel has (no int4 weights) unless the target lists its own.
REQUIRED_KINDS = ("conv", "dwconv", "linear")
NO_INT4_KINDS = ("dwconv", "tconv")  # the quantizer has no int4 DEPTHWISE_CONV_2D or TRANSPOSE_CONV


@dataclass(frozen=True)
class Budget(JsonDoc):
    """Limits a policy must meet; any subset of them. Each must be a positive finite number."""

    what: ClassVar[str] = "budget"
    latency_ms: float | None = None
    size_kb: float | None = None
    bops: float | None = None
    ram_kb: float | None = None
    flash_kb: float | None = None  # the whole flatbuffer: weights, biases, quantization and graph

    def __post_init__(self) -> None:
        for k, v in self.items():
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
                raise ConfigError(f"budget {k} must be a positive number, not {v!r}")

    def items(self) -> list[tuple[str, float]]:
        """The limits that are set, as (name, value)."""
        return [(k, getattr(self, k)) for k in _BUDGET_KEYS if getattr(self, k) is not None]

    def to_dict(self) -> dict[str, Any]:
        """The limits that are set, by name."""
        return dict(self.items())

    @classmethod
    def from_dict(cls, d: Any) -> Budget:
        """A budget from a dict of some of `latency_ms`, `size_kb`, `bops`, `ram_kb`, `flash_kb`."""
        _check_keys(d, "budget", set(), set(_BUDGET_KEYS))
        return cls(**d)


_BUDGET_KEYS = ("latency_ms", "size_kb", "bops", "ram_kb", "flash_kb")


QUANTIZER_KEYS = {"ptq": str, "ptq_params": str, "bias_correction": bool, "act_range": str}


def _quantizer(d: Any) -> dict[str, Any] | None:
    """A policy's `quantizer`: the loss-measuring sensitivity's PTQ settings, typed."""
    if d is None:
        return None
    _check_keys(d, "policy quantizer", {"ptq"}, set(QUANTIZER_KEYS) - {"ptq"})
    return {k: _typed(v, QUANTIZER_KEYS[k], f"policy quantizer {k}") for k, v in d.items()}


@dataclass(frozen=True)
class Policy(JsonDoc):
    """One precision per searchable layer, with where it came from and what it is predicted to
    cost. Editable by hand: the rows are `{"layer": name, "precision": "w4a8"}`."""

    what: ClassVar[str] = "policy"
    precisions: dict[str, Precision]
    budget: Budget = field(default_factory=Budget)
    method: str | None = None
    target: str | None = None
    model_hash: str | None = None
    predicted: dict[str, float] = field(default_factory=dict)  # latency_ms, size_bytes, bops, objective
    solver_status: str | None = None
    gap: float | None = None
    # the PTQ the penalties were measured with (measured, clado): ptq, ptq_params, bias_correction, act_range
    quantizer: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        for name, p in self.precisions.items():
            if not isinstance(p, Precision):
                raise ConfigError(f"policy precision of layer {name!r} is not a Precision: {p!r}")

    @classmethod
    def uniform(cls, layers: list[Layer], precision: Precision | str, **kw: Any) -> Policy:
        """The same precision for every searchable layer."""
        p = precision if isinstance(precision, Precision) else Precision.parse(precision)
        return cls({la.name: p for la in layers if la.searchable}, **kw)

    def check_layers(self, layers: list[Layer]) -> None:
        """Raise if the policy names a layer the model lacks, a fixed layer, or misses one."""
        by_name = {la.name: la for la in layers}
        for name in self.precisions:
            if name not in by_name:
                raise ConfigError(
                    f"policy names layer {name!r}, which the model does not have; "
                    f"its layers are: {', '.join(la.name for la in layers if la.searchable)}"
                )
            if not by_name[name].searchable:
                raise ConfigError(
                    f"policy sets a precision for layer {name!r}, which is kept fixed "
                    f"({by_name[name].fixed_reason}); remove it from the policy"
                )
        missing = [la.name for la in layers if la.searchable and la.name not in self.precisions]
        if missing:
            raise ConfigError(f"policy gives no precision for layer(s) {', '.join(missing)}; add them")

    def to_dict(self) -> dict[str, Any]:
        """The policy as policy.json holds it: one {layer, precision} row a layer, then its provenance."""
        return {
            "schema_version": SCHEMA_VERSION,
            "layers": [{"layer": n, "precision": str(p)} for n, p in self.precisions.items()],
            "budget": self.budget.to_dict(),
            "method": self.method,
            "target": self.target,
            "model_hash": self.model_hash,
            "predicted": dict(self.predicted),
            "solver_status": self.solver_status,
            "gap": self.gap,
            **({"quantizer": dict(self.quantizer)} if self.quantizer else {}),
        }

    @classmethod
    def from_dict(cls, d: Any) -> Policy:
        """A policy from its dict, rows and predicted costs checked; a layer named twice is an error."""
        opt = {"budget", "method", "target", "model_hash", "predicted", "solver_status", "gap", "quantizer"}
        _check_keys(d, "policy", {"schema_version", "layers"}, opt)
        _check_version(d, "policy")
        rows = d["layers"]
        if not isinstance(rows, list):
            raise ConfigError("policy layers must be a list of {layer, precision} rows")
        precisions: dict[str, Precision] = {}
        for row in rows:
            _check_keys(row, "policy row", {"layer", "precision"})
            name = _typed(row["layer"], str, "policy row layer")
            if name in precisions:
                raise ConfigError(f"policy names layer {name!r} twice; keep one row")
            precisions[name] = Precision.parse(_typed(row["precision"], str, "policy row precision"))
        predicted = d.get("predicted") or {}
        _check_keys(predicted, "policy predicted", set(), set(predicted) if isinstance(predicted, dict) else set())
        for k, v in predicted.items():
            _typed(v, int | float, f"policy predicted {k}")
        for k in ("method", "target", "model_hash", "solver_status"):
            if d.get(k) is not None:
                _typed(d[k], str, f"policy {k}")
        gap = d.get("gap")
        return cls(
            precisions,
            Budget.from_dict(d.get("budget") or {}),
            d.get("method"), d.get("target"), d.get("model_hash"),
            {k: float(v) for k, v in predicted.items()},
            d.get("solver_status"),
            None if gap is None else float(_typed(gap, int | float, "policy gap")),
            _quantizer(d.get("quantizer")),
        )


def canonical_sha256(d: dict[str, Any]) -> str:
    """sha256 of a document's canonical JSON (keys sorted): what was written, reproducibly."""
    import hashlib

    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()
