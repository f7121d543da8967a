"""Real device stand-ins for the backend tests: an sshd on 127.0.0.1 with fresh keys, and a
device-side Python venv with numpy and ai-edge-litert but no torch."""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

LITERT_PIN = "ai-edge-litert==2.3.0"


def need(program: str) -> str:
    """Path of `program`; skip the test when it is missing, except under CI where it must exist."""
    path = shutil.which(program) or (f"/usr/sbin/{program}" if os.path.exists(f"/usr/sbin/{program}") else None)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{program} is not installed; .ci/run must install it")
        pytest.skip(f"{program} is not installed (apt-get install openssh-server adb qemu-user-static)")
    return path


def device_venv() -> Path:
    """A venv with only numpy and ai-edge-litert, built once per machine and reused."""
    tag = f"{LITERT_PIN.split('==')[1]}-py{sys.version_info[0]}{sys.version_info[1]}"
    root = Path(tempfile.gettempdir()) / f"edgempq-devvenv-{tag}"
    py = root / "bin" / "python"
    if not (root / ".ready").exists():
        shutil.rmtree(root, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
        p = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", "numpy",
                            LITERT_PIN], capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"building the device venv failed: {p.stderr[-2000:]}")
        (root / ".ready").write_text("ok")
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SSHServer:
    def __init__(self, root: Path) -> None:
        self.root, self.port = root, _free_port()
        keygen = need("ssh-keygen")
        for name in ("hostkey", "clientkey"):
            subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(root / name)], check=True)
        (root / "authorized_keys").write_text((root / "clientkey.pub").read_text())
        os.chmod(root / "authorized_keys", 0o600)
        host_pub = (root / "hostkey.pub").read_text().split()[:2]
        (root / "known_hosts").write_text(f"[127.0.0.1]:{self.port} {' '.join(host_pub)}\n")
        (root / "sshd_config").write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {root / 'hostkey'}",
            f"AuthorizedKeysFile {root / 'authorized_keys'}", "PubkeyAuthentication yes",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PermitRootLogin prohibit-password",
            "StrictModes no", "UsePAM no", f"PidFile {root / 'sshd.pid'}", "Subsystem sftp internal-sftp", ""]))
        with contextlib.suppress(PermissionError):  # not root: sshd serves only this user
            Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege-separation folder
        with open(root / "sshd.log", "w") as log:
            self.proc = subprocess.Popen([need("sshd"), "-D", "-e", "-f", str(root / "sshd_config")],
                                         stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.time() + 1800  # a hang guard: sshd starts in well under a second
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"sshd did not start: {(root / 'sshd.log').read_text()}")

    def connection(self, python: str, **extra: object) -> dict:
        return {"host": "127.0.0.1", "port": self.port, "user": getpass.getuser(),
                "key": str(self.root / "clientkey"), "known_hosts": str(self.root / "known_hosts"),
                "python": python, "timeout_s": 60, **extra}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def ssh_target(server: SSHServer, python: str, **extra: object):
    """The linux-ssh template pointed at the loopback sshd, with few timed runs."""
    from dataclasses import replace

    from edgempq.targets import load_target

    return replace(load_target("linux-ssh"), name="loopback", template=False, runs=5, warmup=1,
                   connection=server.connection(python, **extra))


FAKE_ADB = r'''#!/usr/bin/env python3
"""A stand-in for the adb client (no phone here): serial FAKE-1 is "connected" and its shell is
this machine's /bin/sh, so push / pull / shell go through the backend's real code and quoting."""
import shutil, subprocess, sys
args = sys.argv[1:]
serial = None
if args[:1] == ["-s"]:
    serial, args = args[1], args[2:]
if serial not in (None, "FAKE-1"):
    sys.stderr.write(f"adb: device '{serial}' not found\n"); sys.exit(1)
cmd, rest = args[0], args[1:]
if cmd == "push" or cmd == "pull":
    shutil.copyfile(rest[0], rest[1]); print(f"1 file {cmd}ed"); sys.exit(0)
if cmd == "shell":
    sys.exit(subprocess.run(["/bin/sh", "-c", " ".join(rest)]).returncode)
sys.stderr.write(f"fake adb: unsupported {cmd}\n"); sys.exit(1)
'''
