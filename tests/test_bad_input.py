"""Bad input, tried as a new user would: every case ends in one sentence on stderr, exit status
1, no traceback and no output file (not even a partial one). The command line runs in process
(click's runner) so the table stays fast; test_cli checks the same contract in real processes."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edgempq.cli import main

NETS = textwrap.dedent("""
    import torch.nn as nn

    def good():
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
    good.input_shape = (1, 8, 8)

    def other():
        return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 8 * 8, 3))
    other.input_shape = (1, 8, 8)

    def raises():
        raise RuntimeError("boom in the factory")

    def exits():
        import sys
        sys.exit(3)

    def text():
        return "not a model"

    def relu_only():
        return nn.Sequential(nn.ReLU(), nn.Flatten())
    relu_only.input_shape = (1, 8, 8)

    def transposed():
        return nn.Sequential(nn.ConvTranspose2d(2, 4, 3, groups=2), nn.ReLU(), nn.Flatten(),
                             nn.Linear(4 * 10 * 10, 3))
    transposed.input_shape = (2, 8, 8)
""")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return make_files(tmp_path_factory.mktemp("bad input"))  # a space in the path, as users have


def make_files(d: Path) -> Path:
    """Every bad file of the table, beside good ones, in one folder."""
    (d / "nets.py").write_text(NETS)
    (d / "syntax.py").write_text("def make(:\n")
    (d / "folder.py").mkdir()
    from edgempq.models import load_model

    good = load_model(f"{d / 'nets.py'}:good")
    torch.save(good.module.state_dict(), d / "good.pt")
    torch.save(good.module, d / "whole.pt")  # a pickled module: weights_only refuses it
    torch.save(load_model(f"{d / 'nets.py'}:other").module.state_dict(), d / "other.pt")
    (d / "random.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    (d / "weights folder.pt").mkdir()
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 40)
    x = (rng.normal(size=(120, 1, 8, 8)) + y[:, None, None, None]).astype(np.float32)
    np.savez(d / "good.npz", x=x, y=y)
    np.savez(d / "empty.npz", x=x[:0], y=y[:0])
    np.savez(d / "single.npz", x=x, y=np.zeros_like(y))
    nan = x.copy()
    nan[7, 0, 1, 1] = np.nan
    np.savez(d / "nan.npz", x=nan, y=y)
    np.savez(d / "short_y.npz", x=x, y=y[:90])
    np.savez(d / "no_arrays.npz")
    (d / "garbage.npz").write_text("this is not an archive")
    (d / "malformed.toml").write_text('name = "t\nbackend = "litert"\n')
    host = (Path(__file__).parents[1] / "targets" / "host.toml").read_text()
    (d / "unknown_key.toml").write_text(host.replace('backend = "litert"', 'backend = "litert"\nfrobnicate = 1'))
    (d / "a file").write_text("")
    _search_inputs(d, good)
    return d


def _search_inputs(d: Path, good) -> None:
    """A real profile (layers only, on this CPU) and an OMPQ sensitivity of the good model, a
    hand-edited and a truncated copy of the profile, and policies naming what is not there."""
    from edgempq.data import load_data
    from edgempq.layers import trace
    from edgempq.profile import profile
    from edgempq.sensitivity import RunOptions, SensData, compute
    from edgempq.targets import load_target

    layers = trace(good.module, good.input_shape)
    table = profile(layers, load_target("host"), good.model_hash)
    table.save(d / "profile.json")
    doc = json.loads((d / "profile.json").read_text())
    doc["rows"][0]["latency_ms"] = 999.0  # one number changed by hand
    (d / "edited.json").write_text(json.dumps(doc))
    (d / "truncated.json").write_text((d / "profile.json").read_text()[:2000])
    ds = load_data(str(d / "good.npz"), good.input_shape)
    x, y = ds.split("calibration")
    precisions = {la.name: list(load_target("host").allowed(la.kind)) for la in layers if la.searchable}
    compute("ompq", good.module, layers, precisions, SensData(x, y, ds.data_id),
            RunOptions(model_hash=good.model_hash)).save(d / "sens.json")
    rows = [{"layer": la.name, "precision": "w8a8"} for la in layers if la.searchable]
    (d / "unknown_layer.json").write_text(json.dumps({"schema_version": 1, "layers": [
        *rows, {"layer": "nope", "precision": "w8a8"}]}))
    (d / "w2.json").write_text(json.dumps({"schema_version": 1, "layers": [
        {**r, "precision": "w2a8"} for r in rows]}))


NET, GOOD = "nets.py:good", "good.npz"
CASES = [  # (id, command with {d} for the folder, what the message says, the output it must not leave)
    ("missing model file", "layers --model {d}/missing.py:good -o {d}/o.json", "does not exist", "o.json"),
    ("model file is a folder", "layers --model {d}/folder.py:make -o {d}/o.json", "is not a file", "o.json"),
    ("not a model file", "layers --model {d}/good.npz:make", "it must be a Python file", None),
    ("syntax error", "layers --model {d}/syntax.py:make -o {d}/o.json", "failed to import (SyntaxError", "o.json"),
    ("factory raises", "layers --model {d}/nets.py:raises", "raised RuntimeError: boom in the factory", None),
    ("factory exits", "layers --model {d}/nets.py:exits -o {d}/o.json", "it called sys.exit(3)", "o.json"),
    ("factory returns no model", "layers --model {d}/nets.py:text", "returned a str, not a torch.nn.Module", None),
    ("pickled whole module", "layers --model {d}/" + NET + " --weights {d}/whole.pt", "cannot be loaded safely",
     None),
    ("random bytes as weights", "layers --model {d}/" + NET + " --weights {d}/random.pt",
     "is not a PyTorch weights file", None),
    ("unreadable weights", "layers --model {d}/" + NET + " --weights '{d}/weights folder.pt'", "is not a file",
     None),
    ("weights of another model", "layers --model {d}/" + NET + " --weights {d}/other.pt",
     "does not fit the model", None),
    ("wrong input shape", "layers --model {d}/" + NET + " --input-shape 3,5,5 -o {d}/o.json",
     "give the input shape the model expects", "o.json"),
    ("no quantizable layer", "layers --model {d}/nets.py:relu_only -o {d}/o.json", "no Conv1d, Conv2d or Linear layer",
     "o.json"),
    ("empty data", "evaluate --model {d}/" + NET + " --data {d}/empty.npz --precision w8a8", "is empty", None),
    ("single-class data", "sensitivity --method ompq --model {d}/" + NET + " --data {d}/single.npz -o {d}/s.json",
     "single class", "s.json"),
    ("NaN in data", "evaluate --model {d}/" + NET + " --data {d}/nan.npz --precision w8a8", "NaN or infinite",
     None),
    ("labels do not match samples", "evaluate --model {d}/" + NET + " --data {d}/short_y.npz --precision w8a8",
     "y N labels", None),
    ("npz without arrays", "data --data {d}/no_arrays.npz", "it has no arrays", None),
    ("not an npz", "data --data {d}/garbage.npz", "is not a .npz archive", None),
    ("infeasible budget", "search --profile {d}/profile.json --sensitivity {d}/sens.json --size-kb 0.001 "
     "-o {d}/p.json", "cannot be met", "p.json"),
    ("negative budget", "search --profile {d}/profile.json --sensitivity {d}/sens.json --latency-ms -1 "
     "-o {d}/p.json", "must be a positive number", "p.json"),
    ("zero budget", "search --profile {d}/profile.json --sensitivity {d}/sens.json --size-kb 0 -o {d}/p.json",
     "must be a positive number", "p.json"),
    ("sweep with no feasible point", "search --profile {d}/profile.json --sensitivity {d}/sens.json "
     "--sweep size_kb=0.001:0.002:2 -o {d}/sw.json", "none of the budgets of the sweep", "sw.json"),
    ("hand-edited profile", "search --profile {d}/edited.json --sensitivity {d}/sens.json --size-kb 100 "
     "-o {d}/p.json", "does not match its checksum", "p.json"),
    ("truncated profile", "search --profile {d}/truncated.json --sensitivity {d}/sens.json --size-kb 100 "
     "-o {d}/p.json", "is not valid JSON", "p.json"),
    ("policy names an unknown layer", "deploy --model {d}/" + NET + " --data {d}/" + GOOD
     + " --policy {d}/unknown_layer.json --device host -o {d}/build", "which the model does not have", "build"),
    ("precision the target lacks", "deploy --model {d}/" + NET + " --data {d}/" + GOOD
     + " --policy {d}/w2.json --device host -o {d}/build", "which target host cannot run", "build"),
    ("malformed target", "profile --device {d}/malformed.toml --model {d}/" + NET + " -o {d}/p.json",
     "is not valid TOML", "p.json"),
    ("unknown key in target", "profile --device {d}/unknown_key.toml --model {d}/" + NET + " -o {d}/p.json",
     "unknown key(s) frobnicate", "p.json"),
    ("unwritable output", "profile --device host --model {d}/" + NET + " -o '{d}/a file/p.json'",
     "not a writable folder", None),
    ("output folder is a file", "deploy --model {d}/" + NET + " --data {d}/" + GOOD
     + " --policy {d}/w2.json --device host -o '{d}/a file'", "is a file; choose a folder", None),
]


@pytest.mark.parametrize("command,needle,output", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_sentence_and_exit_1(files, command, needle, output):
    import shlex

    args = [a.replace("{d}", str(files)) for a in shlex.split(command)]
    before = set(files.iterdir())
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1, (r.exit_code, r.output, r.exception)
    assert isinstance(r.exception, SystemExit)  # ours, not an escaped error
    err = r.stderr.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "Traceback" not in r.output, err
    assert needle in err, err
    if output:
        assert not (files / output).exists()
    assert set(files.iterdir()) == before  # no output and no temporary file left behind


def test_layer_kinds_the_deployment_cannot_quantize_are_kept_float_and_said_so(files):
    r = CliRunner().invoke(main, ["layers", "--model", f"{files / 'nets.py'}:transposed"])
    assert r.exit_code == 0, r.output
    assert "a grouped transposed convolution (groups=2) has no TFLite kernel; kept float" in r.stdout


def test_files_that_cannot_be_read_are_named_with_the_reason(files, monkeypatch):
    # chmod 000 does not stop root (CI runs as root), so the read itself is made to fail
    import edgempq.data as data_mod
    import edgempq.models as models_mod
    from edgempq.errors import DataError, ModelError

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(models_mod.torch, "load", denied)
    with pytest.raises(ModelError, match="cannot be read \\(Permission denied\\); check its permissions"):
        models_mod.load_model(f"{files / 'nets.py'}:good", files / "good.pt")
    monkeypatch.setattr(data_mod.np, "load", denied)
    with pytest.raises(DataError, match="cannot be read \\(Permission denied\\); check its permissions"):
        data_mod.load_data(str(files / "good.npz"))


def test_an_output_that_is_a_fifo_or_device_is_refused_never_replaced(files, tmp_path):
    import os
    import stat

    from edgempq.errors import ConfigError
    from edgempq.files import atomic_write_bytes

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for out in (fifo, Path("/dev/null")):
        r = CliRunner().invoke(main, ["search", "--profile", str(files / "profile.json"), "--sensitivity",
                                      str(files / "sens.json"), "--size-kb", "100", "-o", str(out)])
        assert r.exit_code == 1 and "it exists and is not a regular file" in r.stderr, r.output
        with pytest.raises(ConfigError, match="not a regular file"):
            atomic_write_bytes(out, b"x")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and stat.S_ISCHR(os.lstat("/dev/null").st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo"]  # no temporary file left


@pytest.mark.parametrize("label", [np.int64(10**12), np.uint64(2**64 - 1), np.int64(100_000)])
def test_a_label_past_the_classes_edgempq_handles_is_refused_before_anything_is_built(tmp_path, label):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((4, 1, 8, 8), np.float32), y=np.array([0, 1, 2, label], dtype=np.asarray(label).dtype))
    r = CliRunner().invoke(main, ["data", "--data", str(path)])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
    assert f"y holds the label {int(label)}, past the 100000 classes" in r.stderr


def test_limits_are_checked_before_anything_is_allocated_or_run(tmp_path):
    r = CliRunner().invoke(main, ["data", "--data", "digits", "--input-shape", "1x20000x20000"])
    assert r.exit_code == 1 and "is 400,000,000 values a sample" in r.stderr, r.output
    r = CliRunner().invoke(main, ["validate", str(tmp_path), "--device", "host", "--runs", str(10**9)])
    assert r.exit_code == 1 and "1<=x<=100000" in r.stderr  # before the artifact is opened
    from edgempq.models import parse_shape

    assert parse_shape("3x4096x4096") == (3, 4096, 4096)


def test_an_npz_declaring_an_array_past_free_memory_is_refused_before_it_is_read(tmp_path):
    import io
    import zipfile

    header = np.lib.format.header_data_from_array_1_0(np.zeros((2, 2), np.float32))
    header["shape"] = (10**6, 1, 1000, 1000)  # 3.7 TB declared, 64 bytes stored
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    buf.write(bytes(64))
    deep = b"{'descr': '<f4', 'fortran_order': False, 'shape': " + b"(" * 10**5 + b")" * 10**5 + b"}"
    members = {  # the member as numpy finds it: x.npy, or x with a .npy's content
        "x.npy": (buf.getvalue(), "array x declares shape (1000000, 1, 1000, 1000) of float32, 3725.3 GiB"),
        "x": (buf.getvalue(), "array x declares shape (1000000, 1, 1000, 1000) of float32, 3725.3 GiB"),
        "x ": (b"not an array", "array x is not a readable .npy (the magic string is not correct"),
        "x.npy ": (b"\x93NUMPY\x02\x00" + len(deep).to_bytes(4, "little") + deep,
                   "array x is not a readable .npy (Header info length (200051) is large")}
    for name, (data, message) in members.items():
        path = tmp_path / "bomb.npz"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr(name.strip(), data)
        r = CliRunner().invoke(main, ["data", "--data", str(path)])
        assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
        assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    np.savez(path, x=np.ones((4, 8), np.complex64), y=np.zeros(4, np.int64))
    r = CliRunner().invoke(main, ["data", "--data", str(path)])
    assert r.exit_code == 1 and "x must hold real numbers, not complex64" in r.stderr, r.stderr


def test_inputs_that_are_no_regular_file_or_no_utf8_are_named_as_such(tmp_path):
    import os

    from edgempq.errors import ConfigError
    from edgempq.targets import load_target

    os.mkfifo(tmp_path / "in.toml")
    os.mkfifo(tmp_path / "in.npz")
    with pytest.raises(ConfigError, match="is not a regular file .a FIFO, device or socket.; give the path of a file"):
        load_target(str(tmp_path / "in.toml"))
    r = CliRunner().invoke(main, ["data", "--data", str(tmp_path / "in.npz")])
    assert r.exit_code == 1 and "is not a regular file (a FIFO, device or socket)" in r.stderr, r.stderr
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe name = 1")
    with pytest.raises(ConfigError, match="is not UTF-8 text; save it as UTF-8"):
        load_target(str(binary))
    r = CliRunner().invoke(main, ["data", "--data", "digits", "--input-shape", "1x" + "9" * 4000 + "x1"])
    assert r.exit_code == 1 and "is more than 10^15 values a sample" in r.stderr and len(r.stderr) < 300, r.stderr
