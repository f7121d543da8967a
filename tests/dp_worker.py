"""Run by tests/test_distributed.py as one process or under torchrun: the data-parallel training
steps (float training with BatchNorm, QAT, LIMPQ's and GMPQ's steps) on a small network and
random data, batches that do not divide evenly over two ranks; rank 0 saves what they learned.

    python tests/dp_worker.py OUT.pt     (every job: fit, qat, limpq, gmpq)"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from edgempq import distributed


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Flatten(), nn.Linear(8 * 4 * 4, 4))


def data(n: int = 45) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 1, 8, 8)).astype(np.float32), rng.integers(0, 4, n)


@contextmanager
def strict_device() -> Iterator[None]:
    """Tensors made without a device land on `meta` (see tests/test_compute.py): the synced
    BatchNorm and the collectives must make theirs where the model computes."""
    torch.set_default_device("meta")
    try:
        yield
    finally:
        torch.set_default_device(None)


def learned(job: str) -> dict[str, torch.Tensor]:
    from edgempq.train import TrainConfig, fit

    x, y = data()
    if job == "fit":  # batches of 7: shares of 4 and 3, and a last batch of 3
        model = net()
        with strict_device():
            fit(model, x, y, TrainConfig(epochs=2, batch_size=7, lr=0.01))
        return model.state_dict()
    from edgempq.quant import QuantConfig, finetune, quantize
    from edgempq.schema import Policy, Precision

    policy = Policy({n: Precision.parse(q) for n, q in (("0", "w4a8"), ("3", "w8a8"), ("7", "w8a8"))})
    if job == "qat":
        q, _ = quantize(net().eval(), policy, x[:16], QuantConfig(weights="minmax"))
        # SGD: Adam turns a gradient of float noise (a step whose rounding is balanced) into a full step
        with strict_device():
            finetune(q, x, y, 1, TrainConfig(epochs=1, batch_size=9, lr=1e-3, augment_shift=0))
        return q.state_dict()
    return _search(job, net().eval(), x, y)


def _search(job: str, model: nn.Module, x: np.ndarray, y: np.ndarray) -> dict[str, torch.Tensor]:
    """The gradients of a method's first two steps (before its update): the trained state
    drifts apart through rounding flips of the fake quantizers, the steps themselves must not."""
    from edgempq.layers import trace
    from edgempq.schema import Precision
    from edgempq.sensitivity import base
    from edgempq.sensitivity import gmpq as G
    from edgempq.sensitivity import limpq as L

    layers = trace(model, (1, 8, 8))
    precisions = {la.name: [Precision.parse("w4a8"), Precision.parse("w8a8")] for la in layers}
    grads: dict[str, torch.Tensor] = {}

    def spy(opt: torch.optim.Optimizer, params: list[nn.Parameter]) -> None:
        take = opt.step

        def step() -> None:
            if len(grads) < 2 * len(params):
                for i, p in enumerate(params):
                    grads[f"{len(grads) // len(params)}.{i}"] = p.grad.clone() if p.grad is not None else torch.zeros(1)
            take()
        opt.step = step

    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    if job == "limpq":
        net_, multi = L._multi_precision(model, precisions)
        t = L._Training(net_, multi, precisions, L.LIMPQ.Params(epochs=1, batch_size=9), len(x))
        spy(t.opt, list(net_.parameters()))
        t.run(xt, yt, None)
    else:
        m = G.GMPQ(G.GMPQ.Params(epochs=1, batch_size=9))
        teacher, student = m._networks(model)
        scored = [la for la in layers if base.searchable([la], precisions)]
        mixed = G._mix(student, scored, precisions, 0)
        G._calibrate_acts(student, xt[:18], 9)
        search = G._Search(teacher, student, mixed, scored, xt, m.params)
        spy(search.opt_w, search.rest)
        search.train(xt, yt, None)
    return grads


JOBS = ("fit", "qat", "limpq", "gmpq")

if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore", message=".*optimizer.step.*")  # the spy's wrapper
    distributed.start()
    torch.set_num_threads(1)
    out = {job: learned(job) for job in JOBS}
    if distributed.is_main():
        torch.save(out, sys.argv[1])
    distributed.finish()
