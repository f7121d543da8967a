"""Every write is whole: a folder's files are built aside and moved in together, its anchor
(deploy.json, validation.json) last, so a failure at any write or any move leaves the folder as
it was or without its anchor, never a mix that reads as one run; writers of one folder take turns."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

import edgempq.files
from edgempq.errors import ConfigError
from edgempq.files import STAGING, exclusive, staged

OWNED = ("a.bin", "b.txt", "plot.png", "anchor.json")
OLD = {"a.bin": b"old a", "b.txt": b"old b", "plot.png": b"old plot", "anchor.json": b"old anchor",
       "mine.txt": b"the user's"}
NEW = {"a.bin": b"new a", "b.txt": b"new b", "anchor.json": b"new anchor"}  # no plot this time


def _folder(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in path.iterdir()}


def _run(folder: Path) -> None:
    with staged(folder, OWNED, anchor="anchor.json") as stage:
        for name, data in NEW.items():
            edgempq.files.atomic_write_bytes(stage / name, data)


def _failing(monkeypatch, name: str, k: int) -> list[int]:
    """Make the k-th call of os.`name` (counting from 0), or the k-th file's write, fail with a
    full disk."""
    calls = [0]

    def full(real):
        def fail(*a, **kw):
            calls[0] += 1
            if calls[0] - 1 == k:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(*a, **kw)
        return fail

    if name == "write":
        class Full:  # a file whose write fails as a full disk's does
            def __init__(self, f):
                self.f, self.write = f, full(f.write)

            def __getattr__(self, attr):
                return getattr(self.f, attr)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

        real_fdopen = os.fdopen
        monkeypatch.setattr(edgempq.files.os, "fdopen", lambda *a, **kw: Full(real_fdopen(*a, **kw)))
    else:
        monkeypatch.setattr(edgempq.files.os, name, full(getattr(os, name)))
    return calls


def test_a_run_replaces_its_own_files_keeps_the_users_and_leaves_nothing_aside(tmp_path):
    for name, data in OLD.items():
        (tmp_path / name).write_bytes(data)
    _run(tmp_path)
    assert _folder(tmp_path) == {**NEW, "mine.txt": b"the user's"}  # the old plot went, mine stayed


@pytest.mark.parametrize("call", ["replace", "unlink", "write", "fsync"])
def test_a_full_disk_at_any_write_or_move_leaves_the_old_folder_or_no_anchor(tmp_path, monkeypatch, call):
    """Every call of each kind fails once in turn: the folder is the previous one, byte for byte,
    or it has no anchor; never the new anchor beside old files, never a staging folder left."""
    outcomes = set()
    for k in range(20):
        folder = tmp_path / f"{call}{k}"
        folder.mkdir()
        for name, data in OLD.items():
            (folder / name).write_bytes(data)
        with monkeypatch.context() as m:
            calls = _failing(m, call, k)
            try:
                _run(folder)
                failed = False
            except ConfigError as e:
                failed = True
                assert "No space left on device" in str(e) and STAGING not in str(e), str(e)
        if calls[0] <= k:
            break  # every call of this kind has failed once
        after = _folder(folder)
        if not failed:
            assert after == {**NEW, "mine.txt": b"the user's"}
        elif after == OLD:
            outcomes.add("previous")
        else:
            assert "anchor.json" not in after and not any(n.startswith(STAGING) for n in after), after
            outcomes.add("no anchor")
    # a write fails while building (the old folder stays); a rename also while moving in (no anchor)
    assert outcomes == ({"previous", "no anchor"} if call in ("replace", "unlink") else {"previous"}), outcomes


def test_a_new_folder_whose_first_run_fails_is_not_left_behind(tmp_path, monkeypatch):
    _failing(monkeypatch, "replace", 0)
    with pytest.raises(ConfigError, match="No space left"):
        _run(tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_a_killed_runs_staging_folder_is_cleared_by_the_next(tmp_path):
    (tmp_path / f"{STAGING}killed").mkdir()
    (tmp_path / f"{STAGING}killed" / "a.bin").write_bytes(b"half")
    _run(tmp_path)
    assert sorted(_folder(tmp_path)) == sorted(NEW)


def test_a_special_file_in_the_way_is_refused_before_anything_moves(tmp_path):
    for name, data in OLD.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "b.txt").unlink()
    os.mkfifo(tmp_path / "b.txt")
    with pytest.raises(ConfigError, match="not a regular file"):
        _run(tmp_path)
    assert (tmp_path / "b.txt").is_fifo() and (tmp_path / "anchor.json").read_bytes() == b"old anchor"


PROBE = ("import fcntl, os, sys\nfd = os.open(sys.argv[1], os.O_RDONLY)\ntry:\n"
         "    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n    print('free')\nexcept BlockingIOError:\n"
         "    print('busy')\n")


def _probe(path: Path) -> str:
    return subprocess.run([sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True).stdout.strip()


def test_a_folder_being_written_is_locked_and_no_lock_file_is_left(tmp_path):
    """Two deploys or validates into one folder take turns: the folder itself is locked."""
    with staged(tmp_path, OWNED, anchor="anchor.json"):
        held = _probe(tmp_path)
    assert (held, _probe(tmp_path)) == ("busy", "free")
    assert list(tmp_path.iterdir()) == []


def test_a_lock_file_makes_a_second_holder_wait(tmp_path):
    with exclusive(tmp_path / ".lock"):
        held = _probe(tmp_path / ".lock")
    assert (held, _probe(tmp_path / ".lock")) == ("busy", "free")
