"""Where the built-in data files (targets/, calibration/) are: inside an installed wheel they
are package data under edgempq/_data; in a checkout they sit at the repository's top level."""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent


def data_dir(kind: str) -> Path:
    """The folder of built-in `kind` files ("targets" or "calibration")."""
    for cand in (_PKG / "_data" / kind, _PKG.parent / kind):
        if cand.is_dir():
            return cand
    return _PKG / "_data" / kind


def builtin_files(kind: str) -> dict[str, Path]:
    """name -> path of every built-in TOML file of `kind`."""
    d = data_dir(kind)
    return {p.stem: p for p in sorted(d.glob("*.toml"))} if d.is_dir() else {}
