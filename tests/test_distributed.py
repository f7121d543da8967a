"""The heavy sensitivity stages under torchrun with real processes (gloo on this CPU): the work
is split over the ranks and gathered, and the file rank 0 writes is byte for byte the one a
single process writes; the other ranks print and write nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
MODEL = ["--model", "zoo:mnist_cnn?input_size=8", "--data", "digits", "--precisions", "w4a8,w8a8"]
METHODS = {"measured": ["samples=48"], "clado": ["samples=48"],
           # probes in rounds of two, stopping early inside a round, over two batches: the draws and
           # the stop must still be one process's
           "hawq": ["probes=9", "tol=0.02", "batches=2", "batch_size=16"]}


def _run(tmp: Path, procs: int, method: str) -> tuple[bytes, subprocess.CompletedProcess]:
    out = tmp / f"{method}-{procs}.json"
    args = [str(BIN / "edgempq"), "sensitivity", "--method", method, *MODEL, "-o", str(out)]
    for p in METHODS[method]:
        args += ["--param", p]
    if procs > 1:
        args = [str(BIN / "torchrun"), f"--nproc_per_node={procs}", "--standalone", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # torchrun's default: one thread a rank, here for both
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    r = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return out.read_bytes(), r


@pytest.mark.parametrize("method", sorted(METHODS))
def test_two_processes_give_one_process_result(tmp_path, method):
    one, _ = _run(tmp_path, 1, method)
    two, r = _run(tmp_path, 2, method)
    assert two == one
    assert r.stdout.count("wrote ") == 1  # rank 1 printed nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{method}-1.json", f"{method}-2.json"]


def _torchrun(procs: int, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    if procs > 1:
        args = [str(BIN / "torchrun"), f"--nproc_per_node={procs}", "--standalone", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    r = subprocess.run(args, capture_output=True, text=True, env=env, cwd=cwd, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "terminate called" not in r.stderr  # the ranks leave the group together
    return r


def test_data_parallel_training_learns_what_one_process_learns(tmp_path):
    """Float training with BatchNorm, QAT, and LIMPQ's and GMPQ's steps (their first two
    steps' gradients), batches split 5/4, 4/3 or 2/1 over two ranks."""
    import torch

    worker = Path(__file__).parent / "dp_worker.py"
    for procs in (1, 2):
        python = [sys.executable] if procs == 1 else []  # torchrun runs a script with its own Python
        _torchrun(procs, [*python, str(worker), str(tmp_path / f"{procs}.pt")], tmp_path)
    one, two = (torch.load(tmp_path / f"{p}.pt") for p in (1, 2))
    for job in one:
        assert one[job].keys() == two[job].keys() and len(one[job]) > 4, job
        for key in one[job]:
            torch.testing.assert_close(two[job][key], one[job][key], rtol=1e-4, atol=1e-5, msg=f"{job} {key}")


def test_train_and_deploy_under_torchrun(tmp_path):
    """`edgempq train` and deploy's QAT data-parallel: one weights file, equal to one process's;
    one deploy folder written by rank 0 alone, the other rank silent."""
    import torch

    train = [str(BIN / "edgempq"), "train", "--model", "zoo:mnist_cnn?input_size=8", "--data", "digits",
             "--epochs", "1", "--batch-size", "50", "--lr", "0.02", "--compute", "cpu"]  # read before the group
    _torchrun(1, [*train, "-o", "one.pt"], tmp_path)
    r = _torchrun(2, [*train, "-o", "two.pt"], tmp_path)
    assert r.stdout.count("wrote ") == 1
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    for key in one:
        torch.testing.assert_close(two[key].float(), one[key].float(), rtol=1e-4, atol=1e-5, msg=key)
    from edgempq.schema import Policy, Precision

    names = ["features.0.0", "features.1.0", "features.2.0", "features.3.0", "features.4.0", "fc"]
    policy = Policy({n: Precision.parse("w4a8" if i % 2 else "w8a8") for i, n in enumerate(names)})
    (tmp_path / "policy.json").write_text(json.dumps(policy.to_dict()))
    r = _torchrun(2, [str(BIN / "edgempq"), "deploy", "--model", "zoo:mnist_cnn?input_size=8", "--weights", "two.pt",
                      "--data", "digits", "--policy", "policy.json", "--device", "host", "--qat-epochs", "1",
                      "-o", "out"], tmp_path)
    assert r.stdout.count("wrote out/") == 1 and "rank 1" not in r.stderr
    doc = json.loads((tmp_path / "out" / "deploy.json").read_text())
    assert doc["qat_epochs"] == 1 and (tmp_path / "out" / "model.tflite").stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.pt", "out", "policy.json", "two.pt"]


def test_one_process_needs_no_process_group():
    from edgempq import distributed as d

    assert d.world() == d.World() and not d.active() and d.ranks() == 1
    assert list(d.share(5)) == [0, 1, 2, 3, 4] and d.gather_items(2, {0: "a", 1: "b"}) == ["a", "b"]
    assert d.share_groups({3: 4, 1: 9}) == {1, 3} and d.map_shared([1, 2, 3], lambda v: v * v) == [1, 4, 9]


def test_a_bad_torchrun_environment_is_one_sentence(monkeypatch):
    from edgempq import distributed as d
    from edgempq.errors import ConfigError

    monkeypatch.setenv("RANK", "1")
    assert d.is_main()  # a stray RANK alone: still the only process, which writes
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match="RANK, WORLD_SIZE and LOCAL_RANK must be integers"):
        d.world()
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("EDGEMPQ_DEVICE", "cuda:0")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="this machine has no CUDA device; give cpu"):
            d.device()
