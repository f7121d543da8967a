"""Part 12 of the benchmarks: artifacts' answers on an emulated arm64 board against host's.

Per precision, against this machine's answers, and what the board costs.

    .venv/bin/python tools/bench_arm64.py [--quick]   (or tools/bench_all.py --part arm64)

The board is tools/arm64_board.sh's (Debian's arm64 Python under qemu-user-static, ai-edge-litert's
aarch64 wheel), reached through the ssh backend on a loopback sshd, as tests/test_arm64.py does.
MNIST-style 8x8 digits on `zoo:mnist_cnn?input_size=8`, deployed at each precision alone and at a
mix of the four; each artifact evaluated on the test split there and here (`host`). Emulated
cores: a Raspberry Pi 5's (cortex-a76, dot-product instructions), a Pi 4's (cortex-a72, without),
and qemu's default "max" core, which the board does not use (why is in the table). The board's
times are the emulator's: only its build time and the wall time of the comparisons are costs.
Results: bench_results/all/arm64.json.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import benchkit  # noqa: E402
from benchkit import RESULTS, log  # noqa: E402

CPUS = ("cortex-a76", "cortex-a72", "max")


def _board(folder: Path, cpu: str) -> tuple[str, float]:
    """A board emulating `cpu`, built cold into `folder`: its Python and the build's wall time."""
    from tests.arm64 import SCRIPT

    t = time.perf_counter()
    p = subprocess.run(["bash", str(SCRIPT), str(folder)], capture_output=True, text=True, timeout=3600,
                       env={**os.environ, "ARM64_CPU": cpu})
    if p.returncode != 0:
        raise RuntimeError(p.stderr[-2000:])
    return p.stdout.strip().splitlines()[-1], time.perf_counter() - t


def run(quick: bool = False, folder: Path = RESULTS) -> dict:
    """Every precision's artifact compared on each emulated core; saved as arm64.json."""
    from edgempq.targets import load_target
    from tests.arm64 import board_target, compare, deployed
    from tests.devices import SSHServer

    cpus = CPUS[:1] if quick else CPUS
    out = {"part": "arm64", "quick": quick, "machine": benchkit.machine(), "rows": [], "builds": {}}
    with tempfile.TemporaryDirectory(prefix="bench_arm64-") as tmp:
        work = Path(tmp)
        server = SSHServer(work)
        try:
            boards = {}
            for cpu in cpus:
                log(f"building the board ({cpu})")
                python, seconds = _board(work / f"board-{cpu}", cpu)
                boards[cpu] = python
                out["builds"][cpu] = seconds
            first = work / "arm64-board.toml"
            first.write_text(board_target(server, boards[cpus[0]]).to_toml())
            log("training and deploying")
            built = deployed(work, str(first))
            for cpu, python in boards.items():
                target = board_target(server, python, name=f"arm64-{cpu}")
                for name, art in built.items():
                    log(f"{name} on {cpu}")
                    t = time.perf_counter()
                    r = compare((art / "model.tflite").read_bytes(), target, load_target("host"))
                    out["rows"].append({"cpu": cpu, "policy": name, **r, "wall_s": time.perf_counter() - t})
                    benchkit.save("arm64", out, folder)
        finally:
            server.stop()
    return out


def section(result: dict, table: Callable) -> str:
    """BENCHMARKS.md's part 12: the answers of an emulated arm64 board against this machine's."""
    rows = [[r["cpu"], r["policy"], f"{100 * r['agreement']:.2f} %", f"{r['max_logit_diff']:.3g}",
             f"{r['logit_span']:.3g}", f"{100 * r['differing_logits']:.1f} %", f"{100 * r['top1_arm']:.1f} %",
             f"{100 * r['top1_x86']:.1f} %", f"{r['wall_s']:.1f} s"] for r in result["rows"]]
    builds = ", ".join(f"{cpu} {s:.0f} s" for cpu, s in result["builds"].items())
    return "\n".join([
        "## 12. An arm64 board, emulated",
        "",
        "Each artifact of `zoo:mnist_cnn?input_size=8` trained on the 8x8 digits, at each precision alone and at a "
        "mix of the four, evaluated on the test split on an emulated arm64 board (Debian's arm64 Python under "
        "qemu-user, ai-edge-litert's aarch64 wheel, reached over ssh: `tools/arm64_board.sh`) and on this "
        "machine (`host`, x86 kernels), `tools/bench_arm64.py`.",
        "",
        table(["emulated core", "policy", "top-1 agreement", "largest logit difference", "logit span",
               "logits that differ", "top-1 arm64", "top-1 x86", "wall time"], rows),
        "",
        f"Building the board cold (Debian's packages and PyPI's wheels, into a new folder): {builds}.",
        "",
        "XNNPACK runs other kernels on arm64 than on x86: where they differ (int4 weights; float16's last bits), "
        "a logit moves by one step of the output's scale or less, and the classes stay. On qemu's default core "
        "(`max`) the w8a8 layers compute wrong answers (w4a8, w8a16 and f16 stay right), which no real core "
        "gives: an emulation fault in an extension that core advertises. So the board emulates a real core, a "
        "Raspberry Pi 5's cortex-a76 by default (`ARM64_CPU` picks another). Times on the board are the "
        "emulator's and are not reported as latencies.",
    ])


def main() -> None:
    benchkit.cli(__doc__, run, "the default core only")

if __name__ == "__main__":
    main()
