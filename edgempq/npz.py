"""A .npz file of samples `x` and targets `y`, read and checked, its `x` turned channels first.

`y` holds one integer class label a sample, a label a pixel (N x H x W, for segmentation), or
float targets (regression); without `y`, the samples are their own targets (autoencoders).

Which layout `x` has is read off the model's input shape (or given as a manifest's `layout`):
N x C x H x W or N x H x W x C images, N x H x W one-channel images, N x C x L or N x L x C
sequences for a model whose input is (C, L), N x F vectors. A layout that fits the model both
ways, or looks channels last with no model to tell, is refused; numpy only."""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np

from .errors import DataError

LAYOUTS = ("NCHW", "NHWC", "NHW", "NCL", "NLC", "NC")
_NOTES = {"NHWC": "x read as N x H x W x C and transposed to channels first",
          "NLC": "x read as N x L x C and transposed to channels first",
          "NHW": "x read as N x H x W one-channel images"}


MAX_CLASSES = 100_000  # class ids index the model's outputs: 0 .. MAX_CLASSES - 1


def read_npz(path: Path, shape: tuple[int, ...] | None, layout: str | None = None,
             gray_to_rgb: bool = False) -> tuple[np.ndarray, np.ndarray, float, str]:
    """(x as float32 raw values, channels first; y as int64 labels, float32 targets, or an
    N x 0 array when the file has none; the divisor that maps x to [0, 1], 255 for uint8 else 1;
    how x was read, in words) for a model of input `shape` (None: not known)."""
    x, y = _arrays(path)
    if y is None:
        y = np.zeros((len(x), 0), np.float32)
    if x.ndim not in (2, 3, 4) or y.ndim < 1 or len(x) != len(y):
        raise DataError(f"data file {path}: x must be N x C x H x W, N x H x W, N x C x L (for a model of input "
                        f"C x L) or N x F, and y N labels or targets; got x {x.shape}, y {y.shape}")
    _check_targets(path, y)
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise DataError(f"data file {path}: x must hold real numbers, not {x.dtype}")
    found = layout or _layout(x, shape, gray_to_rgb, f"data file {path}")
    if len(found) != x.ndim:
        raise DataError(f"data file {path}: layout {found} needs a {len(found)}-D x but x is {x.shape}; "
                        "fix layout in the manifest")
    unit = 255.0 if x.dtype == np.uint8 else 1.0
    x = x.astype(np.float32)
    if found == "NHW":
        x = x[:, None]
    elif found in ("NHWC", "NLC"):  # channels last to channels first
        x = x.transpose(0, x.ndim - 1, *range(1, x.ndim - 1))
    y = y.astype(np.int64 if np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_ else np.float32)
    return x, y, unit, _NOTES.get(found, "")


def _check_targets(path: Path, y: np.ndarray) -> None:
    """Integer labels are non-negative; float targets are finite; nothing else is a target."""
    if np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_:
        if y.size and y.min() < 0:
            raise DataError(f"data file {path}: y holds negative labels (from {int(y.min())}); class labels "
                            "count from 0")
        if y.size and int(y.max()) >= MAX_CLASSES:  # also before a uint64 label wraps to a negative int64
            raise DataError(f"data file {path}: y holds the label {int(y.max())}, past the {MAX_CLASSES} classes "
                            "edgempq handles; class labels are 0, 1, 2, ... one a model output")
    elif np.issubdtype(y.dtype, np.floating):
        if not np.all(np.isfinite(y)):
            raise DataError(f"data file {path}: y holds NaN or infinite targets; clean them out")
    else:
        raise DataError(f"data file {path}: y must hold integer class labels or float targets, not {y.dtype}")


def _arrays(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    if not path.is_file():
        from .files import missing

        raise DataError(f"data file {path} {missing(path)}")
    try:
        f = np.load(path, allow_pickle=False)
    except PermissionError as e:
        raise DataError(f"data file {path} cannot be read ({e.strerror}); check its permissions") from None
    except (OSError, ValueError, zipfile.BadZipFile):
        # numpy's own message suggests unpickling, which a data file never needs
        raise DataError(f"data file {path} is not a .npz archive (write it with numpy.savez(path, x=..., y=...))") \
            from None
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise DataError(f"data file {path} is a single array; save x and y together with numpy.savez")
    with f:
        if "x" not in f:
            has = ", ".join(f.files) or "no arrays"
            raise DataError(f"data file {path} must hold an array 'x' (and 'y', its labels or targets); it has {has}")
        _check_sizes(path, f)
        try:
            x, y = f["x"], f.get("y", None)
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            raise DataError(f"data file {path} is damaged ({_first_line(e)})") from None
    for name, a in (("x", x), ("y", y)):
        if a is not None and not isinstance(a, np.ndarray):  # a member that is no .npy: numpy gives its bytes
            raise DataError(f"data file {path}: {name} is not a numpy array (write it with numpy.savez)")
    return x, y


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _check_sizes(path: Path, f: np.lib.npyio.NpzFile) -> None:
    """Each array's size as its header declares it, refused before it is read when it would not
    fit in the memory this machine has free (a small compressed file may declare a huge array)."""
    import psutil

    free = psutil.virtual_memory().available
    for name in ("x", "y"):
        if name not in f:
            continue
        member_name = f"{name}.npy" if f"{name}.npy" in f.zip.namelist() else name  # numpy reads either
        try:
            with f.zip.open(member_name) as member:
                major, _ = np.lib.format.read_magic(member)
                read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                shape, _, dtype = read(member)
        except (OSError, ValueError, zipfile.BadZipFile) as e:  # no .npy magic, or a header numpy refuses
            raise DataError(f"data file {path}: array {name} is not a readable .npy ({_first_line(e)})") from None
        size = math.prod(shape) * dtype.itemsize
        if size > free // 2:
            raise DataError(f"data file {path}: array {name} declares shape {shape} of {dtype}, {size / 2**30:.1f} "
                            f"GiB, more than half the {free / 2**30:.1f} GiB this machine has free; use fewer samples")


def _layout(x: np.ndarray, shape: tuple[int, ...] | None, gray_to_rgb: bool, where: str) -> str:
    """The layout the model's input `shape` fits: exactly, else by its channels (the first of
    the two when neither fits, so the shape error names channels-first shapes)."""
    s = tuple(x.shape[1:])
    if x.ndim == 2:
        return "NC"
    if x.ndim == 3 and not (shape and len(shape) == 2):
        return "NHW"
    options = {"NCL": s, "NLC": s[::-1]} if x.ndim == 3 else {"NCHW": s, "NHWC": (s[2], s[0], s[1])}
    first, last = options
    if shape is None:
        if s[2] in (1, 3) and s[0] not in (1, 3):
            raise DataError(f"{where}: x of shape {x.shape} looks channels last (N x H x W x C) and no model input "
                            "shape says which it is; set layout = \"NHWC\" (or \"NCHW\") in a .toml manifest")
        return first
    fits = [k for k, v in options.items() if v == tuple(shape)] or \
           [k for k, v in options.items() if v[0] == shape[0] or (gray_to_rgb and v[0] == 1 and shape[0] == 3)]
    if len(fits) == 2:
        raise DataError(f"{where}: x of shape {x.shape} fits the model's input {tuple(shape)} both as {first} "
                        f"(expected, channels first) and as {last}; set layout = \"{first}\" or \"{last}\" "
                        "in a .toml manifest")
    return fits[0] if fits else first
