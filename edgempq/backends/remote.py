"""What the ssh and adb backends share: a private folder on the device holding the device
runner, models and inputs copied in, the runner called with quoted arguments, results copied
back, and the folder removed at the end."""

from __future__ import annotations

import contextlib
import shlex
import subprocess
import tempfile
from abc import abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DeviceError
from ..resources import data_dir
from ..schema import Timing
from ..schema.device import SAFE_PATH
from .base import Backend, Evaluation, parse_result, timing_of


class RemoteBackend(Backend):
    """A device reached by a command-line client (ssh, adb)."""

    def __init__(self, target: Any) -> None:
        super().__init__(target)
        conn = target.connection
        self.python = str(conn.get("python", "python3"))
        self.timeout = float(conn.get("timeout_s", 120))
        self._dir: str | None = None
        self._local_dir: tempfile.TemporaryDirectory | None = None

    @property
    def _local(self) -> tempfile.TemporaryDirectory:
        if self._local_dir is None:
            self._local_dir = tempfile.TemporaryDirectory(prefix="edgempq-remote-")
        return self._local_dir

    @abstractmethod
    def _exec(self, args: list[str]) -> subprocess.CompletedProcess:
        """Run one command on the device; `args` are quoted into a single command line."""

    @abstractmethod
    def _put(self, local: Path, remote: str) -> None: ...

    @abstractmethod
    def _get(self, remote: str, local: Path) -> None: ...

    @abstractmethod
    def _make_dir(self) -> str:
        """Create a private folder on the device and return its path."""

    def _call(self, argv: list[str], timeout: float | None = None) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=timeout or self.timeout,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise DeviceError(f"target {self.target.name} did not answer within {timeout or self.timeout:.0f} s; "
                              "check the device or raise timeout_s in its [connection]") from None
        except FileNotFoundError:
            raise DeviceError(f"the command {argv[0]!r} is not installed here; install it to reach "
                              f"target {self.target.name}") from None

    def _session(self) -> str:
        if self._dir is None:
            d = self._make_dir().strip()
            if not SAFE_PATH.match(d):  # under remote_dir, which the target check holds to it
                raise DeviceError(f"target {self.target.name}: unexpected temporary folder {d!r} on the device")
            self._dir = d
            self._put(data_dir("tools") / "edgempq_device.py", f"{d}/edgempq_device.py")
        return self._dir

    def _device(self, mode: str, *args: str) -> dict[str, Any]:
        d = self._session()
        # the runner ends itself at the deadline: when this side gives up on a hung device and kills
        # its ssh/adb client, nothing is left running (and busy) on the device
        p = self._exec([self.python, f"{d}/edgempq_device.py", mode, *args, "--threads", str(self.target.threads),
                        "--deadline", f"{self.timeout:g}"])
        if p.returncode in (142, -14):  # SIGALRM: the runner's own deadline
            raise DeviceError(f"target {self.target.name}: the device runner ran past its deadline of "
                              f"{self.timeout:g} s and stopped; raise timeout_s in its [connection]")
        if p.returncode not in (0, 2) or (p.returncode == 2 and not p.stdout.strip()):
            err = (p.stderr or p.stdout).strip().splitlines()
            raise DeviceError(f"target {self.target.name}: the device runner failed with status {p.returncode} "
                              f"({err[-1] if err else 'no message'}); check that `{self.python}` has numpy "
                              "and a TFLite runtime")
        return parse_result(p.stdout, f"target {self.target.name}")

    def _upload_model(self, model: bytes) -> str:
        local = Path(self._local.name) / "model.tflite"
        local.write_bytes(model)
        remote = f"{self._session()}/model.tflite"
        self._put(local, remote)
        return remote

    def check(self) -> dict[str, Any]:
        """The device's fingerprint, as the device runner reports it there."""
        return {**self._device("info"), "backend": self.target.backend}

    def time(self, model: bytes, runs: int | None = None, warmup: int | None = None) -> Timing:
        """Latency of `model` on the device, timed there by the device runner."""
        runs, warmup = self._runs(runs, warmup)
        remote = self._upload_model(model)
        return timing_of(self._device("time", remote, "--warmup", str(warmup), "--runs", str(runs),
                                      "--max-seconds", str(self.target.max_seconds)))

    def run(self, model: bytes, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Outputs of `model` on the device: the inputs go over as .npz, the outputs come back."""
        remote = self._upload_model(model)
        local_in, local_out = Path(self._local.name) / "inputs.npz", Path(self._local.name) / "outputs.npz"
        np.savez(local_in, **{f"input_{i}": x for i, x in enumerate(inputs)})
        d = self._session()
        self._put(local_in, f"{d}/inputs.npz")
        self._device("run", remote, f"{d}/inputs.npz", f"{d}/outputs.npz")
        self._get(f"{d}/outputs.npz", local_out)
        with np.load(local_out, allow_pickle=False) as f:
            return [f[f"output_{i}"] for i in range(len(f.files))]

    def evaluate(self, model: bytes, x: np.ndarray, y: np.ndarray) -> Evaluation:
        """The device runner's eval mode: samples and labels go over, logits come back."""
        remote = self._upload_model(model)
        local_in, local_out = Path(self._local.name) / "data.npz", Path(self._local.name) / "logits.npz"
        np.savez(local_in, x=x, y=y)
        d = self._session()
        self._put(local_in, f"{d}/data.npz")
        result = self._device("eval", remote, f"{d}/data.npz", "--logits", f"{d}/logits.npz")
        self._get(f"{d}/logits.npz", local_out)
        with np.load(local_out, allow_pickle=False) as f:
            logits = f["logits"]
        if logits.shape[0] != len(y):
            raise DeviceError(f"target {self.target.name}: the device returned {logits.shape[0]} outputs for "
                              f"{len(y)} samples")
        return Evaluation.of(logits, y, float(result["seconds"]))

    def close(self) -> None:
        """Remove the session's folder on the device and the local temporary folder."""
        if self._dir is not None:
            with contextlib.suppress(DeviceError):  # a device that went away keeps its folder
                self._exec(["rm", "-rf", "--", self._dir])
            self._dir = None
        if self._local_dir is not None:
            self._local_dir.cleanup()
            self._local_dir = None


def quoted(args: list[str]) -> str:
    """One shell command line in which every argument stays a single literal word."""
    return shlex.join(args)
