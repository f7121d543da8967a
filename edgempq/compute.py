"""Where the heavy stages compute: the CPU or a CUDA device.

`--compute` (or EDGEMPQ_DEVICE: cpu, cuda, cuda:N) chooses; by default a process uses its GPU
when the machine has one (under torchrun, the rank's local GPU) and the CPU otherwise. Training
(`train`, deploy's QAT), LIMPQ's and GMPQ's searches, HAWQ's Hessian probes and the loss
evaluations of `measured` and CLADO run there. The post-training quantization, the cheap proxies
(OMPQ, CSMPQ, the noise terms) and everything about the artifact stay on the CPU, where the
deployed integer arithmetic is simulated; a stage moves its models there and back with
`computing`, its batches with `to_device`, and runs the PTQ inside `on_cpu`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch
from torch import Tensor, nn

from . import distributed

M = TypeVar("M", bound=nn.Module)


def device() -> torch.device:
    """The device this process's heavy stages compute on (on CUDA, in full float32)."""
    dev = torch.device(distributed.device())
    if dev.type == "cuda":
        _full_float32()
    return dev


def _full_float32() -> None:
    """No TF32 on the GPU: cuDNN's convolutions use it by default (matmuls on request), rounding
    to 10 mantissa bits, about one int8 step of an activation, so fake-quantized values would
    flip across their rounding boundaries and measured's and CLADO's near-lossless comparisons
    (w8a8 against w8a16) would drown in it."""
    torch.backends.cudnn.conv.fp32_precision = "ieee"
    torch.backends.cuda.matmul.fp32_precision = "ieee"


def rng_devices() -> list[int]:
    """The CUDA devices whose random state a seeded stage forks (torch.manual_seed seeds them all)."""
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def to_device(*tensors: Tensor) -> tuple[Tensor, ...]:
    """`tensors` on the compute device (the same tensors when they are there already)."""
    dev = device()
    return tuple(t.to(dev) for t in tensors)


def place(module: M) -> M:
    """`module` moved onto the compute device (in place, as nn.Module.to does); returned."""
    return module.to(device())


@contextmanager
def computing(module: M) -> Iterator[M]:
    """`module` on the compute device for the block, back on the CPU after it (also when the
    block fails), so what the caller keeps lives where the PTQ and the export expect it."""
    try:
        yield place(module)
    finally:
        module.to("cpu")


@contextmanager
def on_cpu() -> Iterator[None]:
    """Tensors made without a device inside the block are made on the CPU: the PTQ, the
    artifact's simulation and the modules a stage builds before it moves them run there whatever
    device the stage computes on (a no-op unless the default device was changed: torch routes
    every call through a device context)."""
    if torch.get_default_device().type == "cpu":
        yield
        return
    with torch.device("cpu"):
        yield
