"""End to end: the demo trains the real MNIST ResNet-8 once, caches it, and reports accuracy."""

import re
import subprocess
import sys

import pytest

from .test_cli import run


def _top1(stdout: str, label: str) -> float:
    m = re.search(rf"{label}\s*│\s*([\d.]+)%", stdout)
    assert m, stdout
    return float(m.group(1))


@pytest.mark.slow
def test_demo_trains_once_then_reuses_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEMPQ_CACHE", str(tmp_path / "cache"))
    first = run("demo")
    assert "trained in" in first.stdout
    assert _top1(first.stdout, "float") >= 97.0  # the bar for mnist_resnet8
    assert _top1(first.stdout, "w8a8") >= 96.5
    assert _top1(first.stdout, "w2a8") < _top1(first.stdout, "w8a8")
    second = run("demo")
    assert "cached weights" in second.stdout
    assert _top1(second.stdout, "float") == _top1(first.stdout, "float")
    assert _top1(second.stdout, "w4a8") == _top1(first.stdout, "w4a8")


@pytest.mark.slow
def test_wheel_carries_the_calibration_manifests(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), "."], check=True, capture_output=True)
    wheel = next(tmp_path.glob("edgempq-*.whl"))
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                    str(wheel)], check=True, capture_output=True)
    code = ("import edgempq.data as d; print(d.__file__); print(d.builtin_names()); "
            "print(d.load_data('digits').x.shape)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})
    assert str(target) in p.stdout and "['digits', 'mnist']" in p.stdout and "(1797, 1, 8, 8)" in p.stdout
