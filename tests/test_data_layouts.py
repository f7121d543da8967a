"""How a .npz's x is read: 1-D samples for 1-D models, channels last detected or refused, and
the normalisation said out loud (issue 18)."""

import numpy as np
import pytest

from edgempq.data import load_data
from edgempq.errors import ConfigError, DataError

Y = np.repeat(np.arange(3), 20)


def _npz(tmp_path, name, x, y=Y):
    np.savez(tmp_path / name, x=x, y=y)
    return str(tmp_path / name)


def _manifest(tmp_path, body, name="m.toml"):
    (tmp_path / name).write_text(body)
    return str(tmp_path / name)


def _error(exc_info):
    """The message, checked to be one line."""
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    return msg


def test_sequences_stay_one_dimensional_for_a_one_dimensional_model(tmp_path):
    x = np.random.default_rng(0).normal(size=(60, 2, 50)).astype(np.float32)
    ds = load_data(_npz(tmp_path, "seq.npz", x), (2, 50))
    assert ds.x.shape == (60, 2, 50) and ds.sample_shape == (2, 50)
    assert ds.split("test")[0].shape == (12, 2, 50) and np.array_equal(ds.x, x)  # float data used as given
    body = 'source = "npz"\npath = "seq.npz"\nmean = [1.0, -1.0]\nstd = [2.0, 4.0]\n'
    normed = load_data(_manifest(tmp_path, body), (2, 50))
    want = (x - np.array([1.0, -1.0], np.float32)[None, :, None]) / np.array([2.0, 4.0], np.float32)[None, :, None]
    assert np.allclose(normed.x, want, atol=1e-6)
    assert "then (x - [1.0, -1.0]) / [2.0, 4.0]" in normed.preprocessing


def test_channels_last_sequences_and_images_are_transposed_without_a_word(tmp_path):
    rng = np.random.default_rng(1)
    seq = rng.normal(size=(60, 50, 2)).astype(np.float32)
    ds = load_data(_npz(tmp_path, "nlc.npz", seq), (2, 50))
    assert ds.x.shape == (60, 2, 50) and np.array_equal(ds.x, seq.transpose(0, 2, 1))
    img = rng.integers(0, 256, (60, 8, 6, 3), dtype=np.uint8)
    ds = load_data(_npz(tmp_path, "nhwc.npz", img), (3, 8, 6))
    assert ds.x.shape == (60, 3, 8, 6) and np.allclose(ds.x, img.transpose(0, 3, 1, 2) / 255.0)
    assert ds.preprocessing.startswith("x read as N x H x W x C and transposed")
    # a model that resizes: the channel count tells the layout even when the size differs
    (tmp_path / "r.toml").write_text('source = "npz"\npath = "nhwc.npz"\nresize = true\n')
    assert load_data(str(tmp_path / "r.toml"), (3, 16, 12)).split("test")[0].shape == (12, 3, 16, 12)
    # gray stored channels last, repeated for an RGB model when the manifest allows it
    gray = rng.normal(size=(60, 8, 8, 1)).astype(np.float32)
    _npz(tmp_path, "gray.npz", gray)
    path = _manifest(tmp_path, 'source = "npz"\npath = "gray.npz"\ngray_to_rgb = true\n')
    ds = load_data(path, (3, 8, 8))
    assert ds.x.shape == (60, 1, 8, 8) and ds.split("test")[0].shape == (12, 3, 8, 8)
    assert "gray repeated to 3 channels" in ds.preprocessing


def test_ambiguous_layouts_are_refused_naming_the_file_and_the_key(tmp_path):
    rng = np.random.default_rng(2)
    square = _npz(tmp_path, "square.npz", rng.normal(size=(60, 4, 4)).astype(np.float32))
    with pytest.raises(DataError) as e:
        load_data(square, (4, 4))
    msg = _error(e)
    assert "square.npz" in msg and "both as NCL (expected, channels first) and as NLC" in msg
    assert 'layout = "NCL"' in msg
    cube = _npz(tmp_path, "cube.npz", rng.normal(size=(60, 3, 3, 3)).astype(np.float32))
    with pytest.raises(DataError, match="both as NCHW"):
        load_data(cube, (3, 3, 3))
    # the manifest settles it
    _manifest(tmp_path, 'source = "npz"\npath = "square.npz"\nlayout = "NLC"\n')
    ds = load_data(str(tmp_path / "m.toml"), (4, 4))
    assert np.array_equal(ds.x, np.load(square)["x"].transpose(0, 2, 1))


def test_channels_last_with_no_model_shape_is_refused_unless_the_manifest_says(tmp_path):
    x = np.random.default_rng(3).normal(size=(60, 10, 12, 3)).astype(np.float32)
    path = _npz(tmp_path, "hwc.npz", x)
    with pytest.raises(DataError) as e:
        load_data(path)
    msg = _error(e)
    assert "hwc.npz" in msg and "looks channels last" in msg and 'layout = "NHWC"' in msg
    ds = load_data(_manifest(tmp_path, 'source = "npz"\npath = "hwc.npz"\nlayout = "NHWC"\n'))
    assert ds.sample_shape == (3, 10, 12)
    _npz(tmp_path, "s.npz", x[:, :, 0, :])
    seq = load_data(_manifest(tmp_path, 'source = "npz"\npath = "s.npz"\nlayout = "NCL"\n', "s.toml"))
    assert seq.sample_shape == (10, 3)  # kept 1-D with no model to ask


@pytest.mark.parametrize("body,shape,err,needles", [
    ('source = "npz"\npath = "seq.npz"\nlayout = "NCHW"\n', None, DataError,
     ["seq.npz", "layout NCHW needs a 4-D x"]),
    ('source = "npz"\npath = "seq.npz"\nlayout = "CHW"\n', None, ConfigError,
     ["m.toml", "layout must be one of NCHW, NHWC, NHW, NCL, NLC, NC"]),
    ('source = "sklearn-digits"\nlayout = "NCHW"\n', None, ConfigError,
     ["m.toml", "layout applies to .npz data"]),
    ('source = "npz"\npath = "seq.npz"\n', (2, 64), DataError,
     ["data m has samples of shape (2, 50) but the model takes (2, 64)", "not resampled"]),
    ('source = "npz"\npath = "seq.npz"\n', (3, 8, 8), DataError, ["1-channel samples but the model takes 3 channels"]),
])
def test_layout_errors_are_one_sentence(tmp_path, body, shape, err, needles):
    _npz(tmp_path, "seq.npz", np.zeros((60, 2, 50), np.float32))
    with pytest.raises(err) as e:
        load_data(_manifest(tmp_path, body), shape)
    msg = _error(e)
    assert all(n in msg for n in needles), msg
    assert "--input-shape" not in msg


def test_images_are_refused_by_a_one_dimensional_model_and_vectors_load(tmp_path):
    rng = np.random.default_rng(4)
    with pytest.raises(DataError, match=r"samples of shape \(1, 8, 8\) but the model takes \(2, 50\); give N x C x L"):
        load_data(_npz(tmp_path, "img.npz", rng.normal(size=(60, 1, 8, 8)).astype(np.float32)), (2, 50))
    vec = load_data(_npz(tmp_path, "vec.npz", rng.normal(size=(60, 16)).astype(np.float32)), (16,))
    assert vec.x.shape == (60, 16) and vec.split("calibration")[0].shape == (6, 16)


def test_normalisation_is_explicit(tmp_path):
    img = np.random.default_rng(5).integers(0, 256, (60, 1, 4, 4), dtype=np.uint8)
    bare = load_data(_npz(tmp_path, "u8.npz", img))
    assert np.allclose(bare.x, img / 255.0)  # the documented default, and nothing else
    assert "values / 255 to 0..1" in bare.preprocessing and "no mean/std normalisation" in bare.preprocessing
    body = 'source = "npz"\npath = "u8.npz"\nscale = 1.0\nmean = [128.0]\nstd = [64.0]\n'
    ds = load_data(_manifest(tmp_path, body))
    assert np.allclose(ds.x, (img.astype(np.float32) - 128.0) / 64.0)
    assert ds.preprocessing == "values / 1 (the manifest's scale); then (x - [128.0]) / [64.0]"
    floats = img.astype(np.float32) * 3.0
    assert np.array_equal(load_data(_npz(tmp_path, "f.npz", floats)).x, floats)  # used as given
    assert load_data("mnist").preprocessing.startswith("values / 255 (the manifest's scale); then (x - [0.1307])")
