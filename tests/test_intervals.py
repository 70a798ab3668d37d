"""Bootstrap intervals, paired comparisons and seeds, against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from flexpaft.cli import main
from flexpaft.errors import FlexpaftError
from flexpaft.reporting import build_report, render_markdown
from flexpaft.reporting.intervals import (
    Resamples,
    across_seeds,
    compare,
    majority_share,
    method_intervals,
    percentile_interval,
    replicate_stats,
    versus_majority,
)


def eval_dict(rows, gold=None, name="run"):
    per = [
        {
            "id": f"t{i}",
            "text": f"T{i} {{goal}}",
            "accuracy": sum(c) / len(c),
            "n": len(c),
            "correct": list(c),
            "predictions": [0] * len(c),
        }
        for i, c in enumerate(rows)
    ]
    d = {"name": name, "task": "piqa", "format": "letter", "mode": "first_token"}
    d.update(per_template=per, seconds=1.0)
    if gold is not None:
        d["gold"] = list(gold)
    return d


def test_replicates_by_hand():
    # Matrix [[1, 0], [0, 1]]; replicate 0 takes examples (0, 1) and templates (0, 0);
    # replicate 1 takes examples (1, 1) and templates (1, 1).
    rs = Resamples(templates=np.array([[0, 0], [1, 1]]), examples=np.array([[0, 1], [1, 1]]))
    stats = replicate_stats(np.array([[1, 0], [0, 1]]), rs)
    # r0: per-template acc (0.5, 0.5) -> templates (0, 0): mean 0.5, std 0; worst 0.5.
    # r1: per-template acc (0, 1) -> templates (1, 1): mean 1, std 0; worst of (0, 1) = 0.
    assert stats["mean"].tolist() == [0.5, 1.0]
    assert stats["std"].tolist() == [0.0, 0.0]
    assert stats["min"].tolist() == [0.5, 0.0]


def test_replicates_match_a_naive_loop():
    rng = np.random.default_rng(1)
    c = rng.integers(0, 2, size=(4, 7))
    rs = Resamples.draw(4, 7, n_boot=50, seed=3)
    stats = replicate_stats(c, rs)
    for b in range(50):
        accs = [sum(c[t][e] for e in rs.examples[b]) / 7 for t in range(4)]
        picked = [accs[t] for t in rs.templates[b]]
        mean = sum(picked) / 4
        std = (sum((a - mean) ** 2 for a in picked) / 4) ** 0.5
        assert stats["mean"][b] == pytest.approx(mean)
        assert stats["std"][b] == pytest.approx(std)
        assert stats["min"][b] == pytest.approx(min(accs))


def test_percentile_interval_and_degenerate_cases():
    assert percentile_interval(np.arange(101)) == pytest.approx((2.5, 97.5))
    rs = Resamples.draw(3, 10, n_boot=200, seed=0)
    iv = method_intervals(np.ones((3, 10)), rs)
    assert iv == {"mean": [1.0, 1.0], "std": [0.0, 0.0], "min": [1.0, 1.0]}
    lo, hi = percentile_interval(np.array([np.nan, np.nan]))
    assert np.isnan(lo) and np.isnan(hi)


def test_mean_interval_agrees_with_the_normal_approximation():
    # Identical templates, 400 examples half right: the mean's 95% interval is about
    # 0.5 +- 1.96 * sqrt(0.25 / 400) = 0.5 +- 0.049.
    row = np.array([1, 0] * 200)
    rs = Resamples.draw(5, 400, n_boot=4000, seed=0)
    lo, hi = method_intervals(np.tile(row, (5, 1)), rs)["mean"]
    assert lo == pytest.approx(0.451, abs=0.008) and hi == pytest.approx(0.549, abs=0.008)


def test_paired_comparisons():
    rs = Resamples.draw(3, 20, n_boot=300, seed=0)
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2, size=(3, 20))
    same = compare(a, a, rs)
    assert same["mean_diff"] == {"value": 0.0, "low": 0.0, "high": 0.0, "separated": False}
    assert same["min_diff"]["separated"] is False
    assert same["std_ratio"]["low"] == pytest.approx(1.0)
    assert same["std_ratio"]["separated"] is False
    right, wrong = np.ones((3, 20)), np.zeros((3, 20))
    d = compare(right, wrong, rs)["mean_diff"]
    assert d == {"value": 1.0, "low": 1.0, "high": 1.0, "separated": True}
    # A std of zero in the denominator: the ratio is undefined, never "separated".
    assert compare(a, right, rs)["std_ratio"]["separated"] is False


def test_majority_rate_and_margin():
    gold = np.array([1, 1, 1, 0])
    assert majority_share(gold) == 0.75
    gold40 = np.array([1] * 30 + [0] * 10)
    rs = Resamples.draw(2, 40, n_boot=500, seed=0)
    # Always right: mean 1 in every replicate, 0.25 above the fixed 75% prior.
    perfect = versus_majority(np.ones((2, 40)), gold40, rs)
    assert perfect == {"value": 0.25, "low": 0.25, "high": 0.25, "separated": True}
    # Always answering the majority label: exactly the prior, and its interval spans zero.
    always_one = np.tile((gold40 == 1).astype(int), (2, 1))
    v = versus_majority(always_one, gold40, rs)
    assert v["value"] == 0.0 and v["low"] < 0 < v["high"] and v["separated"] is False
    # Its interval is the mean's interval shifted by the prior.
    lo, hi = method_intervals(always_one, rs)["mean"]
    assert (v["low"], v["high"]) == pytest.approx((lo - 0.75, hi - 0.75))


def test_across_seeds_by_hand():
    assert across_seeds([0.5, 0.6, 0.7]) == pytest.approx({"mean": 0.6, "std": 0.1, "seeds": 3})
    assert across_seeds([0.4]) == {"mean": 0.4, "std": 0.0, "seeds": 1}


def test_report_groups_seeds_and_labels_differences():
    gold = [0, 1, 0, 1]
    s0 = eval_dict([[1, 1, 0, 0], [1, 0, 1, 0]], gold)
    s1 = eval_dict([[1, 1, 1, 0], [1, 1, 1, 0]], gold)
    base = eval_dict([[0, 0, 0, 0], [0, 0, 0, 1]], gold)
    with pytest.raises(FlexpaftError, match="--seeds"):
        build_report([("paft", s0), ("paft", s1)])
    rep = build_report([("base", base), ("paft", s0), ("paft", s1)], group_seeds=True, n_boot=200)
    paft = rep["methods"][1]
    assert paft["seeds"] == 2
    # Seed means 0.5 and 0.75: mean 0.625, sample std 0.1768.
    assert paft["mean"] == pytest.approx(0.625)
    assert paft["across_seeds"]["mean"]["std"] == pytest.approx(0.17678, abs=1e-4)
    assert rep["majority_rate"] == 0.5
    (cmp,) = rep["comparisons"]
    assert (cmp["a"], cmp["b"]) == ("paft", "base")
    assert cmp["mean_diff"]["value"] == pytest.approx(0.625 - 0.125)
    md = render_markdown(rep)
    assert "95% CI" in md and "paft vs base" in md and "Always answering" in md


def test_report_cli_prints_intervals(tmp_path, capsys):
    import json

    gold = [0, 1, 0, 1, 1, 0]
    paths = []
    for name, rows in (
        ("base", [[0, 1, 0, 1, 0, 0], [1, 0, 0, 1, 0, 1]]),
        ("paft", [[1, 1, 1, 1, 0, 1], [1, 1, 0, 1, 1, 1]]),
    ):
        p = tmp_path / f"{name}.json"
        p.write_text(json.dumps(eval_dict(rows, gold, name)))
        paths.append(str(p))
    assert main(["-q", "report", *paths, "--bootstrap", "300", "-o", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "Mean [95% CI]" in out and "paft vs base" in out
    assert main(["-q", "report", *paths, "--bootstrap", "-1", "-o", str(tmp_path / "r")]) == 2
