"""The device runner (tools/edgempq_device.py) on each TFLite runtime a board may carry:
ai-edge-litert 1.4 to 2.3 and tflite-runtime 2.14, each installed alone from PyPI (this
machine's wheels; the runner is the same Python on a board) and run by a Python that sees
nothing else. Every runtime runs an artifact its kernels can; one it cannot (8-bit activations
requantized to 16 bits, which LiteRT prepares from 2.1.3 on) and a runtime that cannot run at
all (tflite-runtime beside numpy 2) end in one sentence naming the runtime and what to do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from .arm64 import deployed, eval_samples
from .devices import LITERT_PIN

RUNNER = Path(__file__).resolve().parent.parent / "tools" / "edgempq_device.py"
# name -> (what pip installs, whether it requantizes int8 to int16)
# (the oldest, the last before int16 requantization, the first with it, the newest: the tests'
# device venv, tests/devices.py; 2.0.x, 2.1.0 and 2.1.1 were checked by hand and fail as 2.1.2 does)
RUNTIMES = {
    "ai_edge_litert 1.4.0": (["ai-edge-litert==1.4.0"], False),
    "ai_edge_litert 2.1.2": (["ai-edge-litert==2.1.2"], False),
    "ai_edge_litert 2.1.3": (["ai-edge-litert==2.1.3"], True),
    f"ai_edge_litert {LITERT_PIN.split('==')[1]}": (None, True),
    "tflite_runtime 2.14.0": (["tflite-runtime==2.14.0", "numpy<2"], False),
}


def _installed(packages: list[str]) -> Path:
    """A folder holding only `packages` and what they need, built once per machine."""
    root = Path(tempfile.gettempdir()) / "edgempq-runtimes" / "_".join(packages).replace("<", "lt").replace("=", "")
    if not (root / ".ready").exists():
        p = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                            "--no-warn-conflicts", "--only-binary=:all:", "--target", str(root), *packages],
                           capture_output=True, text=True, env={**os.environ, "PIP_ROOT_USER_ACTION": "ignore"})
        if p.returncode != 0:
            raise RuntimeError(f"installing {packages} failed: {p.stderr[-2000:]}")
        (root / ".ready").write_text("ok")
    return root


def _runner(where: Path | str | None, *args: str) -> dict:
    """The runner's JSON answer: run by this Python without its site-packages (-S) on what the
    folder `where` holds, by the Python `where` names (a str), or by this Python as it is (None:
    the LiteRT edgempq itself uses)."""
    if isinstance(where, Path):
        cmd, env = [sys.executable, "-S"], {**os.environ, "PYTHONPATH": str(where)}
    else:
        cmd, env = [where or sys.executable], None
    p = subprocess.run([*cmd, str(RUNNER), *args], capture_output=True, text=True, env=env, timeout=1800)
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    answer = json.loads(p.stdout.strip().splitlines()[-1])
    assert (p.returncode == 2) == ("error" in answer), (p.returncode, answer)
    return answer


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, digits_cnn):
    """A mixed artifact any runtime prepares (int8, int4 and float16 weights), one that
    requantizes 8-bit activations to 16 bits, and the test samples as the runner's eval reads
    them. (Before 2.1.3 any w*a16 layer fails but one fed straight by a float op: the input
    is int8, and the converter puts a float layer's output back on int8 before a PAD.)"""
    from edgempq.schema import Policy, Precision

    def deal(widths: tuple[str, ...]):  # the widths round the searched layers
        return lambda layers: Policy({la.name: Precision.parse(widths[i % len(widths)])
                                      for i, la in enumerate(la for la in layers if la.searchable)})

    folder = tmp_path_factory.mktemp("runtimes")
    built = deployed(folder, "host", {"plain": deal(("w8a8", "w4a8", "f16")),
                                      "requant": deal(("w8a8", "w8a16"))}, model=digits_cnn)
    tflite = (built["plain"] / "model.tflite").read_bytes()
    x, y = eval_samples(tflite)
    np.savez(folder / "data.npz", x=x, y=y)
    out = {name: built[name] / "model.tflite" for name in built} | {"data": folder / "data.npz"}
    return out | {"reference": _runner(None, "eval", str(out["plain"]), str(out["data"]))}


@pytest.mark.slow
@pytest.mark.parametrize("runtime", sorted(RUNTIMES))
def test_the_runner_works_on_every_runtime_or_says_what_it_lacks(runtime, artifacts, device_venv_python):
    packages, requantizes = RUNTIMES[runtime]
    folder = _installed(packages) if packages else device_venv_python
    info = _runner(folder, "info")
    assert f"{info['runtime']} {info['runtime_version']}" == runtime
    reference = artifacts["reference"]
    plain = _runner(folder, "eval", str(artifacts["plain"]), str(artifacts["data"]))
    assert plain["top1"] == reference["top1"] > 0.9 and plain["predictions"] == reference["predictions"]
    timed = _runner(folder, "time", str(artifacts["plain"]), "--runs", "3", "--warmup", "1")
    assert timed["runs"] == 3 and timed["median_ms"] > 0
    requant = _runner(folder, "eval", str(artifacts["requant"]), str(artifacts["data"]))
    if requantizes:
        assert requant["top1"] > 0.9
    else:
        assert requant["error"].startswith(f"{runtime} cannot load the model (")
        assert "ai-edge-litert 2.1.3 or newer can: upgrade it on the device" in requant["error"]


@pytest.mark.slow
def test_tflite_runtime_beside_numpy_2_is_one_sentence(artifacts):
    folder = _installed(["tflite-runtime==2.14.0", "numpy>=2"])
    answer = _runner(folder, "eval", str(artifacts["plain"]), str(artifacts["data"]))
    assert answer["error"].startswith("tflite_runtime 2.14.0 is built for numpy 1 and cannot run beside numpy 2.")
    assert "install numpy<2 for this Python" in answer["error"]


def test_which_runtimes_cannot_run_16_bit_activations():
    from edgempq.backends.base import runtime_problem
    from edgempq.targets import load_target

    host = load_target("host")  # offers w8a16 and w4a16
    for runtime, version in (("ai_edge_litert", "1.4.0"), ("ai_edge_litert", "2.1.2"), ("tflite_runtime", "2.14.0")):
        problem = runtime_problem(host, {"runtime": runtime, "runtime_version": version})
        assert problem.startswith(f"target host: the device's {runtime} {version} cannot requantize")
        assert "remove w4a16, w8a16 from a copy of the target's [precisions]" in problem
    for version in ("2.1.3", "2.3.0", "2.4.0.dev20261026", "unknown"):
        assert runtime_problem(host, {"runtime": "ai_edge_litert", "runtime_version": version}) is None
    assert runtime_problem(load_target("tflm-host"), {"runtime": "tflite_micro", "runtime_version": "x"}) is None


@pytest.mark.slow
def test_profile_refuses_a_board_whose_runtime_cannot_load_16_bit_layers(sshd, tmp_path):
    """A board over ssh whose Python has ai-edge-litert 1.4.0: its single-layer w8a16 models
    would time well, and every artifact with one would fail there."""
    from .devices import ssh_target

    python = tmp_path / "board python"
    python.write_text(f"#!/bin/sh\nPYTHONPATH='{_installed(RUNTIMES['ai_edge_litert 1.4.0'][0])}' "
                      f"exec '{sys.executable}' -S \"$@\"\n")
    python.chmod(0o755)
    target = tmp_path / "old.toml"
    target.write_text(ssh_target(sshd, str(python)).to_toml())
    p = subprocess.run([sys.executable, "-m", "edgempq", "profile", "--model", "zoo:mnist_cnn?input_size=8",
                        "--device", str(target), "--no-check", "-o", str(tmp_path / "p.json")],
                       capture_output=True, text=True, timeout=1800,
                       env={**os.environ, "EDGEMPQ_CACHE": str(tmp_path / "cache")})
    assert p.returncode == 1 and "Traceback" not in p.stderr and not (tmp_path / "p.json").exists()
    assert "error: target loopback: the device's ai_edge_litert 1.4.0 cannot requantize 8-bit values" in p.stderr
