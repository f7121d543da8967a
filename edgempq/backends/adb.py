"""An Android device over adb: files pushed to a private folder under remote_dir, the device
runner (or TFLite's benchmark_model) started through `adb shell` with quoted arguments."""

from __future__ import annotations

import re
import secrets
import subprocess
from pathlib import Path
from typing import Any

from ..errors import DeviceError
from ..schema import Timing
from .base import backend
from .remote import RemoteBackend, quoted

_NUM = r"(\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)"
_AVG = re.compile(r"Inference \(avg\):\s*" + _NUM)
_STD = re.compile(r"count=\d+.*?avg=" + _NUM + r"\s+std=" + _NUM)


@backend("adb")
class ADBBackend(RemoteBackend):
    """An Android device reached with adb (one `serial`, or the only device attached)."""

    connection_keys = frozenset({"serial", "python", "remote_dir", "benchmark_model", "timeout_s"})

    def __init__(self, target: Any) -> None:
        super().__init__(target)
        conn = target.connection
        self.serial = str(conn["serial"]) if conn.get("serial") else None
        self.remote_dir = str(conn.get("remote_dir", "/data/local/tmp")).rstrip("/")
        self.benchmark_model = conn.get("benchmark_model")

    def _adb(self, *args: str) -> subprocess.CompletedProcess:
        base = ["adb", *(["-s", self.serial] if self.serial else [])]
        p = self._call([*base, *args])
        err = (p.stderr or "").strip()
        if p.returncode != 0 and ("not found" in err and "device" in err or "no devices" in err or "offline" in err):
            raise DeviceError(f"target {self.target.name}: device {self.serial or '(any)'} is not connected "
                              "(see `adb devices`); plug it in with USB debugging on")
        return p

    def _exec(self, args: list[str]) -> subprocess.CompletedProcess:
        return self._adb("shell", quoted(args))

    def _put(self, local: Path, remote: str) -> None:
        p = self._adb("push", str(local), remote)
        if p.returncode != 0:
            raise DeviceError(f"target {self.target.name}: adb push to {remote} failed ({p.stderr.strip()})")

    def _get(self, remote: str, local: Path) -> None:
        p = self._adb("pull", remote, str(local))
        if p.returncode != 0:
            raise DeviceError(f"target {self.target.name}: adb pull of {remote} failed ({p.stderr.strip()})")

    def _make_dir(self) -> str:
        d = f"{self.remote_dir}/edgempq.{secrets.token_hex(4)}"
        p = self._exec(["mkdir", "-p", d])
        if p.returncode != 0:
            raise DeviceError(f"target {self.target.name}: cannot create {d} ({p.stderr.strip() or p.stdout.strip()})")
        return d

    def time(self, model: bytes, runs: int | None = None, warmup: int | None = None) -> Timing:
        """Latency of `model` on the phone: TFLite's benchmark_model when the target names one,
        else the device runner."""
        if not self.benchmark_model:
            return super().time(model, runs, warmup)
        runs, warmup = self._runs(runs, warmup)
        remote = self._upload_model(model)
        # `timeout` (toybox, on every Android since 6) ends it on the phone if adb gives up first
        p = self._exec(["timeout", str(max(1, int(self.timeout))), str(self.benchmark_model),
                        f"--graph={remote}", f"--num_threads={self.target.threads}",
                        f"--num_runs={runs}", f"--warmup_runs={warmup}", "--min_secs=0"])
        if p.returncode != 0:  # its error text may hold numbers that read as a timing
            tail = (p.stderr.strip() or p.stdout.strip())[-300:]
            raise DeviceError(f"target {self.target.name}: {self.benchmark_model} failed on the phone "
                              f"(exit {p.returncode}: {tail!r}); check benchmark_model in [connection]")
        return parse_benchmark_model(p.stdout + p.stderr, runs, self.target.name)


def parse_benchmark_model(text: str, runs: int, name: str) -> Timing:
    """benchmark_model reports the mean and standard deviation in microseconds, not quantiles:
    the median is taken as the mean and p10/p90 as mean -/+ 1.28 std (normal approximation)."""
    m = _STD.findall(text)
    if m:
        avg, std = (float(v) / 1e3 for v in m[-1])
    elif a := _AVG.search(text):
        avg, std = float(a.group(1)) / 1e3, 0.0
    else:
        raise DeviceError(f"target {name}: benchmark_model printed no timing ({text.strip()[-200:]!r})")
    return Timing(avg, max(0.0, avg - 1.28 * std), avg + 1.28 * std, runs)
