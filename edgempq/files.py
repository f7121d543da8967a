"""Atomic file writes and JSON/TOML reads whose failures are one clear sentence."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import tomllib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import ConfigError


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` via a temporary file in the same folder and a rename, so a reader
    never sees a half-written file and an interrupted write leaves the old file intact."""
    from .distributed import is_main

    path = Path(path)
    refuse_special(path)
    if not is_main():  # under torchrun rank 0 writes; the other ranks hold the same result
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise ConfigError(f"cannot write {path} ({e.strerror}); choose a writable location") from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # mkstemp's 0600 would survive the rename
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise ConfigError(f"cannot write {path} ({e.strerror}); choose a writable location") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def check_output(path: str | Path, folder: bool = False) -> Path:
    """Refuse, before any work, an output (a file, or a `folder` of files) that could not be
    written afterwards, so a bad -o fails at once in one sentence rather than after minutes of
    measuring or converting. Nothing is created here."""
    path = Path(path)
    try:
        if folder and path.exists() and not path.is_dir():
            kind = "a file" if path.is_file() else "not a folder (a FIFO, device or socket)"
            raise ConfigError(f"output folder {path} is {kind}; choose a folder")
        if not folder and path.is_dir():
            raise ConfigError(f"cannot write {path} (it is a folder); choose a file name")
        refuse_special(path)
        probe = path if folder and path.is_dir() else path.parent
        probe = next((p for p in (probe, *probe.parents) if p.exists()), Path("."))
        writable = probe.is_dir() and os.access(probe, os.W_OK | os.X_OK)
    except OSError as e:  # e.g. a folder on the way that may not be read, or a name too long
        raise ConfigError(f"cannot write {path} ({e.strerror}); choose a writable location") from None
    if not writable:
        raise ConfigError(f"cannot write {path} ({probe} is not a writable folder); choose a writable location")
    return path


def refuse_special(path: Path) -> None:
    """An output that exists and is not a regular file (a FIFO, a device node, a socket) is
    refused: the rename that makes a write atomic would replace it (as root, `-o /dev/null`
    would replace the system's)."""
    try:
        special = path.exists() and not path.is_file() and not path.is_dir()
    except OSError:
        return  # the write itself will say why
    if special:
        raise ConfigError(f"cannot write {path}: it exists and is not a regular file (a FIFO, device or socket), "
                          "which writing would replace; choose a file name")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` as UTF-8 to `path` atomically; returns the path written."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> Path:
    """Write `obj` as indented JSON to `path` atomically; returns the path written."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path, what: str) -> Any:
    """Parse a JSON file; a missing, malformed or hostile file (nested past the parser's depth,
    an integer of thousands of digits) is a ConfigError naming it and `what`."""
    return parse_json(_read_text(path, what), f"{what} file {path}")


def parse_json(text: str, where: str) -> Any:
    """JSON text parsed; every way it can fail is a ConfigError naming `where`."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{where} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); "
                          "regenerate it or fix it by hand") from None
    except (ValueError, RecursionError) as e:
        raise ConfigError(f"{where} is not JSON edgempq reads ({_hostile(e)}); regenerate it") from None


def read_own_json(path: Path, max_bytes: int = 1 << 20) -> Any:
    """A small JSON file edgempq keeps for itself (a cache, shipped data), or None when it is
    missing, larger than `max_bytes` or unreadable in any way: its reader falls back, never fails."""
    try:
        if path.stat().st_size > max_bytes:
            return None
        return json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None


def read_toml(path: str | Path, what: str) -> dict[str, Any]:
    """Parse a TOML file; a missing, malformed or hostile file is a ConfigError naming it and `what`."""
    text = _read_text(path, what)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{what} file {path} is not valid TOML ({e}); fix its syntax") from None
    except (ValueError, RecursionError) as e:
        raise ConfigError(f"{what} file {path} is not TOML edgempq reads ({_hostile(e)}); fix it") from None


def _hostile(e: BaseException) -> str:
    """What a parser met that no file edgempq writes holds."""
    if isinstance(e, RecursionError):
        return "it nests deeper than a parser's recursion limit"
    return "an integer of more than 4300 digits" if "digits" in str(e) else str(e)


def missing(path: Path) -> str:
    """Why `path`, which is no regular file, cannot be read as one, and what to do: what follows
    its name in a message (`not_found` is the first half, for callers with their own advice)."""
    why = not_found(path)
    return f"{why}; " + ("check the path" if why == "does not exist" else "give the path of a file")


def not_found(path: Path) -> str:
    """'does not exist', or what `path` is instead of a regular file."""
    try:
        there = path.exists()
    except OSError:
        there = False
    if not there:
        return "does not exist"
    return "is a directory" if path.is_dir() else "is not a regular file (a FIFO, device or socket)"


def _read_text(path: str | Path, what: str) -> str:
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{what} file {p} is a directory; give the path of the file")
    if not p.is_file():
        raise ConfigError(f"{what} file {p} {missing(p)}")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{what} file {p} is not UTF-8 text; save it as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"{what} file {p} cannot be read ({e.strerror}); check its permissions") from None


@contextlib.contextmanager
def exclusive(lock: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an advisory lock on `lock` for the block: a folder that exists is locked itself (no
    file is left in it); any other path is a lock file, created if need be. A second holder waits
    (`on_wait` is called first, to say so). On a file system without locks it runs unlocked."""
    import fcntl  # POSIX: edgempq runs on Linux and macOS hosts

    try:
        if lock.is_dir():
            fd = os.open(lock, os.O_RDONLY)
        else:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise ConfigError(f"cannot lock {lock} ({e.strerror}); choose a writable location") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)  # closing releases the lock


STAGING = ".edgempq-staging-"  # the hidden folder a folder's next files are built in


@contextlib.contextmanager
def staged(folder: Path, owned: Iterable[str], anchor: str) -> Iterator[Path]:
    """Build a folder's files in a hidden staging folder inside it and move them in together,
    `anchor` (the file that says the folder is whole, such as deploy.json) last; the folder is
    locked meanwhile, so two writers take turns. A failure while building leaves the folder as it
    was; one while moving in leaves it without `anchor` (the old one goes first), so nothing reads
    a mix of two runs as one. The `owned` files that this run does not write (an earlier run's
    plots) go, as the anchor did. A folder this created and that stays empty is removed."""
    import shutil

    from .distributed import is_main

    if not is_main():  # under torchrun rank 0 writes the folder; the others build aside and drop it
        with tempfile.TemporaryDirectory() as aside:
            yield Path(aside)
        return
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create the folder {folder} ({e.strerror}); choose a writable location") from None
    try:
        with exclusive(folder):
            for orphan in folder.glob(STAGING + "*"):  # of a run that was killed: nobody else holds the lock
                shutil.rmtree(orphan, ignore_errors=True)
            stage = _stage_in(folder)
            try:
                yield stage
                _move_in(stage, folder, set(owned), anchor)
            except ConfigError as e:  # name the file where the user will look for it
                raise ConfigError(str(e).replace(f"{stage}{os.sep}", f"{folder}{os.sep}")) from None
            finally:
                shutil.rmtree(stage, ignore_errors=True)
    finally:
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty


def _stage_in(folder: Path) -> Path:
    try:
        return Path(tempfile.mkdtemp(prefix=STAGING, dir=folder))
    except OSError as e:
        raise ConfigError(f"cannot write into {folder} ({e.strerror}); choose a writable location") from None


def _move_in(stage: Path, folder: Path, owned: set[str], anchor: str) -> None:
    """Move `stage`'s files into `folder`: the old `anchor` and the owned files this run did not
    write first, then the new files, `anchor` last; each move is a rename, which needs no space."""
    names = sorted((p.name for p in stage.iterdir()), key=lambda n: (n == anchor, n))
    for name in names:
        refuse_special(folder / name)
    try:
        for name in (anchor, *sorted(owned - set(names))):
            (folder / name).unlink(missing_ok=True)
        for name in names:
            os.replace(stage / name, folder / name)
        _sync(folder)
    except OSError as e:
        raise ConfigError(f"cannot move the new files into {folder} ({e.strerror}); it holds no {anchor} "
                          "now, run the command again") from None


def _sync(folder: Path) -> None:
    """The renames made durable (a folder's entries are flushed by an fsync of the folder)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
