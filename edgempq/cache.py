"""The user cache (trained demo weights; later, device profiles): $EDGEMPQ_CACHE, else
$XDG_CACHE_HOME/edgempq, else ~/.cache/edgempq."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """The folder `parts` under the user cache root (not created here)."""
    root = os.environ.get("EDGEMPQ_CACHE")
    xdg = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    base = Path(root) if root else xdg / "edgempq"
    return base.joinpath(*parts)
