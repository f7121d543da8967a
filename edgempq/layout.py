"""Samples between PyTorch's layout (N, C, H, W), or (N, C, L) for 1-D models, and the
artifact's (onnx2tf makes NHWC, and NLC).

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
    if x.ndim in (3, 4) and tuple(x.shape[1:]) != want and want == (*x.shape[2:], x.shape[1]):
        x = x.transpose(0, *range(2, x.ndim), 1)
    if tuple(x.shape[1:]) != want:
        raise DataError(f"{who} takes samples of shape {want}, the data gives {tuple(x.shape[1:])}; "
                        "give the data the model was built for")
    return np.ascontiguousarray(x)


def converter(shape: tuple[int, ...] | list[int], who: str = "the artifact") -> Callable[[np.ndarray], np.ndarray]:
    """`to_model` with the artifact's input `shape` fixed: a function of the samples."""
    return lambda x: to_model(x, shape, who)


def torch_sample_shape(shape: tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """The (C, H, W) sample PyTorch feeds behind an artifact input of NHWC `shape` (batch first),
    or (C, L) behind NLC; other ranks are taken as they are."""
    dims = tuple(int(v) for v in shape[1:])
    return (dims[-1], *dims[:-1]) if len(shape) in (3, 4) else dims


def channels_last(a: np.ndarray) -> np.ndarray:
    """A conv's PyTorch output as TFLite holds it: (N, C, H, W) as NHWC, a Conv1d's (N, C, L) as
    NLC, others unchanged."""
    return a.transpose(0, *range(2, a.ndim), 1) if a.ndim in (3, 4) else a


def channels_first(a: np.ndarray, want: tuple[int | None, ...], who: str = "the artifact") -> np.ndarray:
    """An artifact's outputs `a` (batch first) as PyTorch gives them, per sample of shape `want`
    (None: any size on that axis): NHWC / NLC moved to channels first when that fits (onnx2tf
    lays conv outputs out so; it is taken first, so a square C = H = W map is moved too),
    unchanged when they fit as they are; anything else is a DataError naming both shapes."""

    def fits(shape: tuple[int, ...]) -> bool:
        return len(shape) == len(want) and all(w is None or w == s for s, w in zip(shape, want, strict=True))

    if a.ndim in (3, 4) and fits((a.shape[-1], *a.shape[1:-1])):
        return np.ascontiguousarray(a.transpose(0, a.ndim - 1, *range(1, a.ndim - 1)))
    if fits(tuple(a.shape[1:])):
        return a
    if None not in want and int(np.prod(a.shape[1:])) == int(np.prod(want)) and a.ndim == 2:
        return a.reshape(len(a), *want)
    shown = tuple("*" if w is None else w for w in want)
    raise DataError(f"{who} returns {tuple(a.shape[1:])} per sample, the targets need {shown}; "
                    "give the data the model was deployed with")
