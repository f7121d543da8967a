import numpy as np
import pytest
from PIL import Image

from edgempq.data import load_data, stratified_splits, with_splits
from edgempq.errors import ConfigError, DataError


def test_mnist_splits_are_disjoint_stratified_and_deterministic():
    a, b = load_data("mnist"), load_data("mnist")
    s = a.splits
    assert {k: len(v) for k, v in s.items()} == {"calibration": 500, "validation": 300, "test": 1000, "train": 3700}
    for k1, k2 in [("calibration", "validation"), ("calibration", "test"), ("validation", "test"),
                   ("train", "validation"), ("train", "test")]:
        assert not set(s[k1]) & set(s[k2]), (k1, k2)
    assert set(s["calibration"]) <= set(s["train"])  # calibration samples are training samples
    for k in ("calibration", "validation", "test"):
        counts = np.bincount(a.y[s[k]], minlength=10)
        assert counts.max() - counts.min() <= 1, (k, counts)  # MNIST-5000 has 500 per class
    assert all(np.array_equal(s[k], b.splits[k]) for k in s) and a.data_id == b.data_id


def test_another_seed_gives_other_splits():
    y = np.repeat(np.arange(4), 50)
    counts = {"calibration": 20, "validation": 20, "test": 40}
    a, b = stratified_splits(y, counts, 0), stratified_splits(y, counts, 1)
    assert not np.array_equal(a["test"], b["test"])
    assert np.array_equal(a["test"], stratified_splits(y, counts, 0)["test"])


def test_splits_keep_class_proportions_on_imbalanced_labels():
    y = np.array([0] * 80 + [1] * 20)
    s = stratified_splits(y, {"calibration": 10, "validation": 10, "test": 20}, 0)
    assert np.bincount(y[s["test"]]).tolist() == [16, 4]
    assert np.bincount(y[s["validation"]]).tolist() == [8, 2]


def test_mnist_is_normalised_and_digits_are_upsampled():
    m = load_data("mnist")
    assert m.x.shape == (5000, 1, 28, 28) and m.x.dtype == np.float32
    assert abs(float(m.x.mean())) < 0.05 and 0.9 < float(m.x.std()) < 1.1
    d = load_data("digits", (1, 28, 28))
    assert d.x.shape == (1797, 1, 8, 8) and len(d.classes) == 10  # kept small until used
    assert d.split("test")[0].shape == (400, 1, 28, 28) and d.sample_shape == (1, 28, 28)
    rgb = load_data("digits", (3, 16, 16))
    assert rgb.split("calibration")[0].shape == (200, 3, 16, 16)
    assert rgb.inputs(np.arange(3)).dtype == np.float32


def test_npz_loads_and_shape_mismatch_is_clear(npz_data):
    ds = load_data(str(npz_data))
    assert ds.x.shape == (120, 1, 8, 8) and ds.classes == ("0", "1", "2")
    assert len(ds.split("test")[0]) == 24
    with pytest.raises(DataError, match="model takes"):
        load_data(str(npz_data), (1, 10, 10))
    with pytest.raises(DataError, match="channels"):
        load_data(str(npz_data), (3, 8, 8))


def _write_images(root, classes, n=4, size=(12, 10), mode="RGB"):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
            Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(root / c / f"{i}.png")


def test_image_folder_loads_classes_and_resizes(tmp_path):
    _write_images(tmp_path / "imgs", ["cat", "dog", "eel"], n=10)
    ds = load_data(str(tmp_path / "imgs"), (3, 8, 8))
    assert ds.split("train")[0].shape[1:] == (3, 8, 8) and ds.classes == ("cat", "dog", "eel")
    assert float(ds.x.min()) >= 0.0 and float(ds.x.max()) <= 1.0  # 0..255 scaled, no mean/std given
    native = load_data(str(tmp_path / "imgs"))
    assert native.x.shape == (30, 3, 10, 12)


def test_manifest_describes_user_data(tmp_path, npz_data):
    (tmp_path / "toy.toml").write_text(
        f'source = "npz"\npath = "{npz_data.name}"\nmean = [1.0]\nstd = [2.0]\nseed = 3\n'
        "[splits]\ncalibration = 12\nvalidation = 0.25\ntest = 30\n")
    ds = load_data(str(tmp_path / "toy.toml"))
    assert ds.name == "toy" and {k: len(v) for k, v in ds.splits.items()} == \
        {"calibration": 12, "validation": 30, "test": 30, "train": 60}
    raw = np.load(npz_data)["x"]
    assert np.abs(ds.x - (raw - 1.0) / 2.0).max() < 1e-5


@pytest.mark.parametrize("body,err,needle", [
    ('source = "npz"\ncolour = 1\n', ConfigError, "unknown key"),
    ('path = "x.npz"\n', ConfigError, "lacks 'source'"),
    ('source = "ftp"\npath = "x"\n', ConfigError, "unknown data source"),
    ('source = "npz"\npath = "toy.npz"\n[splits]\ntrain = 3\n', ConfigError, "splits"),
    ('source = "npz"\npath = "toy.npz"\n[splits]\ntest = 200\n', DataError, "too few"),
    ('source = "npz"\npath = "toy.npz"\nstd = [0.0]\n', ConfigError, "std"),
])
def test_bad_manifests_are_clear_errors(tmp_path, npz_data, body, err, needle):
    (tmp_path / "m.toml").write_text(body)
    with pytest.raises(err, match=needle):
        load_data(str(tmp_path / "m.toml"))


def test_bad_data_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_data(str(tmp_path / "nothing.npz"))
    with pytest.raises(DataError, match="unknown data"):
        load_data("imagenet")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        load_data(str(tmp_path / "empty"))
    _write_images(tmp_path / "one", ["only"], n=5)
    with pytest.raises(DataError, match="single class"):
        load_data(str(tmp_path / "one"))
    x = np.zeros((10, 1, 4, 4), np.float32)
    x[7, 0, 1, 1] = np.nan
    np.savez(tmp_path / "nan.npz", x=x, y=np.arange(10) % 2)
    with pytest.raises(DataError, match="NaN.*first at index 7"):
        load_data(str(tmp_path / "nan.npz"))
    np.savez(tmp_path / "nox.npz", images=x)
    with pytest.raises(DataError, match="must hold an array 'x'"):
        load_data(str(tmp_path / "nox.npz"))
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 1, 4, 4), np.float32), y=np.zeros(0, np.int64))
    with pytest.raises(DataError, match="empty"):
        load_data(str(tmp_path / "empty.npz"))


def test_with_splits_resplits_the_same_samples(npz_data):
    ds = with_splits(load_data(str(npz_data)), test=60)
    assert len(ds.splits["test"]) == 60 and len(ds.splits["train"]) == 48


@pytest.mark.parametrize("line,needle", [("mean = 0.5", "mean must be a list of numbers"),
                                         ('seed = "a"', "seed must be int"),
                                         ('resize = "yes"', "resize must be bool"),
                                         ("scale = 0", "scale must be a positive number")])
def test_manifest_field_types_are_checked(tmp_path, npz_data, line, needle):
    (tmp_path / "m.toml").write_text(f'source = "npz"\npath = "toy.npz"\n{line}\n')
    with pytest.raises(ConfigError, match=needle):
        load_data(str(tmp_path / "m.toml"))


def test_npy_and_corrupt_npz_are_clear_errors(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros(3))
    (tmp_path / "x.npy").rename(tmp_path / "single.npz")
    with pytest.raises(DataError, match="single array"):
        load_data(str(tmp_path / "single.npz"))
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(DataError, match="is not a .npz archive"):
        load_data(str(tmp_path / "bad.npz"))


def test_npz_labels_with_gaps_keep_their_meaning(tmp_path):
    x = np.random.default_rng(0).normal(size=(40, 1, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "gaps.npz", x=x, y=np.array([3, 7] * 20))
    ds = load_data(str(tmp_path / "gaps.npz"))
    assert len(ds.classes) == 8 and ds.classes[7] == "7"
