"""Every backend's contract on a tiny real model: local LiteRT, TFLite Micro, SSH against a real
sshd on 127.0.0.1 (device side: a venv without torch), adb through a stand-in client."""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edgempq.backends import backend_for
from edgempq.errors import DeviceError
from edgempq.schema import Layer, Precision, Target
from edgempq.targets import load_target

from .devices import FAKE_ADB, SSHServer, device_venv, need, ssh_target


@pytest.fixture(scope="module")
def tiny_models() -> dict[str, bytes]:
    from edgempq.export.layer_model import float_layer_model, layer_model

    la = Layer("conv", "conv", (3, 8, 8), (4, 8, 8), 3, 4, (3, 3), (1, 1), (1, 1), (1, 1), 1, True, 112, 6912,
               "conv in3x8x8 out4x8x8 k3x3 s1x1 p1x1 d1x1 g1 b1")
    f = float_layer_model(la)
    return {"f32": f, "w8a8": layer_model(la, Precision.parse("w8a8"), f)}


def _ssh_target(sshd: SSHServer, python: str, **extra) -> Target:
    return ssh_target(sshd, python, **extra)


@pytest.fixture
def fake_adb(tmp_path, monkeypatch) -> Target:
    adb = tmp_path / "bin" / "adb"
    adb.parent.mkdir()
    adb.write_text(FAKE_ADB)
    adb.chmod(adb.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{adb.parent}{os.pathsep}{os.environ['PATH']}")
    (tmp_path / "phone").mkdir()
    return replace(load_target("android-adb"), template=False, runs=5, warmup=1,
                   connection={"serial": "FAKE-1", "python": str(device_venv() / "bin" / "python"),
                               "remote_dir": str(tmp_path / "phone")})


def _targets(request) -> Target:
    kind = request.param
    if kind == "litert":
        return replace(load_target("host"), runs=5, warmup=1)
    if kind == "tflm":
        return load_target("tflm-host")
    if kind == "ssh":
        return _ssh_target(request.getfixturevalue("sshd"), request.getfixturevalue("device_python"))
    return request.getfixturevalue("fake_adb")


@pytest.fixture(params=["litert", "tflm", "ssh", "adb"])
def any_target(request) -> Target:
    return _targets(request)


def _reference(model: bytes, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=model)
    it.allocate_tensors()
    out = []
    for i in range(len(x)):
        it.set_tensor(it.get_input_details()[0]["index"], x[i : i + 1])
        it.invoke()
        out.append(it.get_tensor(it.get_output_details()[0]["index"]).copy())
    return np.concatenate(out)


def test_backend_contract(any_target, tiny_models):
    x = np.random.default_rng(0).standard_normal((3, 8, 8, 3)).astype(np.float32)
    with backend_for(any_target) as b:
        fp = b.check()
        assert {"cpu", "runtime", "runtime_version", "threads", "backend"} <= set(fp)
        assert fp["backend"] == any_target.backend
        for precision, model in tiny_models.items():
            t = b.time(model, runs=4, warmup=1)
            assert t.runs == 4 and 0 < t.p10_ms <= t.median_ms <= t.p90_ms
            (y,) = b.run(model, [x])
            ref = _reference(model, x)
            tol = 1e-4 if precision == "f32" else 0.02 * float(np.abs(ref).max())  # one int8 step
            assert y.shape == ref.shape and np.allclose(y, ref, atol=tol), precision
            # eval: the output read as 256 class scores, labels chosen so top-1 is 2/3
            flat = ref.reshape(len(x), -1)
            labels = flat.argmax(1)
            labels[0] = flat[0].argmin()
            ev = b.evaluate(model, x, labels)
            assert ev.logits.shape == flat.shape and np.allclose(ev.logits, flat, atol=tol) and ev.seconds > 0
            assert np.all(flat[np.arange(len(x)), ev.predictions] >= flat.max(1) - tol)  # a top class (ties)
            if precision == "f32":
                assert np.array_equal(ev.predictions[1:], labels[1:]) and ev.top1 == pytest.approx(2 / 3)
    if any_target.backend == "tflm":
        assert backend_for(any_target).ram_bytes(tiny_models["w8a8"]) > 8 * 8 * 4


def test_device_runner_needs_no_torch(device_python):
    p = subprocess.run([device_python, "-c", "import torch"], capture_output=True)
    assert p.returncode != 0
    runner = Path(__file__).parents[1] / "tools" / "edgempq_device.py"
    p = subprocess.run([device_python, str(runner), "info"], capture_output=True, text=True, check=True)
    assert '"runtime": "ai_edge_litert"' in p.stdout


def test_ssh_removes_its_remote_folder(sshd, device_python, tiny_models):
    with backend_for(_ssh_target(sshd, device_python)) as b:
        b.time(tiny_models["f32"], runs=1, warmup=0)
        remote = Path(b._dir)
        assert (remote / "edgempq_device.py").exists()
    assert not remote.exists()


def test_ssh_refuses_an_unknown_host_key(sshd, device_python, tmp_path):
    (tmp_path / "empty_known_hosts").write_text("")
    t = _ssh_target(sshd, device_python, known_hosts=str(tmp_path / "empty_known_hosts"))
    with pytest.raises(DeviceError, match="host key is not known"), backend_for(t) as b:
        b.check()


def test_ssh_quotes_every_remote_argument(sshd, device_python, tmp_path):
    # A Python path full of shell syntax must arrive as one word, not run `touch`.
    odd = tmp_path / "dev python; touch PWNED 'q' $(id)"
    odd.mkdir()
    wrapper = odd / "py thon"
    wrapper.write_text(f'#!/bin/sh\nexec "{device_python}" "$@"\n')
    wrapper.chmod(0o755)
    with backend_for(_ssh_target(sshd, str(wrapper))) as b:
        assert b.check()["runtime"] == "ai_edge_litert"
    home = Path(pwd.getpwuid(os.getuid()).pw_dir)  # where the remote shell starts
    assert not list(home.glob("PWNED")) and not list(tmp_path.glob("PWNED"))


def test_unreachable_ssh_device_is_a_clear_error(sshd, device_python):
    t = _ssh_target(sshd, device_python, port=1, timeout_s=10)
    with pytest.raises(DeviceError, match="unreachable"), backend_for(t) as b:
        b.check()


def test_device_without_tflite_runtime_is_a_clear_error(sshd, tmp_path):
    import sys

    venv = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    with pytest.raises(DeviceError, match="No module named 'numpy'"), \
            backend_for(_ssh_target(sshd, str(venv / "bin" / "python"))) as b:
        b.check()


def test_adb_reports_a_missing_phone(fake_adb):
    with pytest.raises(DeviceError, match="not connected"), \
            backend_for(replace(fake_adb, connection={**fake_adb.connection, "serial": "NOPE"})) as b:
        b.check()


def test_real_adb_client_reports_no_phone(monkeypatch):
    need("adb")
    from .devices import _free_port

    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", str(_free_port()))  # a private adb server, not the user's
    t = replace(load_target("android-adb"), template=False, connection={"serial": "edgempq-absent", "timeout_s": 30})
    try:
        with pytest.raises(DeviceError, match="not connected"), backend_for(t) as b:
            b.check()
    finally:
        subprocess.run(["adb", "kill-server"], capture_output=True)


def test_benchmark_model_output_is_parsed():
    from edgempq.backends.adb import parse_benchmark_model

    text = ("count=50 first=812 curr=790 min=770 max=900 avg=800.5 std=20\n"
            "Inference timings in us: Init: 3000, First inference: 900, Warmup (avg): 850, Inference (avg): 800.5")
    t = parse_benchmark_model(text, 50, "phone")
    assert t.median_ms == pytest.approx(0.8005) and t.p90_ms == pytest.approx(0.8005 + 0.0256)
    with pytest.raises(DeviceError, match="no timing"):
        parse_benchmark_model("ERROR: could not open graph", 50, "phone")


def test_ssh_key_and_known_hosts_paths_reach_ssh_as_written(sshd, device_python, tmp_path):
    """ssh %-expands IdentityFile and UserKnownHostsFile and unescapes quotes and backslashes in
    option values: files whose names hold all three are still the ones it reads."""
    import shutil

    odd = tmp_path / 'dir %h "q" %%'
    odd.mkdir()
    key, known = odd / "key %r\\", odd / 'known "hosts" %d\\'
    shutil.copyfile(sshd.root / "clientkey", key)
    key.chmod(0o600)
    shutil.copyfile(sshd.root / "known_hosts", known)
    with backend_for(_ssh_target(sshd, device_python, key=str(key), known_hosts=str(known))) as b:
        assert b.check()["runtime"] == "ai_edge_litert"
    known.write_text("")  # the very file is read: emptied, the host is unknown
    with pytest.raises(DeviceError, match="host key is not known"), \
            backend_for(_ssh_target(sshd, device_python, key=str(key), known_hosts=str(known))) as b:
        b.check()


def test_adb_benchmark_model_failing_is_an_error_not_a_timing(fake_adb, tmp_path, tiny_models):
    tool = tmp_path / "benchmark_model"
    tool.write_text("#!/bin/sh\necho 'ERROR: graph 0.005 could not be read: Inference (avg): 5' >&2\nexit 1\n")
    tool.chmod(0o755)
    t = replace(fake_adb, connection={**fake_adb.connection, "benchmark_model": str(tool)})
    with pytest.raises(DeviceError, match="failed on the phone \\(exit 1"), backend_for(t) as b:
        b.time(tiny_models["f32"], runs=2, warmup=0)
