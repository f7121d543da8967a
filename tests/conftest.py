"""Shared fixtures: tiny real models and data, and a private cache per test session."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    """A real sshd on 127.0.0.1 serving this user with a fresh key."""
    from .devices import SSHServer, need

    need("sshd")
    server = SSHServer(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def device_venv_python() -> str:
    """A Python with numpy and ai-edge-litert, no torch: what a device has."""
    from .devices import device_venv

    return str(device_venv() / "bin" / "python")


@pytest.fixture(scope="session")
def device_python(device_venv_python) -> str:
    """The device side's Python, reached over ssh (the ssh client must exist)."""
    from .devices import need

    need("ssh")
    return device_venv_python


@pytest.fixture(scope="session")
def digits_cnn(tmp_path_factory):
    """(model, data, weights file): zoo:mnist_cnn at 8x8 trained on the digits (tests/arm64.py)."""
    from .arm64 import trained

    return trained(tmp_path_factory.mktemp("digits_cnn"))


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGEMPQ_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


class TwoLayer(nn.Module):
    """conv 3->8 (3x3, pad 1) + ReLU on 3x10x10, then linear 800 -> 5: MACs by hand are
    8*10*10*3*9 = 21,600 and 800*5 = 4,000."""

    input_shape = (3, 10, 10)

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(800, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.conv(x)).flatten(1))


class ConvBnNet(nn.Module):
    """conv-bn-relu, depthwise conv-bn, pooled linear head: exercises BN folding."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        x = torch.relu(self.bn2(self.dw(x)))
        return self.fc(x.mean((2, 3)))


@pytest.fixture
def two_layer() -> TwoLayer:
    torch.manual_seed(0)
    return TwoLayer().eval()


@pytest.fixture
def conv_bn_net() -> ConvBnNet:
    torch.manual_seed(0)
    m = ConvBnNet()
    with torch.no_grad():  # non-trivial running statistics, so folding has work to do
        for bn in (m.bn, m.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    return m.eval()


@pytest.fixture
def npz_data(tmp_path):
    """120 samples of 1x8x8 in 3 classes, saved as a .npz."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 40)
    x = rng.normal(size=(120, 1, 8, 8)).astype(np.float32) + y[:, None, None, None]
    path = tmp_path / "toy.npz"
    np.savez(path, x=x, y=y)
    return path


@pytest.fixture
def counted(monkeypatch):
    """What the profile measured (not read from the cache) while the test runs: the keys of the
    jobs whose single-layer models were built (`.built`), and every (key, round) timed (`.timed`)."""
    import types

    import edgempq.profile as prof
    from edgempq.profile_cache import RowCache

    out = types.SimpleNamespace(built=[], timed=[])
    build, put = prof.build_model, RowCache.put_round

    def building(job, float_model):
        out.built.append(job.key)
        return build(job, float_model)

    def timing(self, key, r, t):
        out.timed.append((key, r))
        return put(self, key, r, t)

    monkeypatch.setattr(prof, "build_model", building)
    monkeypatch.setattr(RowCache, "put_round", timing)
    return out
