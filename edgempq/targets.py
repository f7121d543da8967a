"""Targets by name (the built-in targets/*.toml) or by path to a TOML file."""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError
from .resources import builtin_files
from .schema import Target


def builtin_targets() -> dict[str, Path]:
    """name -> path of every built-in target (targets/*.toml)."""
    return builtin_files("targets")


def load_target(spec: str) -> Target:
    """A built-in target name (see `edgempq targets`) or a path to a target TOML file."""
    builtins = builtin_targets()
    if spec in builtins:
        return Target.from_toml(builtins[spec])
    p = Path(spec).expanduser()
    if p.suffix == ".toml" or p.exists():
        return Target.from_toml(p)
    raise ConfigError(f"unknown target {spec!r}; choose one of {', '.join(builtins)} or give a .toml file")
