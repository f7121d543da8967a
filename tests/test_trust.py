"""The store of model code the user has run (edgempq/trust.py): what validate may import from a
deploy folder without being told."""

from __future__ import annotations

import json

import pytest

from edgempq import trust


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEMPQ_CACHE", str(tmp_path / "cache"))
    return tmp_path


def test_a_deployed_file_is_trusted_until_it_changes(store):
    net = store / "net.py"
    net.write_text("def make():\n    pass\n")
    spec = f"{net}:make"
    assert not trust.trusted(spec)
    trust.remember(spec)
    assert trust.trusted(spec) and not trust.trusted(f"{net}:other")
    net.write_text("def make():\n    import os\n")
    assert not trust.trusted(spec)  # edited since it was deployed
    assert not trust.trusted(f"{store / 'gone.py'}:make")


def test_modules_by_name_zoo_always_and_a_broken_store_trusts_nothing(store):
    assert trust.trusted("zoo:mnist_resnet8") and trust.fingerprint("zoo:x") is None
    assert not trust.trusted("os:abort")
    trust.remember("mypkg.nets:make")
    assert trust.trusted("mypkg.nets:make") and not trust.trusted("mypkg.nets:other")
    for text in ("{", '{"a": 1}', "[" * 100000):
        trust.store_path().write_text(text)
        assert not trust.trusted("mypkg.nets:make")
    trust.remember("mypkg.nets:make")  # a broken store is written anew
    assert json.loads(trust.store_path().read_text()) == ["module mypkg.nets:make"]


def test_the_store_keeps_the_newest_entries(store, monkeypatch):
    monkeypatch.setattr(trust, "MAX_ENTRIES", 3)
    for i in range(5):
        trust.remember(f"pkg.m{i}:make")
    assert [trust.trusted(f"pkg.m{i}:make") for i in range(5)] == [False, False, True, True, True]
    trust.remember("pkg.m2:make")  # remembered again: the newest
    assert json.loads(trust.store_path().read_text())[-1] == "module pkg.m2:make"
