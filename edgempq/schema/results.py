"""What deploy and validate produce — deploy.json and validation.json — as typed values.

Each is a frozen dataclass read and written by one mechanism (`Record`): its fields' types say
what a file may hold, unknown keys are refused, and a field of the wrong type is named in one
sentence. Maps whose entries are diagnostics of one module (each op's output rounding, the
PTQ's per-layer errors) stay JSON objects here and are read by the code that wrote them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from typing import Annotated, Any, ClassVar, Union

from ..errors import ConfigError
from .core import SCHEMA_VERSION, JsonDoc, canonical_sha256

Json = dict[str, Any]  # a JSON object, checked as one and kept as it is
NON_NEGATIVE = "non-negative"
Count = Annotated[int, NON_NEGATIVE]  # bytes, runs, samples, an index: an integer >= 0
Amount = Annotated[float, NON_NEGATIVE]  # seconds, an error's size: a finite number >= 0
POSITIVE = "positive"
Duration = Annotated[float, POSITIVE]  # a predicted latency: a finite number > 0 (a measured one may round to 0)
TASKS = ("classify", "dense", "regress", "reconstruct")  # what a model is for (see edgempq.tasks)
Task = Annotated[str, TASKS]  # one of them
SIGNATURE = "document_sha256"  # a signed record's checksum of itself (computed without this key)


class Record(JsonDoc):
    """A frozen dataclass whose fields are JSON values, Records, tuples or str-keyed dicts of them."""

    versioned: ClassVar[bool] = False  # a top-level file: carries schema_version
    signed: ClassVar[bool] = False  # carries SIGNATURE, its own checksum, checked when it is read

    def as_json(self) -> Any:
        """This value as it reads back from its JSON file (tuples inside JSON objects become lists)."""
        return type(self).from_dict(json.loads(json.dumps(self.to_dict())))

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of this value (None fields included, so every key is always there)."""
        d = {f.name: _dump(getattr(self, f.name)) for f in dataclasses.fields(self)}
        d = {"schema_version": SCHEMA_VERSION, **d} if self.versioned else d
        return d | {SIGNATURE: canonical_sha256(d)} if self.signed else d

    @classmethod
    def from_dict(cls, d: Any, what: str | None = None) -> Any:
        """The value of a JSON object; one sentence names an unknown key, a missing one or a wrong type."""
        what = what or cls.what
        if not isinstance(d, dict):
            raise ConfigError(f"{what} must be a JSON object, not {type(d).__name__}")
        d = dict(d)
        if cls.signed and SIGNATURE in d and d.pop(SIGNATURE) != canonical_sha256(d):
            raise ConfigError(f"{what} does not match its own checksum: it was edited after it was written")
        if cls.versioned:
            version = d.pop("schema_version", SCHEMA_VERSION)  # files written before versioning have none
            if version != SCHEMA_VERSION:
                raise ConfigError(f"{what} has schema_version {version!r}, this edgempq reads {SCHEMA_VERSION}; "
                                  "write it again with this version")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(fields))
        if unknown:
            raise ConfigError(f"{what} has unknown key(s) {', '.join(unknown)}; allowed: {', '.join(fields)}")
        hints = typing.get_type_hints(cls, include_extras=True)
        kw = {}
        for name, f in fields.items():
            if name in d:
                kw[name] = _load(d[name], hints[name], f"{what}'s {name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{what} lacks the key {name}")
        return cls(**kw)


def _dump(v: Any) -> Any:
    if isinstance(v, Record):
        return v.to_dict()
    if isinstance(v, tuple | list):
        return [_dump(x) for x in v]
    if isinstance(v, dict):
        return {k: _dump(x) for k, x in v.items()}
    return v


_SCALARS = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _load(v: Any, hint: Any, what: str) -> Any:
    """`v` as type `hint` (scalars, X | None, Records, tuple[X, ...], dict[str, X], Any)."""
    if hint is Any:
        return v
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        return _restricted(_load(v, args[0], what), args[1], what)
    if origin in (Union, types.UnionType):
        if v is None and type(None) in args:
            return None
        real = [a for a in args if a is not type(None)]
        for a in real[:-1]:
            try:
                return _load(v, a, what)
            except ConfigError:
                continue
        return _load(v, real[-1], what)
    if isinstance(hint, type) and issubclass(hint, Record):
        return hint.from_dict(v, what)
    if origin is tuple:
        if not isinstance(v, list | tuple):
            raise ConfigError(f"{what} must be a list, not {_kind(v)}")
        return tuple(_load(x, args[0], f"{what}[{i}]") for i, x in enumerate(v))
    if origin is dict or hint is dict:
        if not isinstance(v, dict) or not all(isinstance(k, str) for k in v):
            raise ConfigError(f"{what} must be a JSON object, not {_kind(v)}")
        inner = args[1] if args else Any
        return {k: _load(x, inner, f"{what}[{k!r}]") for k, x in v.items()}
    return _scalar(v, hint, what)


def _scalar(v: Any, hint: type, what: str) -> Any:
    ok = isinstance(v, hint) and (hint is bool or not isinstance(v, bool))
    if hint is float and isinstance(v, int) and not isinstance(v, bool):
        return float(v)
    if not ok:
        raise ConfigError(f"{what} must be {_SCALARS.get(hint, hint.__name__)}, not {_kind(v)}")
    return v


def _restricted(v: Any, allowed: Any, what: str) -> Any:
    """`v` when it is NON_NEGATIVE or POSITIVE as `allowed` says, or one of `allowed`."""
    if allowed in (NON_NEGATIVE, POSITIVE):
        if not (math.isfinite(v) and (v > 0 if allowed == POSITIVE else v >= 0)):
            least = "above 0" if allowed == POSITIVE else "of at least 0"
            raise ConfigError(f"{what} must be a finite number {least}, not {v!r}")
    elif v not in allowed:
        raise ConfigError(f"{what} must be one of {', '.join(allowed)}, not {_kind(v)}")
    return v


def _kind(v: Any) -> str:
    return "null" if v is None else f"{type(v).__name__} {v!r}"[:60]


# --- deploy.json ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class IOTensor(Record):
    """The artifact's input or output as a caller feeds or reads it (real = scale · (q − zero_point))."""

    name: str
    shape: tuple[Count, ...]
    dtype: str
    scale: Amount
    zero_point: int


@dataclasses.dataclass(frozen=True)
class WeightBytes(Record):
    """Weight bytes the solver's size model predicted, and those stored in the artifact."""

    predicted: Count
    artifact: Count


@dataclasses.dataclass(frozen=True)
class LatencyPoint(Record):
    """One whole-model timing against its prediction (a profile's uniform or alternating policy, or an artifact)."""

    label: str
    predicted_ms: Duration
    measured_ms: Amount
    artifact: bool = False


@dataclasses.dataclass(frozen=True)
class PredictedLatency(Record):
    """A policy's latency on `target`: from a profile (per layer, conversions, the ops between
    layers, the profile's own points) or, without one, the total the search recorded in the policy."""

    predicted_ms: Duration
    target: str
    layers_ms: dict[str, float] | None = None
    conversions_ms: Amount | None = None
    ops_ms: Amount | None = None  # the ops between layers (pads, pools, adds)
    model_hash: str | None = None
    points: tuple[LatencyPoint, ...] | None = None


@dataclasses.dataclass(frozen=True)
class PolicySummary(Record):
    """What the report shows of the deployed policy: who chose it, under what budget, its predicted costs."""

    method: str | None
    budget: Json
    predicted: dict[str, int | float]  # as the solver gave them (bytes and BOPs are integers)


@dataclasses.dataclass(frozen=True)
class LayerRow(Record):
    """One searched layer in the artifact: its precision, its op and what the op stores."""

    layer: str
    precision: str
    op_index: Count
    op_output: str
    op: str
    weight_type: str
    activation_type: str
    weight_bytes: Count


@dataclasses.dataclass(frozen=True)
class ExactCheck(Record):
    """The integer layers whose weights, scales and biases were compared with the simulation bit for bit."""

    layers: Count
    checked: Json


@dataclasses.dataclass(frozen=True)
class PTQSummary(Record):
    """How the policy was quantized: the weight algorithm, its parameters, and per layer its output error."""

    weights: str
    params: Json
    bias_correction: bool
    sequential: bool
    seconds: Amount
    layers: dict[str, Json | None] = dataclasses.field(default_factory=dict)
    notes: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class DeployResult(Record):
    """deploy.json: what deploy built, from what, and what it checked (`sha256` covers the files it wrote)."""

    what: ClassVar[str] = "deploy report"
    versioned: ClassVar[bool] = True
    signed: ClassVar[bool] = True

    model: str
    model_hash: str
    data: str
    data_id: str
    target: str
    quant_config: Json
    tflite_bytes: Count
    input: IOTensor
    output: IOTensor
    weight_bytes: WeightBytes
    policy: PolicySummary
    layers: tuple[LayerRow, ...]
    weights: str | None = None
    task: Task = "classify"
    simulated_top1: float | None = None  # classifiers: the simulation's test top-1
    float_top1: float | None = None  # classifiers: the float model on the same test split
    scores: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)  # float/simulated -> metrics
    qat_epochs: Count = 0
    ptq: PTQSummary | None = None
    exact: ExactCheck | None = None
    quantizer_note: str | None = None
    input_ranges: dict[str, Json] = dataclasses.field(default_factory=dict)
    output_rounding: dict[str, Json] = dataclasses.field(default_factory=dict)
    skip_rounding: dict[str, Json] = dataclasses.field(default_factory=dict)
    skip_notes: tuple[str, ...] = ()
    arena_bytes: Count | None = None
    arena_predicted_bytes: Count | None = None  # the arena the profile predicted (edgempq.arena)
    arch_hash: str | None = None  # the architecture and input shape (models.arch_hash) a profile must be of
    latency: PredictedLatency | None = None
    sweep: Json | None = None
    sha256: dict[str, str] = dataclasses.field(default_factory=dict)


# --- validation.json -----------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class MeasuredLatency(Record):
    """The artifact's latency on the device (the fastest of its timing rounds: `edgempq.rounds`)
    and, when a prediction is about this device, how well it held."""

    median_ms: Amount
    p10_ms: float
    p90_ms: float
    runs: Count
    predicted_ms: Duration | None = None
    error: float | None = None  # (measured - predicted) / predicted
    layers_ms: dict[str, float] | None = None
    points: tuple[LatencyPoint, ...] | None = None
    rounds_ms: tuple[float, ...] | None = None  # each round's median; the fastest is the latency above
    emulated: bool = False  # timed under an emulator: not the board's latency, compared with no prediction


@dataclasses.dataclass(frozen=True)
class SizeCheck(Record):
    """The artifact's bytes, its weights predicted and stored, the TFLite Micro arena, and the target's budgets."""

    tflite_bytes: Count
    weight_bytes_predicted: Count | None = None
    weight_bytes_artifact: Count | None = None
    arena_bytes: Count | None = None
    ram_kb_budget: float | None = None
    flash_kb_budget: float | None = None


@dataclasses.dataclass(frozen=True)
class Agreement(Record):
    """How often artifact and simulation pick the same class (per sample; per pixel for dense
    outputs; None for values), how far their outputs are apart, and the outputs' SNR and cosine."""

    top1: float | None
    disagreeing: Count
    max_logit_error: Amount
    mean_logit_error: Amount
    logit_range: Amount
    snr_db: float | None = None
    cosine: float | None = None


@dataclasses.dataclass(frozen=True)
class DivergenceRow(Record):
    """One layer's relative L2 error between the artifact's output and the simulation's."""

    layer: str
    precision: str
    op_index: Count
    relative_error: float | None
    parts: bool
    note: str | None = None


@dataclasses.dataclass(frozen=True)
class Divergence(Record):
    """The first layer where artifact and simulation part (None: none does), with every layer's error."""

    layer: str | None
    tol: float | None = None
    jump: float | None = None
    samples: Count | None = None
    layers: tuple[DivergenceRow, ...] = ()
    note: str | None = None


@dataclasses.dataclass(frozen=True)
class ValidationReport(Record):
    """validation.json: the artifact measured on the device against the float model, the simulation,
    the latency prediction and the size model."""

    what: ClassVar[str] = "validation report"
    versioned: ClassVar[bool] = True

    artifact: str
    target: str
    data: str
    data_id: str
    samples: Count
    device: Json
    eval_seconds: Amount
    latency: MeasuredLatency
    size: SizeCheck
    model: str | None = None
    weights: str | None = None
    deploy_report: bool = False
    deployed_target: str | None = None
    data_note: str | None = None
    task: Task = "classify"
    scores: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)  # float/simulated/artifact -> metrics
    artifact_top1: float | None = None  # classifiers: top-1 and top-5 on the device
    artifact_top5: float | None = None
    predictions: tuple[Count, ...] = ()
    float_top1: float | None = None
    simulated_policy: str | None = None
    simulation: str | None = None
    simulation_notes: tuple[str, ...] = ()
    simulated_top1: float | None = None
    agreement: Agreement | None = None
    divergence: Divergence | None = None
