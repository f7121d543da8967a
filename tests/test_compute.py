"""The compute device (edgempq.compute): every heavy stage puts its models and batches on the
device it is given and makes no tensor anywhere else.

This machine has no GPU, so the stages compute on the CPU with torch's default device set to
`meta`: a tensor a stage makes without saying where (as it would land on the CPU beside a CUDA
model) is then a meta tensor, and the first op mixing it with the real ones fails. What this
cannot catch is a batch left on the CPU, which is where the CPU computes anyway."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgempq.errors import ConfigError


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Flatten(), nn.Linear(8 * 4 * 4, 4)).eval()


def _data(n: int = 24) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 1, 8, 8)).astype(np.float32), rng.integers(0, 4, n)


METHODS = {"hawq": ["probes=3"], "measured": ["samples=16", "ptq=minmax"], "clado": ["samples=16", "ptq=minmax"],
           "limpq": ["epochs=1", "batch_size=10"], "gmpq": ["epochs=1", "batch_size=10"]}


def _sensitivity(name: str, strict: bool) -> dict:
    """The method's penalties on a small network; `strict`: tensors made without a device land on meta."""
    from edgempq.layers import trace
    from edgempq.schema import Precision
    from edgempq.sensitivity import base

    model = _net()
    layers = trace(model, (1, 8, 8))
    precisions = {la.name: [Precision.parse("w4a8"), Precision.parse("w8a8")] for la in layers if la.searchable}
    x, y = _data()
    data = base.SensData(x, y, "random")
    if strict:
        torch.set_default_device("meta")
    try:
        return base.compute(name, model, layers, precisions, data, base.RunOptions(METHODS[name])).penalties
    finally:
        torch.set_default_device(None)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_a_method_makes_every_tensor_on_the_compute_device(name, monkeypatch):
    monkeypatch.setenv("EDGEMPQ_DEVICE", "cpu")
    assert _sensitivity(name, strict=True) == _sensitivity(name, strict=False)  # and computes what the CPU does


def test_training_and_qat_make_every_tensor_on_the_compute_device(monkeypatch):
    from edgempq.quant import QuantConfig, finetune, quantize
    from edgempq.schema import Policy, Precision
    from edgempq.train import TrainConfig, fit

    monkeypatch.setenv("EDGEMPQ_DEVICE", "cpu")
    x, y = _data()
    model = _net()
    policy = Policy({"0": Precision.parse("w4a8"), "3": Precision.parse("w8a8")})
    q, _ = quantize(model, policy, x[:16], QuantConfig(weights="minmax"))
    torch.set_default_device("meta")
    try:
        result = fit(model, x, y, TrainConfig(epochs=1, batch_size=10, lr=0.01), val=(x, y))
        finetune(q, x, y, 1, TrainConfig(epochs=1, batch_size=10, lr=1e-3))
    finally:
        torch.set_default_device(None)
    assert np.isfinite(result.final_loss) and "top1" in result.val_scores
    for m in (model, q):  # back on the CPU, where the PTQ and the export run
        assert all(t.device.type == "cpu" for t in (*m.parameters(), *m.buffers()))


@pytest.mark.parametrize(("value", "message"), [
    ("gpu", "give cpu, cuda or cuda:N"), ("cuda:x", "give cpu, cuda or cuda:N"),
    ("cuda:0", "no CUDA device|CUDA device\\(s\\)")])
def test_a_bad_compute_device_is_one_sentence(value, message, monkeypatch):
    from edgempq import compute

    monkeypatch.setenv("EDGEMPQ_DEVICE", value)
    if value == "cuda:0" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device 0")
    with pytest.raises(ConfigError, match=message):
        compute.device()


def test_computing_puts_the_model_back_on_the_cpu_when_the_block_fails(monkeypatch):
    from edgempq import compute

    monkeypatch.setenv("EDGEMPQ_DEVICE", "cpu")
    model = _net()
    with pytest.raises(RuntimeError, match="boom"), compute.computing(model) as m:
        assert m is model
        raise RuntimeError("boom")
    assert next(model.parameters()).device.type == "cpu"


def test_which_gpu_each_process_takes(monkeypatch):
    """The choice alone (no CUDA op runs): this machine's torch is told it has two GPUs."""
    from edgempq import distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for var in ("EDGEMPQ_DEVICE", "WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert distributed.device() == "cuda:0"  # one process: the first GPU by default
    monkeypatch.setenv("EDGEMPQ_DEVICE", "cuda:1")
    assert distributed.device() == "cuda:1"
    monkeypatch.setenv("EDGEMPQ_DEVICE", "cuda:2")
    with pytest.raises(ConfigError, match="has 2 CUDA device\\(s\\), numbered from 0"):
        distributed.device()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("EDGEMPQ_DEVICE", "cuda")
    assert distributed.device() == "cuda:1"  # under torchrun: the rank's local GPU
    monkeypatch.setenv("EDGEMPQ_DEVICE", "cuda:0")  # every rank on one GPU would fail in nccl
    with pytest.raises(ConfigError, match="under torchrun each rank takes its local GPU: give cuda"):
        distributed.device()
    monkeypatch.setenv("EDGEMPQ_DEVICE", "cuda")
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(ConfigError, match="more processes on this node than its 2 CUDA device"):
        distributed.device()
    monkeypatch.setenv("EDGEMPQ_DEVICE", "cpu")
    assert distributed.device() == "cpu"
