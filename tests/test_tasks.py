"""Tasks other than classification: a segmentation net (a label a pixel) and an autoencoder (the
input is its own target) go through data, sensitivity, deploy and validate on the real converter
and LiteRT, scored with their own metrics; the methods that need one class a sample refuse them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgempq import tasks
from edgempq.errors import ConfigError, DataError

SEG = """
from torch import nn

def net():
    m = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
                      nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                      nn.Conv2d(8, 3, 1))
    m.input_shape = (2, 16, 16)
    return m
"""

REG = """
from torch import nn

def net():
    m = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))
    m.input_shape = (8,)
    return m
"""

AE = """
from torch import nn

def net():
    m = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 16), nn.ReLU(),
                      nn.Linear(16, 32))
    m.input_shape = (32,)
    return m
"""


# --- metrics, by hand ------------------------------------------------------------------------

def test_dense_scores_are_pixel_accuracy_and_the_mean_iou_over_present_classes():
    y = np.array([[[0, 0], [1, 2]]])
    out = np.zeros((1, 3, 2, 2))
    pred = np.array([[0, 1], [1, 2]])  # one pixel of class 0 called 1
    for i in range(2):
        for j in range(2):
            out[0, pred[i, j], i, j] = 1.0
    s = tasks.dense_scores(out, y)
    assert s["pixel_acc"] == pytest.approx(0.75)
    assert s["miou"] == pytest.approx(np.mean([1 / 2, 1 / 2, 1.0]))  # IoU 0: 1/2, 1: 1/2, 2: 1


def test_snr_and_mse_of_values():
    t = np.ones((2, 4))
    s = tasks.regress_scores(t * 1.1, t)
    assert s["mse"] == pytest.approx(0.01) and s["snr_db"] == pytest.approx(20.0)
    assert tasks.snr_db(t, t) == tasks.MAX_SNR_DB and tasks.fmt("snr_db", tasks.MAX_SNR_DB) == "identical"
    assert tasks.cosine(t, 2 * t) == pytest.approx(1.0)
    with pytest.raises(DataError, match="differ in size"):
        tasks.regress_scores(np.ones((2, 3)), t)


def test_the_class_agreement_of_dense_outputs_counts_pixels():
    a = np.zeros((1, 2, 2, 2))
    a[0, 0] = 1.0
    b = a.copy()
    b[0, 1, 0, 0] = 2.0  # one pixel's class differs
    ag = tasks.class_agreement(a, b)
    assert ag["top1"] == pytest.approx(0.75) and ag["disagreeing"] == 1 and ag["snr_db"] < 10
    assert tasks.value_agreement(a, a)["top1"] is None


@pytest.mark.parametrize(("out", "inp", "y", "task"), [
    ((4, 10), (4, 1, 8, 8), np.arange(4), "classify"),
    ((4, 3, 8, 8), (4, 1, 8, 8), np.zeros((4, 8, 8), np.int64), "dense"),
    ((4, 2), (4, 5), np.zeros((4, 2), np.float32), "regress"),
    ((4, 5), (4, 5), np.zeros((4, 0), np.float32), "reconstruct"),
])
def test_the_task_is_inferred_where_one_fits(out, inp, y, task):
    assert tasks.infer(out, inp, y) == task


def test_a_task_that_does_not_fit_is_one_sentence_naming_what_it_needs():
    with pytest.raises(DataError, match="--task dense does not fit: it needs N x H x W integer labels"):
        tasks.infer((4, 10), (4, 1, 8, 8), np.arange(4), "dense")
    with pytest.raises(DataError, match="no task fits"):
        tasks.infer((4, 3), (4, 5), np.zeros((4, 0), np.float32))
    assert tasks.loss_warning("reconstruct", {"snr_db": 30.0}, {"snr_db": 12.0}).startswith(
        "the simulation loses 18.0 dB of SNR")
    assert tasks.loss_warning("dense", {"miou": 0.8}, {"miou": 0.75}) is None


def test_artifact_outputs_are_laid_out_as_pytorch_gives_them():
    from edgempq.layout import channels_first

    nhwc = np.arange(2 * 4 * 4 * 4, dtype=np.float32).reshape(2, 4, 4, 4)  # C = H = W: either way fits
    assert np.array_equal(channels_first(nhwc, (4, 4, 4)), nhwc.transpose(0, 3, 1, 2))  # onnx2tf's NHWC first
    assert channels_first(np.zeros((2, 5, 6, 3)), (None, 5, 6)).shape == (2, 3, 5, 6)
    assert channels_first(np.zeros((2, 7)), (7,)).shape == (2, 7)
    with pytest.raises(DataError, match="returns \\(5, 6, 3\\) per sample, the targets need \\(4, 5, 6\\)"):
        channels_first(np.zeros((2, 5, 6, 3)), (4, 5, 6))


# --- data -------------------------------------------------------------------------------------

def test_npz_targets_per_pixel_as_values_or_none(tmp_path):
    from edgempq.data import load_data

    x = np.random.default_rng(0).normal(size=(40, 2, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "seg.npz", x=x, y=np.zeros((40, 4, 4), np.int64))
    np.savez(tmp_path / "reg.npz", x=x, y=np.ones((40, 3), np.float32))
    np.savez(tmp_path / "ae.npz", x=x)
    seg, reg, ae = (load_data(str(tmp_path / f"{n}.npz"), (2, 4, 4)) for n in ("seg", "reg", "ae"))
    assert seg.y.shape == (40, 4, 4) and seg.classes == ("0",)
    assert reg.y.dtype == np.float32 and reg.classes == ()
    assert ae.y.shape == (40, 0) and len(np.unique(np.concatenate(list(ae.splits.values())))) == 40
    np.savez(tmp_path / "mask.npz", x=x, y=np.zeros((40, 4, 4), bool))  # binary masks saved as bool
    assert load_data(str(tmp_path / "mask.npz"), (2, 4, 4)).y.dtype == np.int64
    np.savez(tmp_path / "bad.npz", x=x, y=np.full((40, 3), np.nan, np.float32))
    with pytest.raises(DataError, match="NaN or infinite targets"):
        load_data(str(tmp_path / "bad.npz"), (2, 4, 4))


def test_a_split_file_with_other_targets_is_refused(tmp_path):
    from edgempq.data import load_data

    x = np.zeros((20, 2, 4, 4), np.float32)
    np.savez(tmp_path / "main.npz", x=x, y=np.zeros((20, 4, 4), np.int64))
    np.savez(tmp_path / "test.npz", x=x[:5], y=np.arange(5))
    (tmp_path / "m.toml").write_text('source = "npz"\npath = "main.npz"\n[splits]\ntest = "test.npz"\n')
    with pytest.raises(DataError, match="splits.test's file .* has targets y of int64 \\(\\) per sample"):
        load_data(str(tmp_path / "m.toml"), (2, 4, 4))


# --- the whole way, on the real converter and LiteRT -------------------------------------------

def _segmentation(n: int = 160) -> tuple[np.ndarray, np.ndarray]:
    """Label maps of a few rectangles of 3 classes; each class a fixed 2-channel colour, plus noise."""
    rng = np.random.default_rng(0)
    y = np.zeros((n, 16, 16), np.int64)
    for k in range(n):
        for c in (1, 2):
            r, s = rng.integers(0, 10, 2)
            y[k, r:r + rng.integers(3, 7), s:s + rng.integers(3, 7)] = c
    colour = np.array([[0.0, 0.0], [1.0, -1.0], [-1.0, 1.0]], np.float32)
    x = colour[y].transpose(0, 3, 1, 2) + rng.normal(0, 0.3, (n, 2, 16, 16)).astype(np.float32)
    return x.astype(np.float32), y


def _signals(n: int = 200) -> np.ndarray:
    """32-value windows: sums of two sines of random phase (a low-dimensional set an autoencoder can learn)."""
    rng = np.random.default_rng(0)
    t = np.linspace(0, 1, 32)
    return np.stack([np.sin(2 * np.pi * 2 * t + rng.uniform(0, 6)) + 0.5 * np.sin(2 * np.pi * 5 * t + rng.uniform(0, 6))
                     for _ in range(n)]).astype(np.float32)


def _trained(folder, source: str, data: dict, epochs: int):
    """(model, data, paths) of a user's net trained on its task's loss, loaded back with its weights."""
    from edgempq.pipeline import train_model
    from edgempq.simulation import load_model_and_data
    from edgempq.train import TrainConfig

    (folder / "net.py").write_text(source)
    np.savez(folder / "d.npz", **data)
    spec, path = f"{folder / 'net.py'}:net", str(folder / "d.npz")
    with torch.random.fork_rng(devices=[]):  # the initial weights do not depend on the tests run before
        torch.manual_seed(0)
        model, ds = load_model_and_data(spec, path)
    train_model(model, ds, TrainConfig(epochs=epochs, batch_size=16, lr=0.01, optimizer="adam"))
    torch.save(model.module.state_dict(), folder / "w.pt")
    model, ds = load_model_and_data(spec, path, folder / "w.pt")
    return model, ds, {"model": spec, "data": path, "weights": str(folder / "w.pt"), "folder": folder}


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    x, y = _segmentation()
    return _trained(tmp_path_factory.mktemp("seg"), SEG, {"x": x, "y": y}, 15)


@pytest.fixture(scope="module")
def autoencoder(tmp_path_factory):
    return _trained(tmp_path_factory.mktemp("ae"), AE, {"x": _signals()}, 60)


def _deploy_and_validate(model, ds, paths, precision: str, tmp_path):
    from edgempq.export.stage import DeployConfig
    from edgempq.layers import trace
    from edgempq.pipeline import ValidateOptions, deploy, validate
    from edgempq.schema import Policy

    policy = Policy.uniform(trace(model.module, model.input_shape), precision)
    dep = deploy(model, ds, policy, "host", tmp_path / "build", DeployConfig(weights=paths["weights"],
                                                                             data_spec=paths["data"]))
    return dep, validate(tmp_path / "build", "host", ValidateOptions(runs=3))


@pytest.mark.slow
def test_a_segmentation_net_deploys_and_is_scored_per_pixel(seg, tmp_path):
    model, ds, paths = seg
    assert model.task == "dense"
    dep, val = _deploy_and_validate(model, ds, paths, "w8a8", tmp_path)
    assert dep.task == "dense" and dep.simulated_top1 is None
    assert dep.scores["float"]["pixel_acc"] > 0.9, dep.scores
    assert dep.scores["simulated"]["miou"] > dep.scores["float"]["miou"] - 0.05
    assert val.task == "dense" and set(val.scores) == {"float", "simulated", "artifact"}
    assert val.agreement.top1 >= 0.99 and val.agreement.snr_db > 30, val.agreement
    assert val.scores["artifact"]["miou"] == pytest.approx(val.scores["simulated"]["miou"], abs=0.01)
    report = (tmp_path / "build" / "report.md").read_text()
    assert "mIoU" in report and "(pixels differ)" not in report and "pixels differ" in report


@pytest.mark.slow
def test_an_autoencoder_without_labels_deploys_and_is_scored_by_snr(autoencoder, tmp_path):
    model, ds, paths = autoencoder
    assert model.task == "reconstruct"
    dep, val = _deploy_and_validate(model, ds, paths, "w8a8", tmp_path)
    assert dep.scores["float"]["snr_db"] > 10, dep.scores
    assert val.agreement.top1 is None and val.agreement.snr_db >= 30, val.agreement
    assert val.artifact_top1 is None and val.predictions == ()
    assert val.scores["artifact"]["snr_db"] == pytest.approx(val.scores["simulated"]["snr_db"], abs=1.0)


@pytest.mark.slow
def test_a_regression_net_deploys_and_is_scored_by_mse_and_snr(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(240, 8)).astype(np.float32)
    y = np.stack([x[:, :4].sum(1), np.abs(x[:, 4:]).sum(1)], 1).astype(np.float32)
    model, ds, paths = _trained(tmp_path, REG, {"x": x, "y": y}, 40)
    assert model.task == "regress"
    dep, val = _deploy_and_validate(model, ds, paths, "w8a8", tmp_path)
    assert set(dep.scores["float"]) == {"mse", "snr_db"} and dep.scores["float"]["snr_db"] > 10, dep.scores
    assert val.agreement.top1 is None and val.agreement.snr_db >= 30, val.agreement
    assert "Scores (test split, task regress)" in (tmp_path / "build" / "report.md").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["hawq", "measured", "csmpq"])
def test_loss_based_and_label_free_methods_score_a_segmentation_net(seg, method):
    from edgempq.pipeline import layer_precisions, sensitivity, trace

    model, ds, _ = seg
    layers = trace(model.module, model.input_shape)
    params = {"hawq": ["probes=4"], "measured": ["samples=64"], "csmpq": []}[method]
    sens = sensitivity(model, ds, method, layer_precisions(layers, ("w8a8", "w4a8")), params)
    assert all(np.isfinite(v) for v in sens.penalties.values())
    if method != "csmpq":  # a bit objective orders the widths by construction; the loss-based ones must find it
        w4 = [sens.penalties[(la.name, "w4a8")] for la in layers if la.searchable]
        w8 = [sens.penalties[(la.name, "w8a8")] for la in layers if la.searchable]
        assert sum(w4) > sum(w8)  # 4-bit weights cost more than 8-bit ones under the task's loss


def test_class_methods_refuse_other_tasks_naming_the_ones_that_work():
    from edgempq.sensitivity import SensData, compute

    data = SensData(np.zeros((4, 32), np.float32), np.zeros((4, 0), np.float32), "d", "reconstruct")
    model = torch.nn.Sequential(torch.nn.Linear(32, 32))
    from edgempq.layers import trace
    from edgempq.schema import Precision

    layers = trace(model, (32,))
    precisions = {la.name: [Precision.parse("w8a8")] for la in layers if la.searchable}
    with pytest.raises(ConfigError, match="gmpq .* the model's task is reconstruct; use ompq, csmpq"):
        compute("gmpq", model, layers, precisions, data)
    with pytest.raises(ConfigError, match="csmpq with documents=classes"):
        compute("csmpq", model, layers, precisions, data, _opts(["documents=classes"]))


def _opts(params):
    from edgempq.sensitivity import RunOptions

    return RunOptions(params)


@pytest.mark.slow
def test_the_cli_scores_a_segmentation_net_and_refuses_a_task_that_does_not_fit(seg):
    from click.testing import CliRunner

    from edgempq.cli import main

    _, _, paths = seg
    base = ["evaluate", "--model", paths["model"], "--weights", paths["weights"], "--data", paths["data"]]
    r = CliRunner().invoke(main, [*base, "--precision", "w8a8"])
    assert r.exit_code == 0, r.output
    assert "pixel accuracy" in r.output and "mIoU" in r.output
    r = CliRunner().invoke(main, [*base, "--task", "classify"])
    assert r.exit_code == 1 and "--task classify does not fit" in r.output and "Traceback" not in r.output
