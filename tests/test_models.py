import textwrap

import pytest
import torch
from torch import nn

from edgempq.errors import ModelError
from edgempq.models import load_model, parse_shape

FACTORY = textwrap.dedent("""
    import torch.nn as nn

    def build():
        return nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    build.input_shape = (1, 8, 8)

    def boom():
        raise RuntimeError("no GPU here")

    def not_a_model():
        return 42
""")


@pytest.fixture
def factory_file(tmp_path):
    p = tmp_path / "my model.py"  # a space in the path must not matter
    p.write_text(FACTORY)
    return p


def test_zoo_model_declares_shape_classes_and_dataset():
    m = load_model("zoo:mnist_resnet8")
    assert m.input_shape == (1, 28, 28) and m.num_classes == 10 and m.dataset == "mnist"
    assert not m.module.training


def test_zoo_options_change_classes_and_input_size():
    m = load_model("zoo:resnet18?num_classes=10&input_size=96")
    assert m.input_shape == (3, 96, 96) and m.module.fc.out_features == 10
    assert m.module(torch.zeros(1, 3, 96, 96)).shape == (1, 10)


@pytest.mark.parametrize("spec,needle", [
    ("zoo:resnet99", "unknown zoo model"),
    ("zoo:resnet18?depth=3", "has no option"),
    ("zoo:resnet18?num_classes=-2", "positive integer"),
    ("zoo:mnist_mlp?num_classes=1000000000", r"has 129,000,233,856 weights \(480.6 GiB\), more than half"),
    ("zoo:mnist_mlp?in_channels=99999999", "past the 67,108,864 edgempq allocates"),
    ("zoo:mnist_mlp?num_classes=" + "9" * 5000, "positive integer, not '9999999999999999999999999999999999999999'$"),
    ("no_colon_here", "not understood"),
    ("missing/file.py:build", "does not exist"),
    ("edgempq_no_such_pkg.models:build", "cannot import"),
])
def test_bad_model_specs_are_clear_errors(spec, needle):
    with pytest.raises(ModelError, match=needle):
        load_model(spec)


def test_factory_from_file_path(factory_file):
    m = load_model(f"{factory_file}:build")
    assert isinstance(m.module, nn.Sequential) and m.input_shape == (1, 8, 8)


@pytest.mark.parametrize("attr,needle", [("nope", "no callable"), ("boom", "raised RuntimeError: no GPU here"),
                                         ("not_a_model", "not a torch.nn.Module")])
def test_factory_errors_name_the_factory(factory_file, attr, needle):
    with pytest.raises(ModelError, match=needle):
        load_model(f"{factory_file}:{attr}")


def test_factory_from_package_module(tmp_path, monkeypatch):
    pkg = tmp_path / "userpkg_edgempq_test"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    m = load_model("userpkg_edgempq_test.nets:build")
    assert m.module(torch.zeros(2, 1, 8, 8)).shape == (2, 3)


def test_weights_round_trip_and_wrapped_checkpoint(tmp_path):
    a = load_model("zoo:mnist_mobilenet")
    torch.save(a.module.state_dict(), tmp_path / "w.pt")
    torch.save({"epoch": 3, "state_dict": a.module.state_dict()}, tmp_path / "ckpt.pt")
    for f in ("w.pt", "ckpt.pt"):
        b = load_model("zoo:mnist_mobilenet", tmp_path / f)
        assert b.model_hash == a.model_hash


def test_model_hash_changes_with_weights(tmp_path):
    torch.manual_seed(1)  # a zoo model without weights is initialised alike in every run (torchrun's ranks)
    a = load_model("zoo:mnist_resnet8")
    assert load_model("zoo:mnist_resnet8").model_hash == a.model_hash
    state = a.module.state_dict()
    state["fc.weight"] = state["fc.weight"] + 1
    torch.save(state, tmp_path / "w.pt")
    assert load_model("zoo:mnist_resnet8", tmp_path / "w.pt").model_hash != a.model_hash


def test_pickled_module_is_refused_as_unsafe(tmp_path):
    torch.save(load_model("zoo:mnist_resnet8").module, tmp_path / "whole.pt")
    with pytest.raises(ModelError, match="cannot be loaded safely"):
        load_model("zoo:mnist_resnet8", tmp_path / "whole.pt")


def test_weights_that_do_not_fit_name_the_problem(tmp_path):
    torch.save(load_model("zoo:mnist_resnet8").module.state_dict(), tmp_path / "r8.pt")
    with pytest.raises(ModelError, match="does not fit the model"):
        load_model("zoo:mnist_mobilenet", tmp_path / "r8.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file at all")
    with pytest.raises(ModelError, match="not a PyTorch weights file"):
        load_model("zoo:mnist_resnet8", tmp_path / "junk.pt")
    with pytest.raises(ModelError, match="does not exist"):
        load_model("zoo:mnist_resnet8", tmp_path / "absent.pt")


def test_zoo_uses_torchvision_module_names_and_sizes():
    r = load_model("zoo:resnet18").module
    keys = set(r.state_dict())
    assert len(keys) == 122  # torchvision resnet18: 62 parameters + 60 BatchNorm buffers
    assert {"conv1.weight", "bn1.running_var", "layer2.0.downsample.0.weight",
            "layer2.0.downsample.1.num_batches_tracked", "layer4.1.conv2.weight", "fc.bias"} <= keys
    assert sum(p.numel() for p in r.parameters()) == 11_689_512
    mb = load_model("zoo:mobilenet_v2").module
    assert {"features.0.0.weight", "features.1.conv.0.0.weight", "features.1.conv.1.weight",
            "features.1.conv.2.running_var", "features.2.conv.0.1.weight", "features.18.0.weight",
            "classifier.1.weight"} <= set(mb.state_dict())
    assert sum(p.numel() for p in mb.parameters()) == 3_504_872


@pytest.mark.parametrize("text,shape", [("3x224x224", (3, 224, 224)), ("1,28,28", (1, 28, 28))])
def test_parse_shape(text, shape):
    assert parse_shape(text) == shape


def test_parse_shape_rejects_garbage():
    with pytest.raises(ModelError, match="CxHxW"):
        parse_shape("3xax2")


@pytest.mark.parametrize("spec", ["zoo:mobilenet_v2?width_mult=abc", "zoo:mobilenet_v2?width_mult=nan",
                                  "zoo:mobilenet_v2?width_mult=-1"])
def test_bad_float_zoo_option_is_clear(spec):
    with pytest.raises(ModelError, match="positive number"):
        load_model(spec)


def test_module_that_fails_to_import_is_clear(tmp_path, monkeypatch):
    (tmp_path / "broken_edgempq_mod.py").write_text("def f(:\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModelError, match="failed to import.*SyntaxError"):
        load_model("broken_edgempq_mod:f")


def test_model_file_may_import_its_siblings(tmp_path):
    (tmp_path / "blocks_sibling.py").write_text("import torch.nn as nn\nBLOCK = nn.Linear\n")
    (tmp_path / "net.py").write_text("from blocks_sibling import BLOCK\n\ndef build():\n    return BLOCK(4, 2)\n")
    assert load_model(f"{tmp_path / 'net.py'}:build").module.out_features == 2
