"""An ARM board in the tests: Debian's arm64 Python under qemu-user with the aarch64 wheels of
ai-edge-litert (tools/arm64_board.sh), reached through the real ssh backend on a loopback sshd.
An artifact runs there on XNNPACK's aarch64 kernels and must give this machine's answers;
validate runs there as on a Raspberry Pi, with its time said to be the emulator's, and profile
refuses it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .arm64 import board_python, board_target, compare, deployed


@pytest.fixture(scope="module")
def board(sshd, tmp_path_factory, digits_cnn):
    """The emulated board as a target file, and the artifacts deployed for it."""
    python = board_python()
    folder = tmp_path_factory.mktemp("arm64")
    target_file = folder / "arm64-board.toml"
    target_file.write_text(board_target(sshd, python).to_toml())
    return {"file": target_file, "folder": folder, "built": deployed(folder, str(target_file), model=digits_cnn)}


@pytest.mark.slow
def test_every_precision_gives_this_machines_answers_on_the_arm64_board(board):
    from edgempq.backends import backend_for
    from edgempq.targets import load_target

    target = load_target(str(board["file"]))
    with backend_for(target) as b:
        info = b.check()
    assert info["machine"] == "aarch64" and info["runtime"] == "ai_edge_litert", info
    for name, folder in board["built"].items():
        r = compare((folder / "model.tflite").read_bytes(), target, load_target("host"))
        print(f"{name}: {json.dumps(r)}")  # the numbers, with -s
        assert r["samples"] > 300
        assert r["agreement"] >= 0.999, (name, r)
        assert r["max_logit_diff"] <= 0.05 * r["logit_span"], (name, r)
        assert r["top1_arm"] > 0.8, (name, r)


@pytest.mark.slow
def test_validate_runs_on_the_emulated_board_and_profile_refuses_it(board, tmp_path):
    env = {**os.environ}
    mixed, target = board["built"]["mixed"], str(board["file"])
    out = tmp_path / "val"
    p = subprocess.run([sys.executable, "-m", "edgempq", "validate", str(mixed), "--device", target, "-o", str(out)],
                       capture_output=True, text=True, env=env, timeout=3600)
    assert p.returncode == 0, p.stderr
    assert "under emulation: the emulator's time, not the board's" in p.stdout
    v = json.loads((out / "validation.json").read_text())
    assert v["device"]["machine"] == "aarch64" and v["device"]["backend"] == "ssh"
    assert v["latency"]["emulated"] is True and v["latency"].get("predicted_ms") is None
    assert v["agreement"]["top1"] >= 0.99
    assert "milliseconds are the emulator's" in (out / "report.md").read_text()
    p = subprocess.run([sys.executable, "-m", "edgempq", "profile", "--model", "zoo:mnist_cnn?input_size=8",
                        "--device", target, "-o", str(tmp_path / "p.json")], capture_output=True, text=True,
                       env=env, timeout=3600)
    assert p.returncode == 1 and "Traceback" not in p.stderr and not (tmp_path / "p.json").exists()
    assert "is emulated (emulated = true): its times are the emulator's" in p.stderr
