"""Profiling on the real local runtimes: identical layers measured once, the cache reused, an
interrupted profile resumed without re-measuring what it finished."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import edgempq.profile as prof
from edgempq.layers import trace
from edgempq.models import load_model
from edgempq.rounds import ROUNDS
from edgempq.schema import CostTable
from edgempq.targets import load_target

NET = textwrap.dedent("""
    import torch.nn as nn

    def net():
        return nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),          # same signature as the one before
            nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8), nn.ReLU(),
            nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    net.input_shape = (3, 12, 12)
""")


@pytest.fixture
def net_spec(tmp_path):
    (tmp_path / "net.py").write_text(NET)
    return f"{tmp_path / 'net.py'}:net"


def test_identical_layers_are_measured_once_and_the_cache_is_reused(net_spec, tmp_path, monkeypatch, counted):
    monkeypatch.setenv("EDGEMPQ_CACHE", str(tmp_path / "cache"))
    m = load_model(net_spec)
    layers = trace(m.module, m.input_shape)
    target = load_target("host")
    # 2 distinct conv signatures x 6 + dwconv x 4 + linear x 6 (the repeated conv is not measured twice)
    expected = 2 * 6 + 4 + 6
    table = prof.profile(layers, target, m.model_hash)
    assert len(counted.built) == len(table.rows) == expected
    assert len(counted.timed) == expected * ROUNDS  # each timed in every round
    assert all(table.row(la.signature, p) for la in layers for p in target.allowed(la.kind))
    again = prof.profile(layers, target, m.model_hash)
    assert len(counted.built) == expected and len(counted.timed) == expected * ROUNDS  # nothing measured again
    assert again.rows == table.rows
    fresh = prof.profile(layers, target, m.model_hash, use_cache=False)
    assert len(counted.built) == 2 * expected and len(fresh.rows) == expected
    loaded = CostTable.load(table.save(tmp_path / "profile.json"))
    assert loaded == table


def test_rows_have_the_precision_the_device_really_ran(net_spec, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEMPQ_CACHE", str(tmp_path / "cache"))
    m = load_model(net_spec)
    table = prof.profile(trace(m.module, m.input_shape), load_target("tflm-host"), m.model_hash)
    by = {(r.signature.split()[0], r.precision): r for r in table.rows}
    assert by[("conv", "w4a8")].weight_bytes < by[("conv", "w8a8")].weight_bytes
    assert ("conv", "f32") not in by  # a microcontroller target offers no float unless its file says so
    assert all(r.ram_bytes and r.ram_bytes > 0 for r in table.rows)  # TFLite Micro arena measured


def test_a_damaged_cache_row_is_measured_again(net_spec, tmp_path, monkeypatch, counted):
    monkeypatch.setenv("EDGEMPQ_CACHE", str(tmp_path / "cache"))
    m = load_model(net_spec)
    layers = trace(m.module, m.input_shape)
    prof.profile(layers, load_target("host"), m.model_hash)
    files = sorted(f for f in (tmp_path / "cache" / "profiles").rglob("*.json") if not f.stem.startswith("round-"))
    doc = json.loads(files[0].read_text())
    doc["row"]["latency_ms"] = 0.000001  # a hand edit: checksum no longer matches
    files[0].write_text(json.dumps(doc))
    files[1].write_text(files[1].read_text()[:20])  # truncated
    round1 = files[0].with_name(f"round-{files[0].stem}-1.json")
    round1.write_text(round1.read_text()[:20])  # and one round of the first: only that round is timed again
    built, timed = len(counted.built), len(counted.timed)
    prof.profile(layers, load_target("host"), m.model_hash)
    assert len(counted.built) == built + 2 and counted.timed[timed:] == [(files[0].stem, 1)]


def test_a_killed_profile_resumes_without_measuring_finished_rows(net_spec, tmp_path, monkeypatch, counted):
    cache = tmp_path / "cache"
    env = {**os.environ, "EDGEMPQ_CACHE": str(cache)}
    p = subprocess.Popen([sys.executable, "-m", "edgempq", "profile", "--device", "host", "--model", net_spec,
                          "-o", str(tmp_path / "p.json")], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None and len(list(cache.rglob("*.json"))) < 5:
        time.sleep(0.05)
    assert p.poll() is None, "the profile ended before it could be interrupted"
    p.send_signal(signal.SIGKILL)
    p.wait()
    done = {f.stem for f in cache.rglob("*.json")}
    rounds = {d for d in done if d.startswith("round-") and not d.startswith("round-whole-")}  # the rows' timings
    assert 5 <= len(rounds) < 22 * ROUNDS and not (tmp_path / "p.json").exists()
    for f in cache.rglob("*.json"):  # what the kill left is whole: rename is atomic
        assert "sha256" in json.loads(f.read_text())
    monkeypatch.setenv("EDGEMPQ_CACHE", str(cache))
    m = load_model(net_spec)
    table = prof.profile(trace(m.module, m.input_shape), load_target("host"), m.model_hash)
    assert not {f"round-{k}-{r}" for k, r in counted.timed} & done  # nothing timed before the kill was timed again
    assert len(counted.timed) + len(rounds) == len(table.rows) * ROUNDS == 22 * ROUNDS
