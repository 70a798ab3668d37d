"""The packaged SNIPS task: its data loads offline, its split is fixed and disjoint, the demo runs
on it by default, and a BIG-bench task that cannot be had fails in one line (issue 21)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from flexpaft.cli import main
from flexpaft.errors import FlexpaftError
from flexpaft.settings.common import DataSettings
from flexpaft.tasks import bigbench as bigbench_mod
from flexpaft.tasks import get_task, load_examples
from flexpaft.tasks.builtin import SNIPS_INTENTS


def test_packaged_snips_loads_offline_with_a_fixed_disjoint_balanced_split():
    task = get_task("snips")
    train = load_examples(task, split="train")
    test = load_examples(task, split="test")
    assert (len(train), len(test)) == (1680, 420)
    assert Counter(e.gold for e in train) == {g: 240 for g in range(7)}
    assert Counter(e.gold for e in test) == {g: 60 for g in range(7)}
    assert not {e.fields["text"] for e in train} & {e.fields["text"] for e in test}
    assert train[0].options == list(SNIPS_INTENTS)
    # The first 7 rows of each file hold one utterance of every intent (interleaved files).
    assert sorted(e.gold for e in load_examples(task, split="test")[:7]) == list(range(7))
    assert task.label_words == (
        "playlist",
        "restaurant",
        "weather",
        "music",
        "rating",
        "search",
        "movies",
    )


def test_training_reads_the_train_file_and_evaluation_the_test_file():
    _, _, train = DataSettings(task="snips").load("train")
    _, _, test = DataSettings(task="snips").load("eval")
    assert len(train) == 1680 and len(test) == 420
    with pytest.raises(FlexpaftError, match="data.split=test is the split snips is evaluated on"):
        DataSettings(task="snips", split="test").load("train")
    with pytest.raises(FlexpaftError, match="ships the splits test, train, not 'dev'"):
        DataSettings(task="snips", split="dev").load("eval")


def test_a_file_of_the_same_schema_replaces_the_packaged_data(tmp_path):
    rows = [
        {"text": "play some jazz", "intent": "PlayMusic"},
        {"text": "rain?", "intent": "GetWeather"},
    ]
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _, _, ex = DataSettings(task="snips", source=str(path)).load("train")
    assert sorted(e.gold for e in ex) == [2, 3]


def test_the_demo_runs_on_the_packaged_task_and_never_tests_on_a_trained_row(
    tmp_path, tiny_model_dir, capsys
):
    out = tmp_path / "demo"
    argv = ["-q", "demo", "--model", str(tiny_model_dir), "--out", str(out)]
    argv += ["--train-examples", "14", "--test-examples", "14", "--test-templates", "2"]
    argv += ["--epochs", "1", "--no-paft"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "[1/5] task snips" in text and "lora (one prompt)" in text
    from flexpaft.settings.evaluate import EvalConfig
    from flexpaft.splits import example_hash, read_hashes

    trained = read_hashes(out / "lora" / "adapter" / "train_hashes.txt")
    results = json.loads((out / "eval" / "lora" / "results.json").read_text())
    data = results["config"]["data"]
    assert data["task"] == "snips" and data["skip"] == 0  # its own test file
    _, _, tested = EvalConfig(data=DataSettings(**data)).data.load()
    assert len(trained) == 14 and len(tested) == 14
    assert not trained & {example_hash(e) for e in tested}


def test_a_bigbench_task_without_its_archive_fails_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("FLEXPAFT_BIGBENCH_ARCHIVE", raising=False)

    class Failed:
        returncode = 1
        stdout = ""
        stderr = "ERROR: No matching distribution found for bigbench==1.0.0\n"

    monkeypatch.setattr(bigbench_mod.subprocess, "run", lambda cmd, **kw: Failed)
    argv = ["-q", "demo", "--task", "bigbench:intent_recognition", "--out", str(tmp_path / "d")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("flexpaft: error: pip could not download")
    assert "No matching distribution" in err and "snips" in err
