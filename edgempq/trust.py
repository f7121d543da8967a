"""Which model code this user has already run: a deploy folder is data, so validate imports the
model its deploy.json names only when that is one of edgempq's own (zoo:), or code the user
deployed from on this machine (this store, in the user's cache: a folder cannot add to it),
or the user names it again (--model) or passes --trust.

A file spec is trusted by its resolved path and the sha256 of its bytes, so an edited file is
not; a module spec (package.module:factory) by its name, resolved as the user's environment
resolves it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .cache import cache_dir
from .files import atomic_write_text, read_own_json

MAX_ENTRIES = 1000  # the oldest are forgotten past this
MAX_BYTES = 1 << 20


def store_path() -> Path:
    """The user's store of trusted model specs."""
    return cache_dir("trusted-models.json")


def fingerprint(spec: str) -> str | None:
    """What the store keeps for `spec` (None for zoo: models, which need no trust, and for a file
    that cannot be read)."""
    if spec.startswith("zoo:"):
        return None
    from .models import names_a_file

    head, colon, factory = spec.rpartition(":")
    target = head if colon else spec
    path = Path(target)
    if names_a_file(target):  # as load_model decides what to import
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            return None
        return f"file {path.resolve()}:{factory} {digest}"
    return f"module {spec}"


def _entries() -> list[str]:
    doc = read_own_json(store_path(), MAX_BYTES)
    return [e for e in doc if isinstance(e, str)] if isinstance(doc, list) else []


def remember(spec: str) -> None:
    """Record that the user ran `spec`'s code (deploy calls this); a store that cannot be
    written only means validate will ask for --model."""
    key = fingerprint(spec)
    if key is None:
        return
    entries = [e for e in _entries() if e != key] + [key]
    try:
        store_path().parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(store_path(), json.dumps(entries[-MAX_ENTRIES:], indent=0))
    except OSError:
        pass


def trusted(spec: str) -> bool:
    """Whether validate may import `spec` though a deploy folder named it."""
    if spec.startswith("zoo:"):
        return True
    key = fingerprint(spec)
    return key is not None and key in _entries()
