"""lm-eval interop: one task YAML per template and a group, rendering through flexpaft."""

import importlib.util
import sys

import pytest
import yaml
from conftest import boolq_rows, write_jsonl

from flexpaft.cli import main
from flexpaft.prompts import Template
from flexpaft.prompts.promptset import template_id
from flexpaft.render import render
from flexpaft.tasks import get_task
from flexpaft.tasks.spec import AnswerFormat

TEMPLATES = [
    "{passage}\nQuestion: {question}?\nAnswer:",
    "Passage: {passage}\nQ: {question}? Reply {label_words}.\nA:\n",
]


class LmEvalLoader(yaml.SafeLoader):
    """lm-eval's YAML dialect: ``!function module.name`` names a Python callable."""


LmEvalLoader.add_constructor("!function", lambda loader, node: ("function", node.value))


def test_export_writes_one_task_per_template_and_a_group(tmp_path, capsys):
    data = write_jsonl(tmp_path / "boolq.jsonl", boolq_rows(4))
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"template": t} for t in TEMPLATES])
    out = tmp_path / "lm_eval"
    argv = ["-q", "prompts", "export-lm-eval", str(prompts), "--task", "boolq"]
    code = main(argv + ["--out", str(out), "--source", str(data)])
    printed = capsys.readouterr().out
    assert code == 0
    assert f"--include_path {out} --tasks flexpaft_boolq" in printed
    group = yaml.load((out / "flexpaft_boolq.yaml").read_text(), LmEvalLoader)
    ids = [template_id(t) for t in TEMPLATES]
    assert group["group"] == "flexpaft_boolq"
    assert group["task"] == [f"flexpaft_boolq_{i}" for i in ids]
    assert group["aggregate_metric_list"][0]["metric"] == "acc"

    sys.path.insert(0, str(out))
    try:
        spec = importlib.util.spec_from_file_location("utils", out / "utils.py")
        utils = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(utils)
    finally:
        sys.path.remove(str(out))
    task = get_task("boolq")
    for text, tid in zip(TEMPLATES, ids):
        cfg = yaml.load((out / f"flexpaft_boolq_{tid}.yaml").read_text(), LmEvalLoader)
        assert cfg["task"] == f"flexpaft_boolq_{tid}"
        assert cfg["dataset_path"] == "json" and cfg["test_split"] == "test"
        assert cfg["dataset_kwargs"]["data_files"]["test"] == str(data.resolve())
        assert cfg["output_type"] == "multiple_choice" and cfg["target_delimiter"] == ""
        assert cfg["doc_to_text"] == ("function", f"utils.text_{tid}")
        for doc in boolq_rows(4):
            want = render(task, Template(text, tid), task.normalize(doc), AnswerFormat.LABEL_WORDS)
            assert getattr(utils, f"text_{tid}")(doc) == want.prompt
            assert getattr(utils, f"choices_{tid}")(doc) == want.answers
            assert getattr(utils, f"target_{tid}")(doc) == (0 if doc["answer"] else 1)
    # The second template ends in a newline: its choices carry no space.
    assert getattr(utils, f"choices_{ids[1]}")(boolq_rows(1)[0]) == ["yes", "no"]
    assert getattr(utils, f"choices_{ids[0]}")(boolq_rows(1)[0]) == [" yes", " no"]


def test_hub_task_export_names_the_evaluation_split(tmp_path, capsys):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"template": TEMPLATES[0]}])
    out = tmp_path / "o"
    assert (
        main(
            ["-q", "prompts", "export-lm-eval", str(prompts), "--task", "boolq", "--out", str(out)]
        )
        == 0
    )
    (task_file,) = [p for p in out.glob("flexpaft_boolq_*.yaml")]
    cfg = yaml.load(task_file.read_text(), LmEvalLoader)
    assert (cfg["dataset_path"], cfg["test_split"]) == ("google/boolq", "validation")
    code = main(
        [
            "-q",
            "prompts",
            "export-lm-eval",
            str(prompts),
            "--task",
            "boolq",
            "--format",
            "generation",
            "--out",
            str(out),
        ]
    )
    assert code == 2 and "scored formats" in capsys.readouterr().err


def test_lm_eval_indexes_the_exported_tasks(tmp_path):
    pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    data = write_jsonl(tmp_path / "boolq.jsonl", boolq_rows(4))
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"template": t} for t in TEMPLATES])
    out = tmp_path / "lm_eval"
    assert (
        main(
            [
                "-q",
                "prompts",
                "export-lm-eval",
                str(prompts),
                "--task",
                "boolq",
                "--out",
                str(out),
                "--source",
                str(data),
            ]
        )
        == 0
    )
    tm = TaskManager(include_path=str(out))
    assert "flexpaft_boolq" in tm.all_groups
    assert all(
        f"flexpaft_boolq_{t}" in tm.all_tasks
        for t in [p.stem.split("_")[-1] for p in out.glob("flexpaft_boolq_*.yaml")]
    )
