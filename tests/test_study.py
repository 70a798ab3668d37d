"""``flexpaft study``: one YAML -> prompts, every method x seed, evaluation, reports; resumable."""

from __future__ import annotations

import json

import yaml
from conftest import boolq_rows, write_jsonl

from flexpaft.cli import main
from flexpaft.settings.common import balance_by_gold
from flexpaft.tasks import Example


def _study_yaml(tmp_path, tiny_model_dir, **extra):
    data = write_jsonl(tmp_path / "boolq.jsonl", boolq_rows(40))
    external = write_jsonl(
        tmp_path / "external.jsonl",
        [{"template": "{question}? {passage}"}, {"template": "Q: {question}?\n{passage}\nA:"}],
    )
    cfg = {
        "output_dir": str(tmp_path / "study"),
        "methods": ["base", "lora", "paft"],
        "seeds": [0, 1],
        "train_examples": 16,
        "test_examples": 8,
        "train": {"optim": {"max_steps": 2, "batch_size": 4, "num_workers": 0}},
        "eval": {"batch_size": 8},
        "bootstrap": 100,
        "model": {"name": str(tiny_model_dir)},
        "data": {"task": "boolq", "source": str(data), "format": "label_words"},
        "prompts": {"n": 12, "test": 3, "extra_test_sets": {"external": str(external)}},
        **extra,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_study_runs_every_step_and_resumes(tmp_path, tiny_model_dir, capsys):
    path = _study_yaml(tmp_path, tiny_model_dir)
    assert main(["-q", "study", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    root = tmp_path / "study"
    for run in ("lora-s0", "lora-s1", "paft-s0", "paft-s1"):
        assert (root / "train" / run / "adapter" / "adapter_config.json").is_file()
    for test_set in ("unseen", "external"):
        assert (root / "eval" / test_set / "base" / "results.json").is_file()
        report = json.loads((root / "report" / test_set / "report.json").read_text())
        rows = {m["name"]: m for m in report["methods"]}
        assert list(rows) == ["base", "lora", "paft"]
        assert rows["paft"]["seeds"] == 2 and rows["paft"]["across_seeds"] is not None
        assert rows["paft"]["intervals"]["mean"][0] <= rows["paft"]["mean"]
        # Balanced test slice: 4 'yes' and 4 'no', so the majority label scores exactly 50%.
        assert report["majority_rate"] == 0.5
        assert len(report["comparisons"]) == 3
    unseen = json.loads((root / "report" / "unseen" / "report.json").read_text())
    assert len(unseen["templates"]) == 3
    assert "paft vs lora" in out and "Mean [95% CI]" in out
    results = json.loads((root / "eval" / "unseen" / "paft-s1" / "results.json").read_text())
    assert "adversarial" in results and "reference" in results
    # The test slice comes after the training slice: no example is in both.
    train_manifest = json.loads((root / "train" / "paft-s0" / "manifest.json").read_text())
    assert train_manifest["config"]["data"]["limit"] == 16
    assert results["config"]["data"]["skip"] == 16

    # A second run finds every step done and redoes none of them (mtimes unchanged).
    adapter = root / "train" / "lora-s0" / "adapter" / "adapter_model.safetensors"
    before = adapter.stat().st_mtime_ns, (root / "eval/unseen/base/results.json").stat().st_mtime_ns
    assert main(["-q", "study", "--config", str(path)]) == 0
    after = adapter.stat().st_mtime_ns, (root / "eval/unseen/base/results.json").stat().st_mtime_ns
    assert before == after


def test_study_rejects_bad_settings_before_any_training(tmp_path, tiny_model_dir, capsys):
    path = _study_yaml(tmp_path, tiny_model_dir, methods=["base", "lorra"])
    assert main(["-q", "study", "--config", str(path)]) == 2
    assert "unknown study method 'lorra'" in capsys.readouterr().err
    path = _study_yaml(tmp_path, tiny_model_dir, train_examples=40)
    assert main(["-q", "study", "--config", str(path)]) == 2
    assert "need more than train_examples=40" in capsys.readouterr().err
    assert not (tmp_path / "study" / "train").exists()
    path = _study_yaml(
        tmp_path, tiny_model_dir, prompts={"n": 12, "test": 3, "extra_test_sets": {"x": "nope"}}
    )
    assert main(["-q", "study", "--config", str(path)]) == 2
    assert "test set x: no such file nope" in capsys.readouterr().err


def test_balance_by_gold_by_hand():
    exs = [Example({"q": str(i)}, ["yes", "no"], g) for i, g in enumerate([0, 0, 1, 0, 1, 0])]
    kept = balance_by_gold(exs)
    # Two of class 1 exist, so two of class 0 are kept (the first ones), interleaved.
    assert [(e.fields["q"], e.gold) for e in kept] == [("0", 0), ("2", 1), ("1", 0), ("4", 1)]
    assert balance_by_gold(exs[:2]) == exs[:2]  # one class only: nothing to balance


def test_study_splits_a_given_candidate_pool(tmp_path, tiny_model_dir):
    from flexpaft.prompts import PromptSet
    from flexpaft.settings.loading import load_config
    from flexpaft.workflows.study import Study, StudyConfig

    pool = write_jsonl(
        tmp_path / "pool.jsonl",
        [{"template": f"Passage {i}: {{passage}}\nQ: {{question}}?\nA:"} for i in range(10)]
        + [{"template": "no slots at all"}],
    )
    path = _study_yaml(
        tmp_path,
        tiny_model_dir,
        prompts={"candidates": str(pool), "test": 3, "adversarial": 1},
    )
    study = Study(load_config(StudyConfig, path))
    study.generate()
    train = PromptSet.load(tmp_path / "study" / "prompts" / "train.jsonl")
    test = PromptSet.load(tmp_path / "study" / "prompts" / "test.jsonl")
    # The invalid template is dropped; the 10 valid ones split 7 / 3 with no overlap.
    assert (len(train), len(test)) == (7, 3)
    assert not set(train.texts) & set(test.texts)
    assert len(PromptSet.load(tmp_path / "study" / "prompts" / "adversarial.jsonl")) == 3


def test_balanced_slices_stay_inside_their_window(tmp_path, tiny_model_dir):
    from dataclasses import replace

    from flexpaft.settings.loading import load_config
    from flexpaft.workflows.study import Study, StudyConfig

    # 'yes' on every 3rd row only: 1 in 3 answers is 'yes'.
    rows = [{"question": f"q{i}", "passage": f"p{i}", "answer": i % 3 == 0} for i in range(60)]
    data = write_jsonl(tmp_path / "skewed.jsonl", rows)
    path = _study_yaml(tmp_path, tiny_model_dir, balance_train=True, test_examples=6)
    cfg = load_config(StudyConfig, path, [f"data.source={data}"])
    study = Study(cfg)
    window = study.test_window()
    test = replace(cfg.data, skip=16, limit=window, balance_labels=True).load()[2]
    train = replace(cfg.data, skip=0, limit=16, balance_labels=True).load()[2]
    # 3 'yes' and 3 'no' in the shortest window after the training slice that holds them.
    assert sorted(e.gold for e in test) == [0, 0, 0, 1, 1, 1]
    rest = replace(cfg.data, skip=16, limit=0).load()[2]
    assert sum(e.gold == 0 for e in rest[:window]) == 3 and rest[window - 1].gold == 0
    # The balanced training slice comes from the first 16 rows only: never the test's.
    assert not {e.uid for e in train} & {e.uid for e in test}
    assert len(train) == 2 * min(sum(e.gold == g for e in train) for g in (0, 1))
