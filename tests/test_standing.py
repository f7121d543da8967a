"""A method whose policies lost to random ones in the benchmark says so: in its sensitivity's
info, after `edgempq sensitivity`, and among search's warnings (edgempq/standing.py)."""

from __future__ import annotations

import json

import pytest

from edgempq import standing


def _row(method, metric, share, top1):
    return {"method": method, "metric": metric, "share": share, "feasible": True, "ptq_top1": top1}


RESULTS = {"models": [{
    "model": "net", "methods": ["good", "bad"],
    "rows": [_row("good", "size", 0.5, 0.98), _row("bad", "size", 0.5, 0.90),
             _row("good", "size", 0.75, 0.98), _row("bad", "size", 0.75, 0.97),
             *(_row(f"random{i}", "size", 0.5, t) for i, t in enumerate((0.91, 0.95, 0.97))),
             *(_row(f"random{i}", "size", 0.75, t) for i, t in enumerate((0.96, 0.97, 0.99))),
             {"method": "bad", "metric": "bops", "share": 0.5, "feasible": False, "reason": "infeasible"},
             {"method": "uniform w8a8", "metric": None, "share": None, "feasible": True, "ptq_top1": 0.98}]}]}


def test_the_budgets_below_the_random_median_are_found_with_both_numbers():
    doc = standing.summarise(RESULTS, "the test bench")
    assert doc["methods"]["good"] == {"budgets": 2, "below_random": []}
    bad = doc["methods"]["bad"]
    assert bad["budgets"] == 2  # the infeasible budget and the uniform rows do not count
    assert bad["below_random"] == [{"model": "net", "metric": "size", "share": 0.5, "top1": 90.0,
                                    "random_median": 95.0, "p_worse": None}]  # 0.75: 97 against 97 is not below


def test_a_loss_to_random_carries_the_paired_test_on_the_same_samples():
    import numpy as np

    rng = np.random.default_rng(0)
    base = rng.random(1000) < 0.95
    worse = base.copy()
    worse[np.flatnonzero(base)[:40]] = False  # 40 samples fewer right, none more: significant
    close = base.copy()
    close[np.flatnonzero(base)[:3]] = False
    close[np.flatnonzero(~base)[:1]] = True  # 3 lost, 1 won: chance
    assert np.array_equal(standing.unpack(standing.pack(worse)), worse)
    rows = [{**_row(f"random{i}", "size", 0.5, t), "ptq_correct": standing.pack(c)}
            for i, (t, c) in enumerate(((0.5, ~base), (base.mean(), base), (1.0, np.ones(1000, bool))))]
    rows += [{**_row(k, "size", 0.5, c.mean()), "ptq_correct": standing.pack(c)}
             for k, c in (("worse", worse), ("close", close))]
    doc = standing.summarise({"models": [{"model": "net", "methods": ["worse", "close"], "rows": rows}]}, "bench")
    (w,), (c,) = doc["methods"]["worse"]["below_random"], doc["methods"]["close"]["below_random"]
    assert w["p_worse"] == pytest.approx(0.5 ** 40) and c["p_worse"] == pytest.approx(5 / 16)
    assert standing.describe(w).endswith("significant)") and standing.describe(c).endswith("test split's noise)")
    assert standing.p_worse(0, 0) == 1.0 and standing.p_worse(0, 5) == 1.0


def test_a_method_below_random_says_so_in_its_info_and_the_others_only_carry_the_summary(tmp_path, monkeypatch):
    path = tmp_path / "standing.json"
    path.write_text(json.dumps(standing.summarise(RESULTS, "the test bench")))
    monkeypatch.setattr(standing, "FILE", path)
    bad = standing.with_standing("bad", {"raw": 1})
    assert bad["raw"] == 1 and bad["benchmark"].startswith("the test bench: PTQ top-1 at or above")
    assert "at 1 of 2 budgets" in bad["benchmark"]
    assert bad["below_random"] == ["net size 0.5: 90.0 % against the random median 95.0 %"]
    text = standing.warning("bad", bad)
    assert "bad's policies were below the median of random policies" in text and "90.0 %" in text
    good = standing.with_standing("good", {})
    assert "below_random" not in good and standing.warning("good", good) is None
    assert standing.with_standing("unbenchmarked", {"raw": 1}) == {"raw": 1}


@pytest.mark.parametrize("content", ["", "{", "[]", '{"methods": 3}', "[" * 100000])
def test_a_missing_or_broken_standing_file_never_stops_a_method(tmp_path, monkeypatch, content):
    path = tmp_path / "standing.json"
    path.write_text(content)
    monkeypatch.setattr(standing, "FILE", path)
    assert standing.with_standing("hawq", {"raw": 1}) == {"raw": 1}
    monkeypatch.setattr(standing, "FILE", tmp_path / "absent.json")
    assert standing.standing("hawq") is None


def test_the_shipped_standing_covers_every_built_in_method_and_reads():
    from edgempq.sensitivity import method_names

    doc = json.loads(standing.FILE.read_text())
    assert set(doc["methods"]) == set(method_names())
    for name in method_names():
        s = standing.standing(name)
        assert s is not None and s["summary"].startswith("BENCHMARKS.md part 2")
        assert doc["methods"][name]["budgets"] >= 8



def test_the_sensitivity_command_prints_the_note_and_keeps_quiet_otherwise(capsys):
    from edgempq import show
    from edgempq.schema import Sensitivity

    show.standing(Sensitivity("bad", {}, info={"below_random": ["net size 0.5: 90.0 % against the random median "
                                                                 "95.0 %"]}))
    assert capsys.readouterr().out.startswith("note: bad's policies were below the median of random policies")
    show.standing(Sensitivity("good", {}, info={"benchmark": "at or above at 16 of 16 budgets"}))
    assert capsys.readouterr().out == ""
