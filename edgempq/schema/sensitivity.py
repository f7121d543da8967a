"""The Sensitivity value: a penalty per (layer, precision), lower is better, optionally pairwise
penalties between two layers' choices, and groups of layers that share one decision."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import ConfigError
from .core import SCHEMA_VERSION, JsonDoc, Precision, _check_keys, _check_version, _typed

Key = tuple[str, str]  # (layer name, precision as text)


def _finite(v: Any, what: str) -> float:
    v = _typed(v, int | float, what)
    if not math.isfinite(v):
        raise ConfigError(f"{what} must be a finite number, not {v!r}")
    return float(v)


def _choice(row: dict, side: str) -> Key:
    layer = _typed(row[f"layer_{side}"], str, f"sensitivity pair layer_{side}")
    return layer, str(Precision.parse(_typed(row[f"precision_{side}"], str, f"sensitivity pair precision_{side}")))


@dataclass(frozen=True)
class Sensitivity(JsonDoc):
    """What a method says each (layer, precision) costs in accuracy, in its own units.

    `penalties[(layer, precision)]` is added to the solver's objective when the layer takes that
    precision; `pairs[((la, pa), (lb, pb))]` when both choices are taken together. `groups` are
    layers that must take the same precision (e.g. OMPQ's conv2 + downsample)."""

    what: ClassVar[str] = "sensitivity"
    method: str
    penalties: dict[Key, float]
    params: dict[str, Any] = field(default_factory=dict)
    pairs: dict[tuple[Key, Key], float] = field(default_factory=dict)
    groups: tuple[tuple[str, ...], ...] = ()
    model_hash: str | None = None
    data_id: str | None = None
    info: dict[str, Any] = field(default_factory=dict)  # per-layer raw scores etc., for the reader

    def __post_init__(self) -> None:
        for (layer, p), v in self.penalties.items():
            Precision.parse(p)
            _finite(v, f"sensitivity penalty of {layer} at {p}")
        for (a, b), v in self.pairs.items():
            for _, p in (a, b):
                Precision.parse(p)
            _finite(v, f"sensitivity pair penalty of {a} and {b}")

    def layers(self) -> list[str]:
        """The layers scored, in the order of the rows."""
        return list(dict.fromkeys(layer for layer, _ in self.penalties))

    def precisions(self, layer: str) -> list[Precision]:
        """The precisions scored for `layer`, in the order of the rows."""
        return [Precision.parse(p) for la, p in self.penalties if la == layer]

    def penalty(self, layer: str, precision: Precision | str) -> float:
        """The penalty of one choice; a clear error if the method did not score it."""
        try:
            return self.penalties[(layer, str(precision))]
        except KeyError:
            raise ConfigError(f"the {self.method} sensitivity has no score for layer {layer} at {precision}; "
                              f"rerun `edgempq sensitivity` with that precision in --precisions") from None

    def to_dict(self) -> dict[str, Any]:
        """The sensitivity as its JSON file holds it: rows, pairs, groups and provenance."""
        return {
            "schema_version": SCHEMA_VERSION,
            "method": self.method,
            "params": dict(self.params),
            "model_hash": self.model_hash,
            "data_id": self.data_id,
            "rows": [{"layer": la, "precision": p, "penalty": v} for (la, p), v in self.penalties.items()],
            "pairs": [{"layer_a": a[0], "precision_a": a[1], "layer_b": b[0], "precision_b": b[1], "penalty": v}
                      for (a, b), v in self.pairs.items()],
            "groups": [list(g) for g in self.groups],
            "info": dict(self.info),
        }

    @classmethod
    def from_dict(cls, d: Any) -> Sensitivity:
        """A sensitivity from its dict, every row checked; a (layer, precision) scored twice is an error."""
        _check_keys(d, "sensitivity", {"schema_version", "method", "rows"},
                    {"params", "model_hash", "data_id", "pairs", "groups", "info"})
        _check_version(d, "sensitivity")
        penalties: dict[Key, float] = {}
        for row in _typed(d["rows"], list, "sensitivity rows"):
            _check_keys(row, "sensitivity row", {"layer", "precision", "penalty"})
            key = (_typed(row["layer"], str, "sensitivity row layer"),
                   str(Precision.parse(_typed(row["precision"], str, "sensitivity row precision"))))
            if key in penalties:
                raise ConfigError(f"sensitivity scores layer {key[0]} at {key[1]} twice; keep one row")
            penalties[key] = _finite(row["penalty"], f"sensitivity penalty of {key[0]} at {key[1]}")
        pairs: dict[tuple[Key, Key], float] = {}
        for row in _typed(d.get("pairs") or [], list, "sensitivity pairs"):
            _check_keys(row, "sensitivity pair", {"layer_a", "precision_a", "layer_b", "precision_b", "penalty"})
            a, b = (_choice(row, "a"), _choice(row, "b"))
            pairs[(a, b)] = _finite(row["penalty"], f"sensitivity pair penalty of {a} and {b}")
        groups = tuple(tuple(_typed(n, str, "sensitivity group member") for n in _typed(g, list, "sensitivity group"))
                       for g in _typed(d.get("groups") or [], list, "sensitivity groups"))
        for k in ("model_hash", "data_id"):
            if d.get(k) is not None:
                _typed(d[k], str, f"sensitivity {k}")
        return cls(_typed(d["method"], str, "sensitivity method"), penalties,
                   dict(_typed(d.get("params") or {}, dict, "sensitivity params")), pairs, groups,
                   d.get("model_hash"), d.get("data_id"), dict(_typed(d.get("info") or {}, dict, "sensitivity info")))
