"""Samples between PyTorch's layout (N, C, H, W) and the artifact's (onnx2tf makes NHWC).

One place decides whether a 4-D batch must be transposed to fit an artifact's input shape, and
what sample shape PyTorch sees behind an artifact's input; numpy only."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .errors import DataError


def to_model(x: np.ndarray, shape: tuple[int, ...] | list[int], who: str = "the artifact") -> np.ndarray:
    """Samples `x` (N, C, H, W) as a model whose input is `shape` (batch first) takes them:
    transposed to NHWC when that is what fits, float32, contiguous; a shape that fits neither
    way is an error naming both."""
    x = np.asarray(x, np.float32)
    want = tuple(int(v) for v in shape[1:])
    if x.ndim == 4 and tuple(x.shape[1:]) != want and want == (x.shape[2], x.shape[3], x.shape[1]):
        x = x.transpose(0, 2, 3, 1)
    if tuple(x.shape[1:]) != want:
        raise DataError(f"{who} takes samples of shape {want}, the data gives {tuple(x.shape[1:])}; "
                        "give the data the model was built for")
    return np.ascontiguousarray(x)


def converter(shape: tuple[int, ...] | list[int], who: str = "the artifact") -> Callable[[np.ndarray], np.ndarray]:
    """`to_model` with the artifact's input `shape` fixed: a function of the samples."""
    return lambda x: to_model(x, shape, who)


def torch_sample_shape(shape: tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """The (C, H, W) sample PyTorch feeds behind an artifact input of NHWC `shape` (batch first);
    other ranks are taken as they are."""
    return (int(shape[3]), int(shape[1]), int(shape[2])) if len(shape) == 4 else tuple(int(v) for v in shape[1:])


def channels_last(a: np.ndarray) -> np.ndarray:
    """A PyTorch activation as TFLite holds it: a 4-D (N, C, H, W) tensor as NHWC, others unchanged."""
    return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a
