"""Splits that cannot leak: train/eval default splits, overlap refused by content hash."""

import json

from conftest import boolq_rows, write_jsonl

from flexpaft.cli import main
from flexpaft.settings.common import DataSettings
from flexpaft.splits import TRAIN_HASHES, example_hash
from flexpaft.tasks.spec import Example


def _sets(*pairs):
    return sum((["--set", s] for s in pairs), [])


def test_default_split_is_train_for_training_and_validation_for_evaluation(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, split=None, revision=None, **kw):
        calls.append((path, name, split, revision))
        return boolq_rows(4)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    DataSettings(task="boolq").load("train")
    DataSettings(task="boolq").load()
    DataSettings(task="boolq", split="train[:50%]", config_name="c", revision="v1").load("eval")
    assert calls == [
        ("google/boolq", None, "train", None),
        ("google/boolq", None, "validation", None),
        ("google/boolq", "c", "train[:50%]", "v1"),
    ]


def test_content_hash_ignores_label_and_order():
    a = Example(fields={"question": "q", "passage": "p"}, options=["yes", "no"], gold=0)
    b = Example(fields={"passage": "p", "question": "q"}, options=["yes", "no"], gold=1, uid="9")
    c = Example(fields={"question": "q2", "passage": "p"}, options=["yes", "no"], gold=0)
    assert example_hash(a) == example_hash(b) != example_hash(c)


def test_training_on_the_evaluation_split_is_refused(capsys):
    code = main(["-q", "train", "--set", "data.task=boolq", "--set", "data.split=validation"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "data.split=validation is the split boolq is evaluated on" in err


def test_eval_refuses_an_adapter_on_its_own_training_examples(tmp_path, tiny_model_dir, capsys):
    data = write_jsonl(tmp_path / "boolq.jsonl", boolq_rows(24))
    common = [f"model.name={tiny_model_dir}", f"data.source={data}"]
    code = main(
        ["-q", "train", "-o", str(tmp_path / "run")]
        + _sets(*common, "data.limit=16", "optim.max_steps=1", "optim.batch_size=4")
    )
    assert code == 0, capsys.readouterr().err
    adapter = tmp_path / "run" / "adapter"
    hashes = (adapter / TRAIN_HASHES).read_text().split()
    assert len(hashes) == 16 and hashes == sorted(hashes)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["train_hashes"]["count"] == 16

    evaluate = ["-q", "eval", "--adapter", str(adapter), "-o", str(tmp_path / "ev")]
    # Examples 8..23: 8 of them (8..15) were trained on.
    code = main(evaluate + _sets(*common, "data.skip=8"))
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "8 of 16 evaluation examples were in the training data" in err
    assert not (tmp_path / "ev" / "results.json").exists()
    assert main(evaluate + _sets(*common, "data.skip=8") + ["--allow-overlap"]) == 0
    # Another slice into the same directory replaces the finished results only when told to.
    assert main(evaluate + _sets(*common, "data.skip=16")) == 2
    assert main(evaluate + _sets(*common, "data.skip=16") + ["--overwrite"]) == 0
