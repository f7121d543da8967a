"""Property tests over every reader of a file a user hands us (JSON and TOML): a random
document, or a real one with random changes, never raises anything but edgempq's own error
(one clear sentence on the command line), never a KeyError, TypeError or AttributeError."""

from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from edgempq.errors import EdgeMPQError

_scalar = st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False) | st.text(max_size=12)
_json = st.recursive(_scalar, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids,
                                                                                         max_size=4), max_leaves=25)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _real_profile() -> dict:
    from edgempq.schema import CostRow, CostTable, Layer
    from edgempq.targets import load_target

    la = Layer("fc", "linear", (1, 8), (1, 4), 8, 4, (), (), (), (), 1, True, 36, 32, "linear 8 4")
    rows = tuple(CostRow("linear 8 4", p, 0.01, 0.009, 0.012, 30, 40, 1000) for p in ("f32", "w8a8"))
    return CostTable(load_target("host"), {"cpu": "x"}, "abc", (la,), rows, {"f32": 0.02}).to_dict()


def _mutate(doc: dict, data) -> dict:
    """The real document with one key removed, retyped or added, or one number deep inside it
    changed (a latency, a size): the hand edits users make."""
    doc = json.loads(json.dumps(doc))
    keys = sorted(doc)
    what = data.draw(st.sampled_from(["drop", "retype", "add", "number", "number"]))
    if what == "number":  # a value inside a row or a layer, of the same type, so only the checksum can tell
        row = doc[data.draw(st.sampled_from(["rows", "layers"]))][0]
        key = data.draw(st.sampled_from(sorted(k for k, v in row.items() if isinstance(v, int | float)
                                               and not isinstance(v, bool))))
        row[key] = data.draw(st.integers(0, 10**6)) if isinstance(row[key], int) else data.draw(
            st.floats(0, 1e6, allow_nan=False))
        return doc
    key = data.draw(st.sampled_from(keys))
    if what == "drop":
        doc.pop(key)
    elif what == "retype":
        doc[key] = data.draw(_json)
    else:
        doc[data.draw(st.text(max_size=8))] = data.draw(_json)
    return doc


def _json_readers():
    from edgempq.schema import Budget, CostTable, Layer, Policy, Sensitivity

    return {"profile": CostTable.from_json, "sensitivity": Sensitivity.from_json, "policy": Policy.from_json,
            "budget": lambda t: Budget.from_dict(json.loads(t)), "layer": lambda t: Layer.from_dict(json.loads(t))}


@FUZZ
@given(reader=st.sampled_from(["profile", "sensitivity", "policy", "budget", "layer"]), doc=_json)
def test_random_json_never_escapes_as_anything_but_our_error(reader, doc):
    with contextlib.suppress(EdgeMPQError):
        _json_readers()[reader](json.dumps(doc))


@FUZZ
@given(data=st.data())
def test_a_real_profile_edited_at_random_is_refused_clearly(data):
    from edgempq.schema import CostTable

    real = _real_profile()
    doc = _mutate(real, data)
    assume(doc != real)
    try:
        CostTable.from_json(json.dumps(doc))
    except EdgeMPQError:
        return
    raise AssertionError(f"an edited profile was used: {sorted(doc)}")  # the checksum no longer matches


@FUZZ
@given(text=st.text(max_size=200))
def test_random_text_as_json_file_is_our_error(text):
    from edgempq.schema import CostTable, Policy, Sensitivity

    for cls in (CostTable, Sensitivity, Policy):
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "f.json"
            p.write_text(text)
            with contextlib.suppress(EdgeMPQError):
                cls.load(p)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v) if isinstance(v, int) or v == v and abs(v) != float("inf") else "0"
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))  # a TOML basic string


_toml_leaf = st.booleans() | st.integers(-1000, 10**6) | st.floats(allow_nan=False, allow_infinity=False) | \
    st.text(max_size=12) | st.lists(st.sampled_from(["w8a8", "f32", "w4a8", "x", 3]), max_size=3)
_TARGET_KEYS = ["name", "backend", "description", "threads", "warmup", "runs", "max_seconds", "flash_kb", "ram_kb",
                "template", "bogus"]
_MANIFEST_KEYS = ["name", "description", "source", "path", "scale", "mean", "std", "resize", "gray_to_rgb", "seed",
                  "bogus"]


def _toml_doc(data, keys: list[str], tables: dict[str, list[str]]) -> str:
    lines = [f"{k} = {_toml_value(data.draw(_toml_leaf))}" for k in data.draw(st.lists(st.sampled_from(keys),
                                                                                         unique=True, max_size=8))]
    for table, sub in tables.items():
        if data.draw(st.booleans()):
            lines.append(f"[{table}]")
            lines += [f"{k} = {_toml_value(data.draw(_toml_leaf))}" for k in data.draw(
                st.lists(st.sampled_from(sub), unique=True, max_size=4))]
    return "\n".join(lines) + "\n"


@FUZZ
@given(data=st.data())
def test_random_target_toml_is_our_error(data):
    from edgempq.targets import load_target

    text = data.draw(st.text(max_size=80)) if data.draw(st.booleans()) else _toml_doc(
        data, _TARGET_KEYS, {"precisions": ["conv", "dwconv", "linear", "lstm"],
                             "connection": ["host", "port", "user", "key", "python", "timeout_s", "x"]})
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "t.toml"
        p.write_text(text)
        with contextlib.suppress(EdgeMPQError):
            load_target(str(p))


@FUZZ
@given(data=st.data())
def test_random_data_manifest_is_our_error(data):
    from edgempq.data import load_data

    text = data.draw(st.text(max_size=80)) if data.draw(st.booleans()) else _toml_doc(
        data, _MANIFEST_KEYS, {"splits": ["calibration", "validation", "test", "train"]})
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "m.toml"
        p.write_text(text)
        with contextlib.suppress(EdgeMPQError):
            load_data(str(p))


@FUZZ
@given(doc=_json)
def test_random_deploy_report_is_ignored_or_our_error(doc):
    from edgempq.pipeline import open_artifact

    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "model.tflite").write_bytes(b"\0\0\0\0TFL3" + bytes(32))
        (Path(d) / "deploy.json").write_text(json.dumps(doc))
        with contextlib.suppress(EdgeMPQError):
            assert open_artifact(d).deploy is None  # its checksum cannot match: a random report is never used


HOSTILE_JSON = {"nested": "[" * 100000 + "]" * 100000, "huge integer": '{"a": ' + "9" * 5000 + "}",
                "nested object": '{"a": ' * 50000 + "1" + "}" * 50000}


def test_hostile_json_and_toml_are_one_sentence_in_every_reader(tmp_path):
    """Documents past the parser's depth or with integers of thousands of digits: our error, named."""
    import pytest

    from edgempq.errors import ConfigError
    from edgempq.files import read_json, read_toml
    from edgempq.schema import CostTable, Policy, Sensitivity

    for name, text in HOSTILE_JSON.items():
        p = tmp_path / "f.json"
        p.write_text(text)
        with pytest.raises(ConfigError, match=f"{p} is not JSON edgempq reads") as e:
            read_json(p, "policy")
        assert ("digits" in str(e.value)) == (name == "huge integer")
        for cls in (CostTable, Sensitivity, Policy):
            with pytest.raises(ConfigError):
                cls.load(p)
            with pytest.raises(ConfigError, match="not JSON edgempq reads"):
                cls.from_json(text)
    for text in ("a = " + "9" * 5000, "a = " + "[" * 100000 + "]" * 100000):
        p = tmp_path / "t.toml"
        p.write_text(text)
        with pytest.raises(ConfigError, match=f"{p} is not (valid )?TOML"):
            read_toml(p, "target")


_hostile_leaf = (_scalar | st.integers(-10**30, 10**30) | st.sampled_from([float("nan"), float("inf"), -1, -1e300, 0])
                 | _json)


def _resigned_profile(data) -> dict:
    """The real profile with one value anywhere in it (a row's latency, a layer's shape, the
    target's threads) replaced by anything, and its checksum made to match again, as a sender can."""
    from edgempq.schema.core import canonical_sha256

    doc = json.loads(json.dumps(_real_profile()))
    body = {k: v for k, v in doc.items() if k != "sha256"}
    node = body
    for _ in range(data.draw(st.integers(1, 3))):
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            break
        key = data.draw(st.sampled_from(keys))
        if not isinstance(node[key], dict | list) or data.draw(st.booleans()):
            node[key] = data.draw(_hostile_leaf)
            break
        node = node[key]
    return body | {"sha256": canonical_sha256(body)}


@FUZZ
@given(data=st.data())
def test_a_resigned_hostile_profile_is_refused_or_used_without_escaping(data):
    """A profile whose checksum matches but whose content is hostile: refused in one sentence,
    or, if it loads, the latency prediction and the solve that use it give a finite result or
    our error."""
    import math

    from edgempq.latency import predict_latency
    from edgempq.schema import Budget, CostTable, Precision, Sensitivity
    from edgempq.solve import solve

    try:
        table = CostTable.from_json(json.dumps(_resigned_profile(data)))
    except EdgeMPQError:
        return
    layers = list(table.layers)
    sens = Sensitivity("noise", {(la.name, p): 1.0 - 0.1 * i for la in layers
                                 for i, p in enumerate(("f32", "w8a8"))})
    with contextlib.suppress(EdgeMPQError):
        ms = predict_latency(table, {la.name: Precision.parse("w8a8") for la in layers})
        assert math.isfinite(ms) and ms >= 0, ms
    with contextlib.suppress(EdgeMPQError):
        solve(layers, sens, table, Budget(latency_ms=1.0), table.target)
