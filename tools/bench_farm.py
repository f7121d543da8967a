"""Part 11 of the benchmarks: a cold profile on one board against the same model spread over two
identical boards (`edgempq profile --device a --device b --spread`).

    .venv/bin/python tools/bench_farm.py [--quick]   (or tools/bench_all.py --part farm)

The boards are two real sshd on 127.0.0.1 in front of this machine, reached through the ssh
backend with a device-side venv (numpy and ai-edge-litert, no torch), as tests/test_farm.py does.
Each run starts from an empty cache (cold); one board and two alternate (1, 2, 1, 2, ...), medians
of the wall time of the command as a subprocess. On this machine both boards, the host-side model
building and the ssh sessions share the same 2 cores: a real farm times on its own boards while
the host builds, so the speed-up here is a floor. Results: bench_results/all/farm.json.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import benchkit  # noqa: E402
from benchkit import RESULTS, log  # noqa: E402

MODEL = "zoo:mnist_cnn"
PROBES = 4
REPEATS = 2


def _boards(work: Path) -> tuple[list, list[Path]]:
    from tests.devices import SSHServer, device_venv, ssh_target

    python = str(device_venv() / "bin" / "python")
    servers, files = [], []
    for name in ("board-a", "board-b"):
        (work / name).mkdir()
        server = SSHServer(work / name)
        servers.append(server)
        path = work / f"{name}.toml"
        path.write_text(replace(ssh_target(server, python), name=name, threads=1, runs=10, warmup=2).to_toml())
        files.append(path)
    return servers, files


def _cold(files: list[Path], work: Path, i: int, probes: int) -> dict:
    cache = work / f"cache-{len(files)}-{i}"
    args = [sys.executable, "-m", "edgempq", "profile", "--model", MODEL, "--probes", str(probes), "--no-check"]
    for f in files:
        args += ["--device", str(f)]
    if len(files) > 1:
        args.append("--spread")
    args += ["-o", str(work / f"p-{len(files)}-{i}.json")]
    t = time.perf_counter()
    p = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "EDGEMPQ_CACHE": str(cache)},
                       cwd=work, timeout=7200)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(p.stderr[-2000:])
    took = [ln for ln in p.stdout.splitlines() if "took" in ln]
    return {"wall_s": wall, "load": os.getloadavg()[0], "took": took[0] if took else ""}


def run(quick: bool = False, folder: Path = RESULTS) -> dict:
    """Cold profiles on one board and spread over two, interleaved; saved as farm.json."""
    repeats, probes = (1, 0) if quick else (REPEATS, PROBES)
    out = {"part": "farm", "quick": quick, "machine": benchkit.machine(), "model": MODEL, "probes": probes,
           "repeats": repeats, "one": [], "two": []}
    with tempfile.TemporaryDirectory(prefix="bench_farm-") as tmp:
        work = Path(tmp)
        servers, files = _boards(work)
        try:
            for i in range(repeats):
                for key, boards in (("one", files[:1]), ("two", files)):
                    log(f"cold profile on {len(boards)} board(s), run {i + 1}")
                    out[key].append(_cold(boards, work, i, probes))
                    benchkit.save("farm", out, folder)
        finally:
            for s in servers:
                s.stop()
    return out


def section(result: dict, table: Callable) -> str:
    """BENCHMARKS.md's part 11: a cold profile on one board and spread over two."""
    one = statistics.median(r["wall_s"] for r in result["one"])
    two = statistics.median(r["wall_s"] for r in result["two"])
    rows = [["one board", f"{one:.0f} s", ", ".join(f"{r['wall_s']:.0f}" for r in result["one"]), "1.00×"],
            ["two boards, `--spread`", f"{two:.0f} s", ", ".join(f"{r['wall_s']:.0f}" for r in result["two"]),
             f"{one / two:.2f}×"]]
    took = next((r["took"] for r in result["two"] if r["took"]), "")
    return "\n".join([
        "## 11. A farm of boards",
        "",
        f"A cold profile of `{result['model']}` (the linux-ssh template's precisions, {result['probes']} probes), "
        f"on one loopback ssh board and spread over two identical ones, {result['repeats']} run(s) each, "
        "alternating, each from an empty cache (`tools/bench_farm.py`).",
        "",
        table(["boards", "median wall time", "runs (s)", "speed-up"], rows),
        "",
        f"How the two boards shared the work: {took}",
        "",
        "Both loopback boards are this machine: they, the host-side building of the single-layer models (each "
        "board's worker builds its own share) and the ssh sessions share its 2 cores, so the two boards time "
        "while the other one builds. On real boards the timing runs on the boards and only the building "
        "shares the host, so the speed-up here is a floor; the preflight and the assembly are not split.",
    ])


def main() -> None:
    benchkit.cli(__doc__, run, "one run each, no probes")

if __name__ == "__main__":
    main()
