"""``flexpaft report``: every metric against hand-computed values, comparability checks, the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from flexpaft.cli import main
from flexpaft.errors import FlexpaftError
from flexpaft.reporting import (
    build_report,
    generation_table,
    parse_thresholds,
    render_html,
    render_markdown,
    summary_table,
)
from flexpaft.reporting.robustness import parse_run_arg

IDS = ["t1", "t2", "t3"]
# 3 templates x 4 examples. Per-template accuracy 0.5, 0.5, 0.75; examples right under
# 3, 2, 2, 0 templates.
BASE = [[1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 1, 0]]
# Accuracy 1, 0.75, 1; examples right under 3, 3, 3, 2 templates.
PAFT = [[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1]]


def eval_dict(
    rows: list[list[int]],
    ids: list[str] | None = None,
    mode: str = "first_token",
    task: str = "piqa",
    fmt: str = "letter",
    gen: list[tuple[float, float, float]] | None = None,
) -> dict[str, Any]:
    """An EvalResult dict as ``flexpaft eval`` writes it; gen = (answered, tokens, s) per template."""
    per = []
    for i, (tid, c) in enumerate(zip(ids or IDS, rows)):
        t = {
            "id": tid,
            "text": f"Q {tid}: {{goal}}",
            "accuracy": sum(c) / len(c),
            "n": len(c),
            "correct": c,
            "predictions": [0] * len(c),
        }
        if gen:
            t.update(
                answered=gen[i][0], mean_generated_tokens=gen[i][1], seconds_per_example=gen[i][2]
            )
        per.append(t)
    return {"task": task, "format": fmt, "mode": mode, "per_template": per, "seconds": 1.0}


def results(name: str, rows: list[list[int]], **extra: Any) -> dict[str, Any]:
    opts = {k: extra.pop(k) for k in ("ids", "mode", "task", "fmt", "gen") if k in extra}
    return {"name": name, "config": {}, **eval_dict(rows, **opts), **extra}


def method(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(m for m in report["methods"] if m["name"] == name)


def test_accuracy_statistics_and_top_at():
    rep = build_report([("base", results("base", BASE))], thresholds=(0.6, 0.7, 0.8))
    m = method(rep, "base")
    assert m["mean"] == pytest.approx(7 / 12)
    # Population std of (0.5, 0.5, 0.75): deviations -1/12, -1/12, 2/12.
    assert m["std"] == pytest.approx((6 / 144 / 3) ** 0.5)
    assert (m["min"], m["max"], m["spread"]) == pytest.approx((0.5, 0.75, 0.25))
    assert m["top@0.6"] == pytest.approx(1 / 3)
    assert m["top@0.7"] == pytest.approx(1 / 3)
    assert m["top@0.8"] == 0.0
    assert m["examples"] == 4 and m["templates"] == 3


def test_prompt_sensitivity_and_consistency():
    rep = build_report([("base", results("base", BASE)), ("paft", results("paft", PAFT))])
    # k(T-k)/3 per example: base (0, 2/3, 2/3, 0) -> 1/3; paft (0, 0, 0, 2/3) -> 1/6.
    assert method(rep, "base")["prompt_sensitivity"] == pytest.approx(1 / 3)
    assert method(rep, "paft")["prompt_sensitivity"] == pytest.approx(1 / 6)
    assert method(rep, "base")["consistency"] == pytest.approx(0.25)
    assert method(rep, "paft")["consistency"] == pytest.approx(0.75)


def test_pdr_against_reference_entry():
    run = results("base", BASE, reference=eval_dict([[1, 1, 1, 0]], ids=["default"]))
    m = method(build_report([("base", run)]), "base")
    # mean(1 - 0.5/0.75, 1 - 0.5/0.75, 1 - 0.75/0.75) over all three test templates
    assert m["pdr"] == pytest.approx(2 / 9)
    assert m["reference_accuracy"] == pytest.approx(0.75)
    assert "default" in m["reference"]


def test_pdr_against_a_test_template_and_entry_precedence():
    rep = build_report([("paft", results("paft", PAFT))], reference_template="t3")
    # Reference t3 (1.0); others 1.0 and 0.75 -> mean(0, 0.25).
    assert method(rep, "paft")["pdr"] == pytest.approx(0.125)
    assert method(rep, "paft")["reference_accuracy"] == 1.0
    # The run's own reference entry wins over --reference-template.
    run = results("base", BASE, reference=eval_dict([[1, 1, 1, 0]], ids=["default"]))
    assert method(build_report([("base", run)], reference_template="t1"), "base")[
        "pdr"
    ] == pytest.approx(2 / 9)
    with pytest.raises(FlexpaftError, match="not among"):
        build_report([("paft", results("paft", PAFT))], reference_template="nope")


def test_pdr_omitted_or_undefined():
    rep = build_report([("base", results("base", BASE))])
    assert method(rep, "base")["pdr"] is None
    assert "PDR" not in summary_table(rep)[0]
    zero_ref = results("base", BASE, reference=eval_dict([[0, 0, 0, 0]], ids=["default"]))
    rep = build_report([("base", zero_ref)])
    assert method(rep, "base")["pdr"] is None  # 1 - a / 0 is undefined, and JSON has no NaN
    json.dumps(rep, allow_nan=False)


def test_adversarial_mean_and_drop():
    adv = eval_dict([[1, 0, 0, 0], [1, 1, 0, 0]], ids=["a1", "a2"])
    m = method(build_report([("base", results("base", BASE, adversarial=adv))]), "base")
    a = m["adversarial"]
    assert a["templates"] == 2
    assert a["mean"] == pytest.approx(0.375)
    assert a["min"] == pytest.approx(0.25)
    assert a["drop"] == pytest.approx(7 / 12 - 0.375)
    assert a["consistency"] == pytest.approx(0.25)


def test_generation_cost_is_reported_as_output_length():
    base_gen = [(1.0, 10, 0.1), (0.75, 20, 0.2), (1.0, 30, 0.3)]
    paft_gen = [(1.0, 1, 0.01)] * 3
    rep = build_report(
        [
            ("base", results("base", BASE, mode="generate", gen=base_gen)),
            ("paft", results("paft", PAFT, mode="generate", gen=paft_gen)),
        ]
    )
    g = method(rep, "base")["generation"]
    assert g["answered"] == pytest.approx(11 / 12)
    assert g["generated_tokens_per_example"] == pytest.approx(20)
    assert g["seconds_per_example"] == pytest.approx(0.2)
    assert g["seconds_per_generated_token"] == pytest.approx(0.01)
    assert method(rep, "paft")["generation"]["seconds_per_generated_token"] == pytest.approx(0.01)
    headers, rows = generation_table(rep)
    assert rows[0][2:] == ["20.0", "0.200", "10.0", "20.00x"]
    assert rows[1][-1] == "1.00x"
    md = render_markdown(rep)
    assert "output-length effect" in md and "not a per-token speed-up" in md
    # Scoring without generation has no cost table.
    assert generation_table(build_report([("base", results("base", BASE))])) is None


def test_summary_table_percent_one_decimal_best_in_bold():
    rep = build_report([("base", results("base", BASE)), ("paft", results("paft", PAFT))])
    headers, rows = summary_table(rep)
    assert headers[:6] == ["Method", "Mean", "Std", "Min", "Max", "Spread"]
    assert "Top@80" in headers and "PSS" in headers and "Cons" in headers
    base, paft = rows
    assert base[1] == "58.3" and paft[1] == "**91.7**"
    assert base[headers.index("Spread")] == "**25.0**"  # tie at 25.0: both best
    assert paft[headers.index("Spread")] == "**25.0**"
    md = render_markdown(rep)
    assert "| base | 58.3 |" in md and "### How to read" in md and "PromptSensiScore" in md


@pytest.mark.parametrize(
    "other, message",
    [
        (results("x", BASE, ids=["t1", "t2", "t9"]), "different templates"),
        (results("x", BASE, task="hellaswag"), "task"),
        (results("x", BASE, fmt="word"), "answer format"),
        (results("x", [r + [1] for r in BASE]), "examples per template"),
    ],
)
def test_mismatched_runs_fail_unless_allowed(other: dict, message: str):
    runs = [("base", results("base", BASE)), ("x", other)]
    with pytest.raises(FlexpaftError, match=message) as err:
        build_report(runs)
    assert "\n" not in str(err.value) and "--allow-mismatch" in str(err.value)
    rep = build_report(runs, allow_mismatch=True)
    assert any(message in w for w in rep["warnings"])


def test_template_order_may_differ_and_modes_are_flagged():
    reordered = results("paft", PAFT[::-1], ids=IDS[::-1], mode="continuation")
    rep = build_report([("base", results("base", BASE)), ("paft", reordered)])
    assert rep["templates"] == IDS
    assert method(rep, "paft")["per_template"]["t2"] == pytest.approx(0.75)
    assert any("scoring modes" in w for w in rep["warnings"])


def test_duplicate_labels_and_thresholds():
    with pytest.raises(FlexpaftError, match="NAME=PATH"):
        build_report([("a", results("a", BASE)), ("a", results("a", PAFT))])
    assert parse_thresholds(["0.6,0.7"]) == (0.6, 0.7)
    assert parse_thresholds(["60, 70", "0.9"]) == (0.6, 0.7, 0.9)
    for bad in (["x"], ["0"], ["150"]):
        with pytest.raises(FlexpaftError):
            parse_thresholds(bad)


def test_run_argument_labels(tmp_path: Path):
    assert parse_run_arg("paft=runs/x") == ("paft", "runs/x")
    odd = tmp_path / "lr=1e-4"
    odd.mkdir()
    assert parse_run_arg(str(odd)) == (None, str(odd))


def write_run(directory: Path, data: dict[str, Any]) -> Path:
    directory.mkdir(parents=True)
    (directory / "results.json").write_text(json.dumps(data))
    return directory


def test_cli_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture):
    base = write_run(
        tmp_path / "base",
        results("base", BASE, reference=eval_dict([[1, 1, 1, 0]], ids=["default"])),
    )
    adv = eval_dict([[1, 1, 1, 0], [1, 1, 1, 1]], ids=["a1", "a2"])
    paft = write_run(tmp_path / "paft", results("paft-run", PAFT, adversarial=adv))
    out = tmp_path / "report"
    rc = main(
        [
            "-q",
            "report",
            f"Base model={base}",
            str(paft / "results.json"),
            "--out",
            str(out),
            "--thresholds",
            "0.6,0.7",
            "--html",
        ]
    )
    assert rc == 0
    for name in ("report.json", "report.md", "report.html", "per_template.csv", "per_template.png"):
        assert (out / name).is_file(), name
    assert (out / "per_template.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    assert "Base model" in md and "paft-run" in md and "Top@60" in md and "Adv drop" in md
    rep = json.loads((out / "report.json").read_text())
    assert [m["name"] for m in rep["methods"]] == ["Base model", "paft-run"]
    assert rep["methods"][1]["source"].endswith("results.json")
    with open(out / "per_template.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["template", "Base model", "paft-run"]
    assert rows[2] == ["t2", "0.5", "0.75"]
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page and "paft-run" in page
    assert not list(out.glob(".*"))  # no temporary files left behind
    assert "report:" in capsys.readouterr().out


def test_cli_missing_run_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture):
    rc = main(["report", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("flexpaft: error: no eval results") and "\n" not in err
    assert not (tmp_path / "r").exists()


def test_cli_rejects_files_that_are_not_results(tmp_path: Path, capsys: pytest.CaptureFixture):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["report", str(bad), "--out", str(tmp_path / "r")]) == 2
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"name": "x"}))
    assert main(["report", str(other), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "cannot read" in err and "missing" in err


def test_html_without_plot_is_still_a_page():
    rep = build_report([("base", results("base", BASE))])
    page = render_html(rep)
    assert page.startswith("<!DOCTYPE html>") and "<table>" in page and "base64" not in page
