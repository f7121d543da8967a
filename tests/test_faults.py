"""Faults injected into real runs: a profile interrupted (SIGINT, SIGTERM, the device's sshd
killed midway) resumes with every finished measurement kept and none duplicated; two profiles
of one device at once share the cache through a lock; a hung device times out with a clear
message and leaves nothing running on it; odd paths and names reach the device intact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest

import edgempq.profile as prof
from edgempq.layers import trace
from edgempq.models import load_model
from edgempq.rounds import ROUNDS
from edgempq.targets import load_target

from .devices import SSHServer, need, ssh_target

NET = textwrap.dedent("""
    import torch.nn as nn

    def net():
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                             nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8), nn.ReLU(),
                             nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    net.input_shape = (3, 12, 12)

    def tiny():
        return nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    tiny.input_shape = (3, 2, 2)
""")
JOBS = 16  # conv x 6 precisions + dwconv x 4 + linear x 6 on host's precision table


def _net(folder: Path, name: str = "net.py", factory: str = "net") -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(NET)
    return f"{folder / name}:{factory}"


def _cli(*args: str, cache: Path, env_extra: dict | None = None, **kw) -> subprocess.Popen:
    env = {**os.environ, "EDGEMPQ_CACHE": str(cache), **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "edgempq", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _rows(cache: Path) -> dict[str, str]:
    """The finished timings in the cache (every round of every row): file name -> content."""
    return {f.name: f.read_text() for f in cache.rglob("*.json")}


def _wait_for_rows(p: subprocess.Popen, cache: Path, n: int, timeout: float = 1800) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and p.poll() is None and len(_rows(cache)) < n:
        time.sleep(0.05)
    assert p.poll() is None, f"the profile ended before it could be interrupted: {p.communicate()}"


def _resume(spec: str, target, cache: Path, monkeypatch) -> object:
    monkeypatch.setenv("EDGEMPQ_CACHE", str(cache))
    m = load_model(spec)
    return prof.profile(trace(m.module, m.input_shape), target, m.model_hash)


def test_an_interrupted_profile_keeps_what_it_finished_and_resumes(tmp_path, monkeypatch, counted):
    spec, cache, out = _net(tmp_path), tmp_path / "cache", tmp_path / "p.json"
    p = _cli("profile", "--device", "host", "--model", spec, "--layers-only", "-o", str(out), cache=cache)
    _wait_for_rows(p, cache, 5)
    p.send_signal(signal.SIGINT)  # Ctrl-C (SIGTERM: test_sigterm_removes_the_remote_folder; SIGKILL: test_profile)
    _, err = p.communicate(timeout=1800)
    assert p.returncode == 130 and "Traceback" not in err, err
    assert "interrupted; no file was left half-written" in err and "keeps its finished measurements" in err
    assert not out.exists() and not list(tmp_path.glob(".p.json*"))
    done = _rows(cache)
    assert 5 <= len(done) < JOBS * ROUNDS
    table = _resume(spec, load_target("host"), cache, monkeypatch)
    assert len(counted.timed) + len(done) == len(table.rows) * ROUNDS == JOBS * ROUNDS  # none timed twice or lost
    after = _rows(cache)
    assert all(after[k] == v for k, v in done.items())  # the finished timings were kept as they were
    assert len({(r.signature, r.precision) for r in table.rows}) == JOBS


def test_a_second_profile_of_a_busy_device_waits_then_reuses_the_first(tmp_path):
    import fcntl

    spec, cache = _net(tmp_path), tmp_path / "cache"
    a = _cli("profile", "--device", "host", "--model", spec, "--layers-only", "-o", str(tmp_path / "a.json"),
             cache=cache)
    assert a.wait(timeout=1800) == 0, a.communicate()
    folder = next(cache.rglob("*.json")).parent  # the device's cache folder
    rows = _rows(cache)
    with open(folder / ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another profile of this device is running
        b = _cli("profile", "--device", "host", "--model", spec, "--layers-only", "-o",
                 str(tmp_path / "b.json"), cache=cache)
        time.sleep(12)  # time enough to start, check the device and read the whole cache
        assert b.poll() is None and not (tmp_path / "b.json").exists()  # it waits for the device
        fcntl.flock(lock, fcntl.LOCK_UN)
    _, err = b.communicate(timeout=1800)
    assert b.returncode == 0, err
    doc = [json.loads((tmp_path / f"{n}.json").read_text())["rows"] for n in "ab"]
    assert doc[0] == doc[1] and len(doc[0]) == JOBS and _rows(cache) == rows  # read, not measured again


@pytest.fixture
def own_sshd(tmp_path):
    """An sshd for this test alone: the test kills it."""
    need("sshd")
    (tmp_path / "sshd").mkdir()
    server = SSHServer(tmp_path / "sshd")
    yield server
    server.stop()


def _target_file(folder: Path, server: SSHServer, python: str, name: str = "loopback", **extra) -> Path:
    t = replace(ssh_target(server, python, **extra), name=name)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "board.toml"
    path.write_text(t.to_toml())
    return path


def test_a_profile_whose_device_disappears_resumes_when_it_is_back(tmp_path, own_sshd, device_python, monkeypatch,
                                                                   counted):
    spec, cache, out = _net(tmp_path), tmp_path / "cache", tmp_path / "p.json"
    board = _target_file(tmp_path / "t", own_sshd, device_python)
    before = set(Path("/tmp").glob("edgempq.*"))
    p = _cli("profile", "--device", str(board), "--model", spec, "--layers-only", "-o", str(out), cache=cache)
    _wait_for_rows(p, cache, 3)
    own_sshd.proc.kill()  # the board drops off the network
    own_sshd.proc.wait()
    _, err = p.communicate(timeout=1800)
    assert p.returncode == 1 and "Traceback" not in err, err
    ours = [line for line in err.splitlines() if line and not line.startswith("INFO: ")]  # LiteRT's own log line
    assert len(ours) == 1 and ours[0].startswith("error: target loopback") and "unreachable" in ours[0], err
    assert not out.exists()
    done = _rows(cache)
    assert 3 <= len(done) < JOBS * ROUNDS
    (tmp_path / "sshd-again").mkdir()
    back = SSHServer(tmp_path / "sshd-again")  # the board is back (another port: only the address changed)
    try:
        table = _resume(spec, ssh_target(back, device_python), cache, monkeypatch)
    finally:
        back.stop()
    assert len(counted.timed) + len(done) == len(table.rows) * ROUNDS == JOBS * ROUNDS
    assert all(_rows(cache)[k] == v for k, v in done.items())
    import shutil

    for gone in set(Path("/tmp").glob("edgempq.*")) - before:  # the vanished board's folder stays on it
        shutil.rmtree(gone, ignore_errors=True)


def _runners(folder: str) -> list[str]:
    """The device runners started from `folder` that are still running."""
    p = subprocess.run(["pgrep", "-af", "edgempq_device.py"], capture_output=True, text=True)
    return [line for line in p.stdout.splitlines() if f"{folder}/edgempq_device.py" in line and "pgrep" not in line]


def test_a_hung_device_times_out_clearly_and_the_runner_ends_itself(sshd, device_python, tmp_path):
    from edgempq.backends import backend_for
    from edgempq.errors import DeviceError
    from edgempq.export.layer_model import float_layer_model
    from edgempq.schema import Layer

    # a layer slow enough that 100,000 runs take minutes: the device is busy far past the timeout
    la = Layer("c", "conv", (64, 56, 56), (64, 56, 56), 64, 64, (3, 3), (1, 1), (1, 1), (1, 1), 1, False, 36864,
               115605504, "conv in64x56x56 out64x56x56 k3x3 s1x1 p1x1 d1x1 g1 b0")
    model = float_layer_model(la)
    t = replace(ssh_target(sshd, device_python, timeout_s=4), runs=100000, warmup=0, max_seconds=3600.0)
    with pytest.raises(DeviceError, match="did not answer within 4 s; check the device or raise timeout_s"), \
            backend_for(t) as b:
        folder = b._session()  # this run's own folder on the device: its runner's command line names it
        b.time(model)
    deadline = time.time() + 1800  # a hang guard: the runner ends itself within seconds
    while time.time() < deadline and _runners(folder):
        time.sleep(0.2)
    assert not _runners(folder)  # the runner ended itself: nothing left busy on the device


def test_odd_paths_and_names_reach_the_device_intact(sshd, device_python, tmp_path):
    # shell syntax everywhere a user names something: the model file, the target file and name,
    # the output, and the device's Python (the one that goes into the remote command line)
    odd = tmp_path / "it's a \"dir\"; touch PWNED; $(touch PWNED2) `touch PWNED3`"
    spec = _net(odd, "my net; 'quoted'.py", "tiny")
    wrapper = odd / "py thon; touch PWNED4"
    wrapper.write_text(f'#!/bin/sh\nexec "{device_python}" "$@"\n')
    wrapper.chmod(0o755)
    board = _target_file(odd / "t; x", sshd, str(wrapper), name="my board; 'x' \"y\"")
    out = odd / "out; 'p'.json"
    p = _cli("profile", "--device", str(board), "--model", spec, "--layers-only", "-o", str(out),
             cache=tmp_path / "cache", cwd=tmp_path)
    _, err = p.communicate(timeout=1800)
    assert p.returncode == 0, err
    assert len(json.loads(out.read_text())["rows"]) == 6  # the linear layer at host's 6 precisions
    import pwd

    home = Path(pwd.getpwuid(os.getuid()).pw_dir)  # where the remote shell starts
    for where in (tmp_path, home, Path.cwd()):
        assert not list(where.glob("PWNED*"))


def test_a_refused_key_is_reported_without_the_key(sshd, device_python, tmp_path):
    from edgempq.backends import backend_for
    from edgempq.errors import DeviceError

    key = tmp_path / "stranger"
    subprocess.run([need("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    with pytest.raises(DeviceError) as e, backend_for(ssh_target(sshd, device_python, key=str(key))) as b:
        b.check()
    msg = str(e.value)
    assert "the key was refused" in msg
    secret = key.read_text()
    assert str(key) not in msg and secret.splitlines()[1][:20] not in msg
    missing = ssh_target(sshd, device_python, key=str(tmp_path / "no such key"))
    with pytest.raises(DeviceError, match="the key file named in \\[connection\\] does not exist"):
        backend_for(missing)


def test_sigterm_removes_the_folders_here_and_on_the_device(tmp_path, sshd, device_python, monkeypatch):
    spec, cache = _net(tmp_path), tmp_path / "cache"
    board = _target_file(tmp_path / "t", sshd, device_python)
    scratch = tmp_path / "tmp"  # this process's temporary folders, apart from everyone else's
    scratch.mkdir()
    before = set(Path("/tmp").glob("edgempq.*"))
    p = _cli("profile", "--device", str(board), "--model", spec, "--layers-only", "-o", str(tmp_path / "p.json"),
             cache=cache, env_extra={"TMPDIR": str(scratch)})
    _wait_for_rows(p, cache, 2)
    remote = set(Path("/tmp").glob("edgempq.*")) - before  # its folder on the "device" (mktemp in /tmp)
    assert len(remote) == 1 and list(scratch.iterdir())
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=1800)
    assert p.returncode == 143 and "Traceback" not in err and "interrupted" in err, err
    assert not any(r.exists() for r in remote) and not list(scratch.iterdir())


def test_the_help_says_a_model_file_is_executed():
    from click.testing import CliRunner

    from edgempq.cli import main

    for verb in ("layers", "profile", "deploy"):
        out = CliRunner().invoke(main, [verb, "--help"]).output
        assert "is executed" in " ".join(out.split())
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert "executes that Python code" in readme


def test_a_cached_row_filed_under_another_precision_is_measured_again(tmp_path, monkeypatch, counted):
    spec, cache = _net(tmp_path, factory="tiny"), tmp_path / "cache"
    first = _resume(spec, load_target("host"), cache, monkeypatch)
    files = {f.stem.rsplit("-", 1)[1]: f for f in cache.rglob("*.json") if not f.stem.startswith("round-")}
    files["w8a8"].write_text(files["f32"].read_text())  # a valid, checksummed row, of f32
    counted.built.clear()
    again = _resume(spec, load_target("host"), cache, monkeypatch)
    assert [k.rsplit("-", 1)[1] for k in counted.built] == ["w8a8"]  # only the misfiled row was built again
    assert len(counted.timed) == len(first.rows) * ROUNDS  # from its own cached rounds: none timed again
    assert sorted(r.precision for r in again.rows) == sorted(r.precision for r in first.rows)


def test_the_device_runner_refuses_endless_runs_and_deadlines(tmp_path):
    from edgempq.backends.base import device_script
    from edgempq.export.layer_model import float_layer_model
    from edgempq.schema import Layer

    model = tmp_path / "m.tflite"
    model.write_bytes(float_layer_model(Layer("fc", "linear", (8,), (4,), 8, 4, (), (), (), (), 1, True, 36, 32,
                                              "linear in8 out4 b1")))
    runner = device_script().__file__
    for bad, needle in ((["--max-seconds", "nan"], "max-seconds"), (["--max-seconds", "inf"], "max-seconds"),
                        (["--deadline", "-1"], "deadline"), (["--deadline", "inf"], "deadline")):
        p = subprocess.run([sys.executable, runner, "time", str(model), *bad], capture_output=True, text=True)
        assert p.returncode == 2 and needle in json.loads(p.stdout)["error"], (bad, p.stdout, p.stderr)
    ok = subprocess.run([sys.executable, runner, "time", str(model), "--runs", "3", "--deadline", "60"],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and json.loads(ok.stdout)["runs"] == 3, ok.stdout
    # endless work (a 1024x1024 layer: 2 x 100000 runs take minutes on any CPU), a 0.3 s deadline:
    # the kernel ends it (SIGALRM), not the runs
    big = tmp_path / "big.tflite"
    big.write_bytes(float_layer_model(Layer("fc", "linear", (1024,), (1024,), 1024, 1024, (), (), (), (), 1, True,
                                            1024 * 1024 + 1024, 1024 * 1024, "linear in1024 out1024 b1")))
    late = subprocess.run([sys.executable, runner, "time", str(big), "--runs", "100000", "--warmup", "100000",
                           "--max-seconds", "1000", "--deadline", "0.3"], capture_output=True, text=True, timeout=1800)
    assert late.returncode == -signal.SIGALRM
