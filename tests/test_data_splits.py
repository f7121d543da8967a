"""Split sizes and pinned samples: shares, counts, index lists and whole files as splits;
with_splits' fresh cache; empty splits exposed (issue 18)."""

import numpy as np
import pytest

from edgempq.data import load_data, with_splits
from edgempq.errors import ConfigError, DataError


def _data(tmp_path, name="main.npz", n=60, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = (rng.normal(size=(n, 1, 4, 4)) + y[:, None, None, None]).astype(np.float32)
    np.savez(tmp_path / name, x=x, y=y)
    return x, y


def _load(tmp_path, splits, extra=""):
    (tmp_path / "m.toml").write_text(f'source = "npz"\npath = "main.npz"\n{extra}[splits]\n{splits}\n')
    return load_data(str(tmp_path / "m.toml"))


def _sizes(ds):
    return {k: len(v) for k, v in ds.splits.items()}


def _error(exc_info):
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    return msg


def test_a_share_of_one_is_every_sample_and_an_integer_is_a_count(tmp_path):
    _data(tmp_path)
    ds = _load(tmp_path, "calibration = 0\nvalidation = 0\ntest = 1.0")
    assert _sizes(ds) == {"calibration": 0, "validation": 0, "test": 60, "train": 0}
    assert ds.empty_splits == ("calibration", "validation", "train")
    assert _sizes(_load(tmp_path, "test = 1"))["test"] == 1
    assert _sizes(_load(tmp_path, "calibration = 0.005\nvalidation = 0.5\ntest = 0.25")) == \
        {"calibration": 1, "validation": 30, "test": 15, "train": 15}  # a share above 0 is at least one sample


def test_a_small_file_can_be_the_whole_test_split(tmp_path):
    _data(tmp_path, n=6)
    ds = _load(tmp_path, "calibration = 0\nvalidation = 0\ntest = 1.0")
    x, y = ds.split("test")
    assert len(x) == 6 and sorted(y.tolist()) == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize("value,needle", [
    ("200.0", "splits.test = 200.0 is a share, which must be from 0.0 to 1.0 (1.0 is every sample); write a count"),
    ("-1", "splits.test = -1 is a count, which must be 0 or more"),
    ("true", "splits.test = True must be a share from 0.0 to 1.0, a count, a list"),
    ("[1, -2]", "splits.test = [1, -2] must list sample indices as integers of 0 or more"),
    ('[1, "a"]', "must list sample indices"),
    ('""', 'splits.test = \'\' must name a .npz file'),
    ("nan", "splits.test = nan is a share"),
    ("{ a = 1 }", "must be a share"),
])
def test_bad_split_values_are_refused_naming_the_manifest_and_key(tmp_path, value, needle):
    _data(tmp_path)
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, f"test = {value}")
    msg = _error(e)
    assert msg.startswith(f"data manifest {tmp_path / 'm.toml'}: ") and needle in msg, msg


def test_too_large_splits_are_refused_not_shrunk(tmp_path):
    _data(tmp_path)
    with pytest.raises(DataError) as e:
        _load(tmp_path, "test = 1.0")  # the default calibration and validation shares do not fit beside it
    msg = _error(e)
    assert "m.toml: 60 samples to draw splits from are too few for" in msg and "a share of 1.0 is every sample" in msg
    with pytest.raises(DataError, match="too few for"):
        _load(tmp_path, "calibration = 0\nvalidation = 0\ntest = 61")


def test_index_lists_pin_samples_and_the_rest_is_drawn_around_them(tmp_path):
    _data(tmp_path)
    ds = _load(tmp_path, "calibration = 6\nvalidation = [0, 1, 2, 3, 4, 5]\ntest = [59, 10, 11]")
    assert ds.splits["validation"].tolist() == [0, 1, 2, 3, 4, 5] and ds.splits["test"].tolist() == [10, 11, 59]
    cal = set(ds.splits["calibration"].tolist())
    assert len(cal) == 6 and not cal & {0, 1, 2, 3, 4, 5, 10, 11, 59}
    assert set(ds.splits["train"].tolist()) == set(range(60)) - {0, 1, 2, 3, 4, 5, 10, 11, 59}
    again = _load(tmp_path, "calibration = 6\nvalidation = [0, 1, 2, 3, 4, 5]\ntest = [59, 10, 11]")
    assert np.array_equal(again.splits["calibration"], ds.splits["calibration"])  # seeded
    assert np.array_equal(ds.split("test")[1], ds.y[[10, 11, 59]])


@pytest.mark.parametrize("splits,needle", [
    ("test = [3, 60]", "splits.test lists sample 60, but the data has 60 samples; give indices from 0 to 59"),
    ("test = [3, 4, 3]", "splits.test lists sample 3 more than once; list each sample once"),
    ("validation = [1, 2]\ntest = [2, 3]",
     "splits.validation and splits.test both list sample 2 (1 shared in all); a sample can be in one of them only"),
    ("calibration = [7]\ntest = [7]", "splits.calibration and splits.test both list sample 7"),
    ("calibration = 0.5\nvalidation = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]\ntest = 0.5", "50 samples to draw splits from"),
])
def test_bad_index_lists_are_refused_naming_the_manifest_and_key(tmp_path, splits, needle):
    _data(tmp_path)
    with pytest.raises(DataError) as e:
        _load(tmp_path, splits)
    msg = _error(e)
    assert str(tmp_path / "m.toml") in msg and needle in msg, msg


def test_a_file_can_be_a_split_of_its_own(tmp_path):
    x, y = _data(tmp_path)
    tx, ty = _data(tmp_path, "held_out.npz", n=9, seed=1)
    ds = _load(tmp_path, 'validation = 0.1\ntest = "held_out.npz"', 'mean = [0.5]\n')
    assert ds.x.shape == (69, 1, 4, 4) and ds.pool_size == 60 and ds.files == {"test": (60, 69)}
    got_x, got_y = ds.split("test")
    assert np.allclose(got_x, tx - 0.5) and np.array_equal(got_y, ty)  # preprocessed like the rest
    assert _sizes(ds) == {"calibration": 6, "validation": 6, "test": 9, "train": 54}
    assert ds.splits["train"].max() < 60 and ds.splits["calibration"].max() < 60
    # a calibration file's samples are training samples too
    cal = _load(tmp_path, 'calibration = "held_out.npz"\nvalidation = 0\ntest = 0.5')
    assert cal.splits["calibration"].tolist() == list(range(60, 69))
    assert set(range(60, 69)) <= set(cal.splits["train"].tolist()) and len(cal.splits["train"]) == 39


@pytest.mark.parametrize("other,needle", [
    (np.zeros((9, 1, 5, 5), np.float32), "splits.test's file"),
    (np.zeros((9, 1, 4, 4), np.uint8), "differ in dtype"),
])
def test_a_split_file_unlike_the_data_is_refused(tmp_path, other, needle):
    _data(tmp_path)
    np.savez(tmp_path / "other.npz", x=other, y=np.arange(9) % 3)
    with pytest.raises(DataError) as e:
        _load(tmp_path, 'test = "other.npz"')
    msg = _error(e)
    assert str(tmp_path / "m.toml") in msg and needle in msg and "other.npz" in msg
    with pytest.raises(DataError, match="missing.npz does not exist"):
        _load(tmp_path, 'test = "missing.npz"')


def test_with_splits_gives_fresh_splits_not_the_cached_ones(tmp_path):
    _data(tmp_path)
    ds = load_data(str(tmp_path / "main.npz"))
    assert len(ds.split("test")[0]) == 12
    more = with_splits(ds, test=30)
    assert len(more.split("test")[0]) == 30 and len(more.split("test")[1]) == 30
    assert len(ds.split("test")[0]) == 12  # the original keeps its own
    pinned = with_splits(ds, test=np.array([4, 2]), calibration=np.int64(3))
    assert pinned.splits["test"].tolist() == [2, 4] and len(pinned.split("calibration")[0]) == 3
    assert np.array_equal(pinned.split("test")[0], ds.x[[2, 4]])


@pytest.mark.parametrize("kw,err,needle", [
    ({"test": 2.5}, ConfigError, "data main: splits.test = 2.5 is a share"),
    ({"train": 3}, ConfigError, "unknown split 'train'"),
    ({"test": "x.npz"}, ConfigError, "cannot be a file here"),
    ({"test": 100}, DataError, "too few"),
])
def test_with_splits_refuses_bad_sizes(tmp_path, kw, err, needle):
    _data(tmp_path)
    with pytest.raises(err, match=needle):
        with_splits(load_data(str(tmp_path / "main.npz")), **kw)


def test_an_empty_test_split_is_exposed_so_callers_can_refuse(tmp_path):
    _data(tmp_path)
    ds = _load(tmp_path, "test = 0")
    assert "test" in ds.empty_splits and len(ds.split("test")[0]) == 0
    with pytest.raises(DataError) as e:
        ds.require("calibration", "test")
    assert _error(e) == "data m has an empty test split; give it test samples ([splits] test = ... in a .toml manifest)"
    ds.require("calibration", "validation")
    with pytest.raises(ConfigError, match="unknown split"):
        ds.require("tset")
