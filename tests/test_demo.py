"""End to end: the demo trains the real MNIST ResNet-8 once, caches it, and reports accuracy."""

import json
import subprocess
import sys

import pytest

from .test_cli import run


def _row(stdout: str, label: str) -> list[str]:
    line = next((ln for ln in stdout.splitlines() if ln.startswith(f"│ {label} ")), None)
    assert line, stdout
    return [c.strip() for c in line.strip("│ ").split("│")]


def _pct(cell: str) -> float:
    return float(cell.rstrip("%"))


@pytest.mark.slow
def test_demo_runs_the_whole_pipeline_then_reuses_its_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEMPQ_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    first = run("demo", "-o", str(out))
    assert "trained in" in first.stdout
    assert _pct(_row(first.stdout, "float32")[1]) >= 97.0  # the bar for mnist_resnet8
    assert _pct(_row(first.stdout, "int8, simulated")[1]) >= 96.5
    for name in ("profile.json", "sensitivity.json", "policy.json", "sweep.json", "artifact/model.tflite",
                 "artifact/deploy.json", "artifact/validation.json", "artifact/report.md", "artifact/report.html",
                 "artifact/report_layers.png", "artifact/report_latency.png", "artifact/report_pareto.png"):
        assert (out / name).is_file(), name
    val = json.loads((out / "artifact" / "validation.json").read_text())
    policy = json.loads((out / "policy.json").read_text())
    assert val["agreement"]["top1"] >= 0.99 and val["artifact_top1"] >= 0.95
    assert policy["predicted"]["size_bytes"] <= policy["budget"]["size_kb"] * 1024
    assert policy["predicted"]["latency_ms"] <= policy["budget"]["latency_ms"]
    assert val["latency"]["predicted_ms"] == pytest.approx(policy["predicted"]["latency_ms"], rel=1e-6)
    assert f"report: {out / 'artifact' / 'report.html'}" in first.stdout
    second = run("demo", "-o", str(out))
    assert "cached weights" in second.stdout
    assert _row(second.stdout, "float32")[1] == _row(first.stdout, "float32")[1]
    assert json.loads((out / "policy.json").read_text())["layers"] == policy["layers"]  # same profile, same policy


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
