"""The emulated arm64 board of tools/arm64_board.sh behind a loopback sshd, and one artifact's
answers there against this machine's (tests/test_arm64.py; tools/bench_arm64.py records them).

The board is built once per machine into the temporary folder (seconds, from Debian's packages
and PyPI's aarch64 wheels) and reused; it needs apt-get and qemu-user-static, which `.ci/run`
installs."""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from .devices import SSHServer, need

BOARD = Path(tempfile.gettempdir()) / "edgempq-arm64-board"
SCRIPT = Path(__file__).resolve().parent.parent / "tools" / "arm64_board.sh"
MODEL, DATA = "zoo:mnist_cnn?input_size=8", "digits"
# each precision alone, and one policy of all four (every layer takes what its kind can run)
PRECISIONS = ("w8a8", "w4a8", "w8a16", "f16")
MIXED = ("w8a16", "w4a8", "w8a8", "f16")


def board_python() -> str:
    """The emulated board's Python (built now if this machine has none yet)."""
    for program in ("apt-get", "qemu-aarch64-static", "dpkg-deb"):
        need(program)
    p = subprocess.run(["bash", str(SCRIPT), str(BOARD)], capture_output=True, text=True, timeout=3600)
    if p.returncode != 0:
        raise RuntimeError(f"tools/arm64_board.sh failed: {p.stderr[-2000:]}")
    return p.stdout.strip().splitlines()[-1]


def board_target(server: SSHServer, python: str, name: str = "arm64-board") -> Any:
    """The emulated-board template pointed at the loopback sshd."""
    from edgempq.targets import load_target

    template = load_target("linux-ssh-arm64-emulated")
    return replace(template, name=name, template=False, connection=server.connection(python, timeout_s=600))


def policies(layers: list, target: Any) -> dict[str, Any]:
    """Each of PRECISIONS for every layer, and `mixed`: MIXED dealt round the layers, each layer
    taking the first one from its turn on that its kind runs."""
    from edgempq.schema import Policy, Precision

    searched = [la for la in layers if la.searchable]
    out = {}
    for name in PRECISIONS:
        p = Precision.parse(name)
        out[name] = Policy({la.name: p for la in searched if p in target.allowed(la.kind)})
    mixed = {}
    for i, la in enumerate(searched):
        turn = MIXED[i % len(MIXED):] + MIXED[:i % len(MIXED)]
        mixed[la.name] = next(Precision.parse(q) for q in turn if Precision.parse(q) in target.allowed(la.kind))
    out["mixed"] = Policy(mixed)
    return out


def trained(folder: Path, epochs: int = 10) -> tuple[Any, Any, Path]:
    """(model, data, weights file): MODEL trained briefly on DATA (8x8 digits), saved and loaded
    back from its weights file as `edgempq train` then `deploy --weights` do."""
    import torch

    from edgempq.pipeline import train_model
    from edgempq.simulation import load_model_and_data, state_bytes
    from edgempq.train import TrainConfig

    torch.manual_seed(0)
    model, ds = load_model_and_data(MODEL, DATA)
    train_model(model, ds, TrainConfig(epochs=epochs, batch_size=32, lr=0.05))
    weights = folder / "w.pt"
    weights.write_bytes(state_bytes(model.module))
    return (*load_model_and_data(MODEL, DATA, weights), weights)


def deployed(folder: Path, target_spec: str, chosen: dict[str, Any] | None = None,
             model: tuple | None = None) -> dict[str, Path]:
    """The trained model (`model`, as `trained` gives it; trained now without) deployed for
    `target_spec` at each policy (by default those of `policies`; `chosen` maps a name to a
    function of the layers giving one): name -> deploy folder."""
    from edgempq.export.stage import DeployConfig
    from edgempq.layers import trace
    from edgempq.pipeline import deploy
    from edgempq.targets import load_target

    model, ds, weights = model or trained(folder)
    layers = trace(model.module, model.input_shape)
    named = ({n: f(layers) for n, f in chosen.items()} if chosen is not None
             else policies(layers, load_target(target_spec)))
    out = {}
    for name, policy in named.items():
        out[name] = folder / name
        deploy(model, ds, policy, target_spec, out[name], DeployConfig(weights=weights, data_spec=DATA))
    return out


def eval_samples(tflite: bytes) -> tuple[np.ndarray, np.ndarray]:
    """DATA's test split, laid out as the artifact takes it, and its labels."""
    from edgempq.backends.base import io_quantization
    from edgempq.data import load_data
    from edgempq.layout import to_model

    ds = load_data(DATA, (1, 8, 8))
    x, y = ds.split("test")
    return to_model(x, io_quantization(tflite)[0]["shape"]), y.astype(np.int64)


def compare(tflite: bytes, board: Any, host: Any) -> dict[str, float]:
    """One artifact evaluated on the board and on this machine (both through their backends'
    `evaluate`, the device runner's `eval`): top-1 agreement of the two, their largest logit
    difference and the span of the logits, and each one's top-1."""
    from edgempq.backends import backend_for

    x, y = eval_samples(tflite)
    with backend_for(board) as b, backend_for(host) as h:
        arm, x86 = b.evaluate(tflite, x, y), h.evaluate(tflite, x, y)
    a, c = np.asarray(arm.logits, np.float64), np.asarray(x86.logits, np.float64)
    return {"samples": len(y), "agreement": float(np.mean(a.argmax(1) == c.argmax(1))),
            "max_logit_diff": float(np.abs(a - c).max()), "logit_span": float(c.max() - c.min()),
            "differing_logits": float(np.mean(a != c)), "top1_arm": arm.top1, "top1_x86": x86.top1}
