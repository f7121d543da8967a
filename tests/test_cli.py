"""The command line as a user meets it: real subprocesses, exit codes, one-line errors."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

ENV_KEYS = ("PATH", "HOME", "EDGEMPQ_CACHE", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def run(*args, cwd=None, check=True):
    env = {k: os.environ[k] for k in ENV_KEYS if k in os.environ}
    p = subprocess.run([sys.executable, "-m", "edgempq", *args], capture_output=True, text=True,
                       cwd=cwd, env=env, timeout=1800)  # a hang guard, not a time limit
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def write_small_net(folder):
    """A user model in a file, `net.py:small`: conv-bn-relu, pooled, linear head on 1x8x8."""
    (folder / "net.py").write_text(textwrap.dedent("""
        import torch.nn as nn

        def small():
            return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(128, 10))
        small.input_shape = (1, 8, 8)
    """))


def test_help_lists_the_verbs_without_importing_torch_or_tensorflow():
    code = ("import sys\nfrom edgempq.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print([m for m in ('torch', 'tensorflow') if m in sys.modules])")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert p.stdout.strip().endswith("[]")
    for verb in ("train", "demo", "layers", "evaluate", "models", "data", "profile", "sensitivity", "search"):
        assert verb in p.stdout


@pytest.mark.parametrize("args,needle", [
    (["layers", "--model", "zoo:nope"], "unknown zoo model 'nope'"),
    (["data", "--data", "missing/dir.npz"], "does not exist"),
    (["evaluate", "--model", "zoo:mnist_resnet8", "--precision", "w9"], "unknown precision"),
    (["layers", "--model", "zoo:mnist_resnet8", "--input-shape", "1xfoo"], "CxHxW"),
    (["sensitivity", "--method", "nope", "--model", "zoo:mnist_resnet8"], "unknown sensitivity method 'nope'"),
    (["sensitivity", "--method", "hawq", "--model", "zoo:mnist_resnet8", "--param", "probes=x"], "must be an integer"),
    (["sensitivity", "--method", "ompq", "--model", "zoo:mnist_resnet8", "--precisions", "w8a8",
      "--device", "host"], "not both"),
    (["evaluate", "--model", "zoo:mnist_resnet8", "--act-range", "wide"],
     "Invalid value for '--act-range': 'wide' is not one of 'minmax', 'percentile', 'mse'; see `"),
    (["evaluate", "--model", "zoo:mnist_resnet8", "--ptq-param", "iters=5", "--ptq", "adaround", "--ptq-param",
      "iters=6"], "parameter iters of PTQ algorithm adaround is given twice"),
    (["sensitivity", "--method", "hawq", "--model", "zoo:mnist_resnet8", "--compute", "gpu"],
     "EDGEMPQ_DEVICE (or --compute) is 'gpu'; give cpu, cuda or cuda:N"),
    (["deploy", "--nonsense"], "No such option '--nonsense'"),
    (["nonsense"], "No such command 'nonsense'"),
    (["--nonsense"], "No such option '--nonsense'"),
])
def test_user_errors_are_one_line_and_exit_1(args, needle):
    p = run(*args, check=False)
    assert p.returncode == 1
    assert needle in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_layers_prints_and_writes_json(tmp_path):
    out = tmp_path / "layers.json"
    p = run("layers", "--model", "zoo:resnet18", "-o", str(out))
    assert "1,814,073,344 MACs" in p.stdout and "layer4.1.conv2" in p.stdout
    doc = json.loads(out.read_text())
    assert len(doc["layers"]) == 21 and doc["layers"][0]["name"] == "conv1"


def test_train_then_evaluate_a_user_model_from_a_file(tmp_path):
    write_small_net(tmp_path)
    spec, w = f"{tmp_path / 'net.py'}:small", tmp_path / "w.pt"
    p = run("train", "--model", spec, "--data", "digits", "--epochs", "2", "-o", str(w))
    assert "test top-1" in p.stdout and set(torch.load(w, weights_only=True)) >= {"0.weight", "5.bias"}
    p = run("evaluate", "--model", spec, "--weights", str(w), "--data", "digits",
            "--precision", "w8a8", "--precision", "w4a16", "--act-range", "mse")
    assert "float" in p.stdout and "w8a8" in p.stdout and "w4a16" in p.stdout and "PTQ gptq" in p.stdout
    assert not list(tmp_path.glob(".w.pt*"))  # no temporary left behind
    p = run("evaluate", "--model", spec, "--weights", str(w), "--data", "digits", "--precision", "w3a8",
            "--ptq", "adaround", "--ptq-param", "iters=50", "--bias-correction")
    assert "w3a8" in p.stdout and "PTQ adaround (iters=50), with bias correction" in p.stdout
    p = run("evaluate", "--model", spec, "--weights", str(w), "--data", "digits", "--precision", "w4a8",
            "--ptq", "adaround", "--ptq-param", "iter=50", check=False)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "PTQ algorithm adaround has no parameter 'iter'; its parameters are: granularity='layer'" in p.stderr


def test_sensitivity_scores_a_user_model_and_writes_json(tmp_path):
    write_small_net(tmp_path)
    out = tmp_path / "s.json"
    p = run("sensitivity", "--method", "csmpq", "--model", f"{tmp_path / 'net.py'}:small", "--data", "digits",
            "--device", "tflm-host", "--param", "documents=classes", "-o", str(out))
    said = " ".join(p.stdout.split())  # the table's title wraps to its width
    assert "penalty, lower is better" in said and "scored 5 (layer, precision) pairs" in p.stdout
    doc = json.loads(out.read_text())
    assert doc["method"] == "csmpq" and doc["params"]["documents"] == "classes" and doc["data_id"]
    assert {r["precision"] for r in doc["rows"] if r["layer"] == "5"} == {"w8a8", "w8a16"}


def test_data_describes_splits():
    p = run("data", "--data", "digits", "--input-shape", "1x28x28")
    assert "1797 samples of shape 1x28x28" in p.stdout and "calibration" in p.stdout


def test_models_lists_the_zoo():
    p = run("models")
    assert all(f"zoo:{n}" in p.stdout for n in ("resnet18", "mobilenet_v2", "mnist_resnet8", "mnist_mobilenet"))


def test_targets_lists_built_in_and_template_targets():
    p = run("targets")
    for name in ("host", "host-4t", "tflm-host", "linux-ssh (template)", "android-adb (template)"):
        assert name in p.stdout


@pytest.mark.slow
def test_profile_prints_layer_costs_and_whole_model_errors(tmp_path):
    (tmp_path / "net.py").write_text(textwrap.dedent("""
        import torch.nn as nn

        def net():
            return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1),
                                 nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 4))
    """))
    out = tmp_path / "profile.json"
    p = run("profile", "--device", "tflm-host", "--model", f"{tmp_path / 'net.py'}:net", "--input-shape",
            "1,3,16,16", "-o", str(out))
    assert "w8a8 ms" in p.stdout and "uniform  w8a8: whole model" in p.stdout
    doc = json.loads(out.read_text())
    # integer precisions only on a microcontroller: conv w8a8/w4a8/w8a16, linear w8a8/w8a16
    assert doc["target"]["name"] == "tflm-host" and len(doc["rows"]) == 2 * 3 + 2
    # the latency model is fitted on random mixed policies timed whole, and says how well it fits them
    assert len(doc["probes"]) == 24 and "latency model (fitted on" in p.stdout and "24 of them random mixes" in p.stdout
    p = run("profile", "--device", "tflm-host", "--model", f"{tmp_path / 'net.py'}:net", "--input-shape",
            "1,3,16,16", "--probes", "0", "-o", str(tmp_path / "p0.json"))
    assert "solved from the uniform and alternating models" in p.stdout
    assert "probes" not in json.loads((tmp_path / "p0.json").read_text())
    # then the rest of the search: a sensitivity on labelled data of the model's input, and the ILP
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(80, 3, 16, 16)).astype(np.float32), y=np.arange(80) % 4)
    sens, pol = tmp_path / "s.json", tmp_path / "policy.json"
    run("sensitivity", "--method", "ompq", "--model", f"{tmp_path / 'net.py'}:net", "--data", str(tmp_path / "d.npz"),
        "--device", "tflm-host", "-o", str(sens))
    whole = doc["whole_ms"]["w8a8"]
    p = run("search", "--profile", str(out), "--sensitivity", str(sens), "--latency-ms", str(whole * 3),
            "--ram-kb", "64", "-o", str(pol))
    assert "predicted latency" in p.stdout and "(budget 64)" in p.stdout
    assert "against all-int8" in p.stdout and "(measured)" in p.stdout and "predicted TFLite Micro arena" in p.stdout
    assert "tflm-host's timings are of the CPU that profiled it" in p.stdout
    assert {r["layer"] for r in json.loads(pol.read_text())["layers"]} == {"0", "2", "5"}
    p = run("search", "--profile", str(out), "--sensitivity", str(sens), "--size-kb", "64", "--pin", "2=w4a8",
            "--fixed", "5", "-o", str(pol))
    assert "kept out of the search: 2 at w4a8, 5 at w8a16" in p.stdout
    assert "limits of target tflm-host applied: ram_kb = 256, flash_kb = 1024" in p.stdout
    picked = {r["layer"]: r["precision"] for r in json.loads(pol.read_text())["layers"]}
    assert picked["2"] == "w4a8" and picked["5"] == "w8a16"  # the widest tflm-host offers a linear layer
    p = run("search", "--profile", str(out), "--sensitivity", str(sens), "--size-kb", "64", "--pin", "2=f16",
            check=False)
    assert p.returncode == 1 and "--pin 2=f16: tflm-host does not offer f16 for that layer" in p.stderr
    p = run("search", "--profile", str(out), "--sensitivity", str(sens), "--latency-ms", "0.000001", check=False)
    assert p.returncode == 1 and "raise latency_ms to at least" in p.stderr and "Traceback" not in p.stderr
    p = run("search", "--profile", str(out), "--sensitivity", str(sens), "--sweep", "size_kb=1:40:3",
            "-o", str(tmp_path / "front.json"))
    assert json.loads((tmp_path / "front.json").read_text())["sweep"] == "size_kb"
    assert (tmp_path / "front.png").read_bytes()[:4] == b"\x89PNG"
    assert all(r["ram_bytes"] > 0 for r in doc["rows"]) and set(doc["whole_ms"]) == {"w8a8", "w4a8", "w8a16"}
    assert set(doc["whole_arena_bytes"]) == set(doc["whole_bytes"]) == {"w8a8", "w4a8", "w8a16"}


def test_profile_of_a_template_target_is_a_clear_error():
    p = run("profile", "--device", "linux-ssh", "--model", "zoo:mnist_resnet8", check=False)
    assert p.returncode == 1 and "is a template" in p.stderr and "Traceback" not in p.stderr


def test_the_clis_ptq_default_is_the_librarys():
    from edgempq.clikit import PTQ_DEFAULT
    from edgempq.quant import DEFAULT_WEIGHTS, QuantConfig

    assert PTQ_DEFAULT == DEFAULT_WEIGHTS == QuantConfig().weights


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_failure_after_a_swallowed_interrupt_is_reported_as_the_interrupt(monkeypatch, signum, code):
    """A library that catches the KeyboardInterrupt and then fails must not turn Ctrl-C into an error."""
    import click
    from click.testing import CliRunner

    from edgempq import stop
    from edgempq.clikit import Group
    from edgempq.errors import EdgeMPQError

    monkeypatch.setattr(stop, "_requested", [])

    @click.group(cls=Group)
    def cli():
        pass

    @cli.command()
    def convert():
        stop.request(signum)  # the signal arrived, and the converter swallowed its KeyboardInterrupt
        raise EdgeMPQError("the converter failed")

    @cli.command()
    def plain():
        raise EdgeMPQError("the converter failed")

    result = CliRunner().invoke(cli, ["convert"])
    assert result.exit_code == code and "interrupted" in result.output and "converter failed" not in result.output
    monkeypatch.setattr(stop, "_requested", [])
    result = CliRunner().invoke(cli, ["plain"])
    assert result.exit_code == 1 and "error: the converter failed" in result.output
