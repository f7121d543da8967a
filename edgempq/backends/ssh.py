"""A Linux device over SSH with the system ssh/scp. Host-key checking stays on; keys are passed
by path and never logged; every remote argument is shell-quoted."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from ..errors import DeviceError
from .base import backend
from .remote import RemoteBackend, quoted


def ssh_path(path: object) -> str:
    """A file path as one ssh option value that names exactly that file: double-quoted, with its
    backslashes and quotes escaped (ssh's option parser unescapes them) and its % doubled (ssh
    expands %-tokens in IdentityFile and UserKnownHostsFile)."""
    text = os.path.expanduser(str(path)).replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'"{text}"'


@backend("ssh")
class SSHBackend(RemoteBackend):
    """A Linux device reached with the system ssh and scp, batch mode, host key checked."""

    connection_keys = frozenset({"host", "user", "port", "key", "known_hosts", "python", "timeout_s"})

    def __init__(self, target: Any) -> None:
        super().__init__(target)
        conn = target.connection
        if not conn.get("host"):
            raise DeviceError(f"target {target.name} has no host in [connection]; set the device's address")
        self.host, self.port = str(conn["host"]), int(conn.get("port", 22))
        if conn.get("key") and not os.path.isfile(os.path.expanduser(str(conn["key"]))):
            raise DeviceError(f"target {target.name}: the key file named in [connection] does not exist; "
                              "check key (the path of the private key)")
        self.dest = f"{conn['user']}@{self.host}" if conn.get("user") else self.host

    def _opts(self) -> list[str]:
        conn = self.target.connection
        o = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
             "-o", f"ConnectTimeout={max(1, int(min(self.timeout, 30)))}", "-o", "LogLevel=ERROR"]
        if conn.get("key"):  # not -i, whose path ssh checks as written but then %-expands
            o += ["-o", f"IdentityFile={ssh_path(conn['key'])}", "-o", "IdentitiesOnly=yes"]
        if conn.get("known_hosts"):
            o += ["-o", f"UserKnownHostsFile={ssh_path(conn['known_hosts'])}"]
        return o

    def _checked(self, p: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
        if p.returncode != 255:
            return p
        err = p.stderr.strip()
        where = f"target {self.target.name} ({self.dest}, port {self.port})"
        if "Host key verification failed" in err or "host key" in err.lower():
            raise DeviceError(f"{where}: its host key is not known (or changed); connect once with "
                              f"`ssh -p {self.port} {self.dest}` and accept the key, or set known_hosts")
        if "Load key" in err:
            raise DeviceError(f"{where}: the key file is not a private key ssh can read; check key in [connection]")
        if "Permission denied" in err:
            raise DeviceError(f"{where}: the key was refused; check user and key in [connection]")
        raise DeviceError(f"{where} is unreachable ({err.splitlines()[-1] if err else 'no answer'})")

    def _exec(self, args: list[str]) -> subprocess.CompletedProcess:
        # `dest` is validated as a host name (never an option); the command is one quoted string.
        return self._checked(self._call(["ssh", *self._opts(), "-p", str(self.port), "--", self.dest, quoted(args)]))

    def _scp(self, src: str, dst: str) -> None:
        p = self._checked(self._call(["scp", "-q", *self._opts(), "-P", str(self.port), "--", src, dst]))
        if p.returncode != 0:
            raise DeviceError(f"target {self.target.name}: copying {src} to {dst} failed ({p.stderr.strip()})")

    def _put(self, local: Path, remote: str) -> None:
        self._scp(str(local), f"{self.dest}:{remote}")

    def _get(self, remote: str, local: Path) -> None:
        self._scp(f"{self.dest}:{remote}", str(local))

    def _make_dir(self) -> str:
        p = self._exec(["mktemp", "-d", "/tmp/edgempq.XXXXXXXX"])
        if p.returncode != 0:
            raise DeviceError(f"target {self.target.name}: cannot create a temporary folder ({p.stderr.strip()})")
        return p.stdout
