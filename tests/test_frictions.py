"""Small frictions of issue 21: eval's first-N templates, generate's shown defaults and its
--min-test note, and the report's std ratio when a std is 0."""

import json

import pytest
from conftest import boolq_rows, write_jsonl

from flexpaft.cli import main
from flexpaft.errors import FlexpaftError
from flexpaft.settings.evaluate import EvalConfig
from flexpaft.settings.loading import load_config

TEMPLATES = [
    "{passage}\nQuestion: {question}?\nAnswer:",
    "Passage: {passage}\nQ: {question}?\nA:",
    "Read: {passage}\nIs it true: {question}?\nReply yes or no:",
]


def _cli(capsys, *argv):
    code = main(["-q", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


# ---- eval: the first N templates -------------------------------------------------------------
def test_eval_max_templates_evaluates_the_first_n(tmp_path, tiny_model_dir, capsys):
    data = write_jsonl(tmp_path / "boolq.jsonl", boolq_rows(8))
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"template": t} for t in TEMPLATES])
    sets = [f"model.name={tiny_model_dir}", f"data.source={data}", f"prompt_set={prompts}"]
    code, _, err = _cli(
        capsys,
        "eval",
        "-o",
        tmp_path / "ev",
        *sum((["--set", s] for s in [*sets, "max_templates=2"]), []),
    )
    assert code == 0, err
    res = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert [t["text"] for t in res["per_template"]] == TEMPLATES[:2]


@pytest.mark.parametrize("value, message", [(0, "at least 1"), (-2, "at least 1")])
def test_eval_max_templates_must_be_positive(value, message):
    with pytest.raises(FlexpaftError, match=f"max_templates must be {message}"):
        load_config(EvalConfig, None, [f"max_templates={value}"])


def test_eval_max_templates_defaults_to_all():
    assert load_config(EvalConfig, None, []).max_templates is None


# ---- prompts generate ------------------------------------------------------------------------
def test_generate_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["prompts", "generate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for shown in (
        "--min-test MIN_TEST At least this many test templates where the set allows (never more "
        "than half). (default: 50)",
        "(the paper's 8:1). (default: 1/9)",
        "(the paper has ~450). (default: 450)",
        "Drop shorter templates. (default: 10)",
    ):
        assert shown in out
    assert "(default: None)" not in out  # nothing to show is not shown


def test_generate_says_when_min_test_overrides_the_split(tmp_path, capsys):
    argv = ["prompts", "generate", "--task", "boolq", "--n", "40", "--split", "1/4"]
    code, _, err = _cli(capsys, *argv, "--out", tmp_path / "a")
    assert code == 0, err
    test = (tmp_path / "a" / "test.jsonl").read_text().splitlines()
    kept = len(test) + len((tmp_path / "a" / "train.jsonl").read_text().splitlines())
    # --min-test 50 is capped at half the kept set, above the quarter --split asks for.
    assert len(test) == kept // 2
    assert (
        f"note: {len(test)} test templates, not the {round(kept / 4)} that --split 1/4 gives of "
        f"{kept}: --min-test 50" in err
    )
    # When --split decides, no note.
    code, _, err = _cli(capsys, *argv, "--min-test", "1", "--out", tmp_path / "b")
    assert code == 0 and "note:" not in err


# ---- report: the std ratio when a std is 0 ---------------------------------------------------
def _run(name, rows):
    per = [
        {
            "id": f"t{i}",
            "text": f"T{i} {{goal}}",
            "accuracy": sum(c) / len(c),
            "n": len(c),
            "correct": c,
            "predictions": [0] * len(c),
        }
        for i, c in enumerate(rows)
    ]
    return {
        "name": name,
        "config": {},
        "task": "piqa",
        "format": "letter",
        "mode": "first_token",
        "per_template": per,
        "seconds": 1.0,
    }


# Every template at 0.5 (std 0), every template at 0.75 (std 0), and 0.25/0.25/0.75 (std > 0).
FLAT_HALF = [[1, 1, 0, 0], [1, 0, 1, 0], [0, 1, 1, 0]]
FLAT_3Q = [[1, 1, 1, 0], [1, 1, 0, 1], [0, 1, 1, 1]]
VARIED = [[1, 0, 0, 0], [0, 1, 0, 0], [1, 1, 1, 0]]


def test_std_ratio_with_zero_stds_says_why_it_has_no_value():
    from flexpaft.reporting import build_report
    from flexpaft.reporting.tables import comparison_table

    runs = [("flat", _run("flat", FLAT_HALF)), ("flat2", _run("flat2", FLAT_3Q))]
    runs.append(("varied", _run("varied", VARIED)))
    _, rows = comparison_table(build_report(runs))
    ratio = {row[0]: row[3] for row in rows}
    # It printed ">100 (undefined)" (or ">100 [...]") for all three.
    assert ratio["flat2 vs flat"] == "n/a (both stds 0)"
    assert ratio["varied vs flat"] == "n/a (flat's std is 0)"
    assert ratio["varied vs flat2"] == "n/a (flat2's std is 0)"
    # A defined ratio keeps its number and interval.
    _, rows = comparison_table(build_report([runs[2], runs[0]]))
    assert rows[0][3].startswith("0.00 [")
