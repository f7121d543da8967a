"""A farm of devices for `edgempq profile`: two real sshd "boards" on loopback, each reached
through the ssh backend, profiled at once (one profile each), and one model spread over them
(one profile, its measurements shared out and assembled from the cache)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from .devices import SSHServer, need, ssh_target

MODEL = ["--model", "zoo:mnist_cnn?input_size=8"]


@pytest.fixture
def boards(tmp_path, device_python):
    """Two boards of one kind: two sshd on loopback in front of this machine."""
    need("sshd")
    servers, files = [], []
    try:
        for name in ("board-a", "board-b"):
            (tmp_path / name).mkdir()
            servers.append(SSHServer(tmp_path / name))
            files.append(tmp_path / f"{name}.toml")
            files[-1].write_text(_board(servers[-1], device_python, name).to_toml())
        yield files
    finally:  # a failed setup too leaves no sshd running
        for s in servers:
            s.stop()


def _board(server: SSHServer, python: str, name: str):
    from edgempq.schema import Precision

    w8a8, w4a8 = Precision.parse("w8a8"), Precision.parse("w4a8")
    return replace(ssh_target(server, python), name=name, runs=3, threads=1,
                   precisions={"conv": (w8a8, w4a8), "dwconv": (w8a8,), "linear": (w8a8,)})


def _profile(tmp_path: Path, *args: str, cache: str = "cache") -> subprocess.CompletedProcess:
    env = {**os.environ, "EDGEMPQ_CACHE": str(tmp_path / cache)}
    return subprocess.run([sys.executable, "-m", "edgempq", "profile", *MODEL, *args], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=1800)


def _rows(path: Path) -> set[tuple[str, str]]:
    return {(r["signature"], r["precision"]) for r in json.loads(path.read_text())["rows"]}


def test_a_spread_shares_one_model_between_identical_boards(tmp_path, boards):
    from edgempq.layers import trace
    from edgempq.models import load_model
    from edgempq.profile import _whole_policies
    from edgempq.profile_cache import jobs_for
    from edgempq.targets import load_target

    a, b = (str(p) for p in boards)
    r = _profile(tmp_path, "--device", a, "--device", b, "--spread", "--probes", "2", "-o", "spread.json")
    assert r.returncode == 0, r.stderr
    took = re.findall(r"board-(\w) took (\d+) single-layer models and (\d+) whole models", r.stdout)
    assert [t[0] for t in took] == ["a", "b"] and all(int(n) > 0 and int(w) > 0 for _, n, w in took), r.stdout
    target = load_target(a)
    layers = trace(load_model(MODEL[1]).module, (1, 8, 8))
    jobs, wholes = jobs_for(layers, target), _whole_policies(layers, target, 2)
    assert sum(int(n) for _, n, _ in took) == len(jobs)  # each layer measured on one board only
    assert sum(int(w) for *_, w in took) == len(wholes)
    spread = json.loads((tmp_path / "spread.json").read_text())
    assert _rows(tmp_path / "spread.json") == {(j.layer.signature, str(j.precision)) for j in jobs}
    assert set(spread["whole_ms"]) == {"w8a8", "w4a8"} and len(spread["probes"]) == 2 and spread["graph"]
    assert "assembled from the shared cache on board-a" in r.stdout


def test_a_farm_profiles_each_board_and_refuses_to_spread_unlike_ones(tmp_path, boards):
    a, b = (str(p) for p in boards)
    r = _profile(tmp_path, "--device", a, "--device", b, "--layers-only", "-o", "p.json")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("wrote p-board-") == 2
    assert _rows(tmp_path / "p-board-a.json") == _rows(tmp_path / "p-board-b.json")
    # a board timed with other options is another kind of device: its timings cannot be merged
    other = tmp_path / "other" / "board-b.toml"
    other.parent.mkdir()
    other.write_text(Path(b).read_text().replace("threads = 1", "threads = 2"))
    assert "threads = 2" in other.read_text()  # (the refusals skip the preflight, which the farm ran above)
    other.with_name("again.toml").write_text(Path(a).read_text())  # board a under another name
    r = _profile(tmp_path, "--device", a, "--device", str(other), "--spread", "--no-check", "-o", "x.json")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "error: --spread needs identical boards" in r.stderr and not (tmp_path / "x.json").exists()
    r = _profile(tmp_path, "--device", b, "--device", str(other), "--no-check", "-o", "x.json")
    assert r.returncode == 1 and "--device names 'board-b' twice" in r.stderr
    r = _profile(tmp_path, "--device", a, "--device", str(other.with_name("again.toml")), "--spread", "--no-check",
                 "-o", "x.json")
    assert r.returncode == 1 and "reaches the same board as" in r.stderr
    r = _profile(tmp_path, "--device", a, "--spread", "--no-check", "-o", "x.json")
    assert r.returncode == 1 and "give --device two or more times" in r.stderr
