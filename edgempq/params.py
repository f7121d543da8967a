"""Plugin parameters from `key=value` text: every plugin (sensitivity method, PTQ algorithm) has
a frozen `Params` dataclass whose defaults give each value its type."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from .errors import ConfigError


def parse_params(cls: type, pairs: list[str] | dict[str, Any], kind: str = "method") -> Any:
    """`cls.Params` from `key=value` strings (or a dict); unknown keys and bad values are errors
    that name the plugin (`kind` `cls.name`) and list the valid keys."""
    fields = {f.name: f for f in dataclasses.fields(cls.Params)}
    items = _pairs(pairs, f"{kind} {cls.name}") if isinstance(pairs, list) else pairs
    values: dict[str, Any] = {}
    for k, v in items.items():
        if k not in fields:
            listed = ", ".join(f"{n}={getattr(cls.Params(), n)!r}" for n in fields)
            raise ConfigError(f"{kind} {cls.name} has no parameter {k!r}; "
                              + (f"its parameters are: {listed}" if listed else "it takes no parameters"))
        if v is None:
            raise ConfigError(f"parameter {k} of {kind} {cls.name} needs a value: write {k}=VALUE")
        values[k] = _convert(v, getattr(cls.Params(), k), f"parameter {k} of {kind} {cls.name}")
    try:
        return cls.Params(**values)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"bad parameters for {kind} {cls.name}: {e}") from None


def split_pairs(text: str) -> list[str]:
    """`key=value` strings from comma-separated text (a sensitivity's `ptq_params`)."""
    return [p.strip() for p in text.split(",") if p.strip()]


def _pairs(pairs: list[str], who: str) -> dict[str, str | None]:
    """`key=value` strings as a dict; a key given twice is an error, not the last one silently."""
    out: dict[str, str | None] = {}
    for p in pairs:
        k, v = p.split("=", 1) if "=" in p else (p, None)
        if k in out:
            raise ConfigError(f"parameter {k} of {who} is given twice ({k}={out[k]}, {k}={v}); give it once")
        out[k] = v
    return out


def need(ok: bool, who: str, key: str, value: Any, rule: str) -> None:
    """A parameter's range check: `who`'s `key=value` must be `rule`, said with the value given."""
    if not ok:
        raise ConfigError(f"parameter {key}={value!r} of {who} is out of range: it must be {rule}")


def _convert(v: Any, default: Any, what: str) -> Any:
    if not isinstance(v, str):
        return v
    try:
        if isinstance(default, bool):
            if v.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(v)
            return v.lower() in ("true", "1", "yes")
        if isinstance(default, int):
            return int(v)
        if isinstance(default, float):
            f = float(v)
            if not math.isfinite(f):
                raise ValueError(v)
            return f
    except ValueError:
        kind = {bool: "true or false", int: "an integer", float: "a finite number"}.get(type(default), "text")
        raise ConfigError(f"{what} must be {kind}, not {v!r}") from None
    if default is None and v.lower() == "none":
        return None
    if default is None:
        try:
            return float(v)
        except ValueError:
            return v
    return v
