"""Layer-selection baselines a user would pick instead of Flexora: the gradient probe and the
bottom half (issue 24), and a study on a task that ships its own test split."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import boolq_rows, build_model, build_tokenizer, write_jsonl
from test_flexora_search import random_batches

from flexpaft.cli import main
from flexpaft.methods.flexora.blocks import find_blocks
from flexpaft.methods.flexora.select import bottom_half_layers, gradient_probe_ranking
from flexpaft.settings.loading import load_config
from flexpaft.settings.train import LoraSettings
from flexpaft.training.data import answer_loss
from flexpaft.training.lora import add_lora


def test_bottom_half_by_hand():
    assert bottom_half_layers(4) == [0, 1]
    assert bottom_half_layers(5) == [0, 1]
    assert bottom_half_layers(1) == [0]
    assert bottom_half_layers(30) == list(range(15))


def test_first_last_by_hand():
    from flexpaft.workflows.study.baselines import first_last_layers

    assert first_last_layers(30, 14) == [0, 1, 2, 3, 4, 5, 6, 23, 24, 25, 26, 27, 28, 29]
    assert first_last_layers(30, 15) == [*range(8), *range(23, 30)]
    assert first_last_layers(4, 3) == [0, 1, 3]
    assert first_last_layers(4, 1) == [0]
    assert first_last_layers(4, 9) == [0, 1, 2, 3]


def test_gradient_probe_is_the_per_block_lora_gradient_norm():
    tok = build_tokenizer()
    model = build_model(len(tok), layers=3)
    layout = find_blocks(model)
    model = add_lora(model, LoraSettings(r=2, alpha=4.0))
    batches = random_batches(dtype_vocab=len(tok), n=2)
    scores = gradient_probe_ranking(model, batches, answer_loss, layout)
    assert all(p.grad is None for p in model.parameters())  # nothing written, nothing stepped

    # Naive reference: backward per batch, read .grad, sum squares per block by name.
    expected = [0.0, 0.0, 0.0]
    for b in batches:
        model.zero_grad()
        answer_loss(model, b).backward()
        sq = [0.0, 0.0, 0.0]
        for name, p in model.named_parameters():
            if p.grad is not None and "lora_" in name:
                block = int(name.split(".layers.")[1].split(".")[0])
                sq[block] += float(p.grad.pow(2).sum())
        expected = [e + s**0.5 / len(batches) for e, s in zip(expected, sq)]
    assert scores == pytest.approx(expected, rel=1e-5)
    assert min(scores) > 0  # at LoRA's start B = 0 but dL/dB is not


def test_study_trains_grad_probe_and_bottom_half(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "boolq.jsonl", boolq_rows(40))
    cfg = {
        "output_dir": str(tmp_path / "study"),
        "methods": ["lora", "flexora", "grad_probe", "bottom_half", "first_last"],
        "seeds": [0],
        "train_examples": 16,
        "test_examples": 8,
        "train": {
            "optim": {"max_steps": 2, "batch_size": 4, "num_workers": 0},
            "flexora": {"val_examples": 4, "selection": "topk", "k": 3},
        },
        "eval": {"batch_size": 8},
        "bootstrap": 50,
        "grad_probe_batches": 2,
        "model": {"name": str(tiny_model_dir)},
        "data": {"task": "boolq", "source": str(data), "format": "label_words"},
        "prompts": {"n": 12, "test": 3, "adversarial": 0},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["-q", "study", "--config", str(path)]) == 0
    root = tmp_path / "study"

    def manifest(run):
        return json.loads((root / "train" / run / "manifest.json").read_text())

    assert manifest("bottom_half-s0")["layers"] == [0, 1]
    assert manifest("first_last-s0")["layers"] == [0, 1, 3]  # k = 3, flexora's topk
    scores = json.loads((root / "train/grad_probe-rank-s0/grad_probe.json").read_text())["scores"]
    top3 = sorted(sorted(range(4), key=lambda i: -scores[i])[:3])
    assert (
        manifest("grad_probe-s0")["layers"] == top3
        and manifest("grad_probe-s0")["method"] == "lora"
    )
    report = json.loads((root / "report" / "unseen" / "report.json").read_text())
    assert [m["name"] for m in report["methods"]] == cfg["methods"]


def test_a_study_on_the_packaged_task_tests_on_its_test_split(tmp_path):
    from flexpaft.workflows.study import Study, StudyConfig

    study = Study(
        load_config(
            StudyConfig,
            None,
            [f"output_dir={tmp_path}", "data.task=snips", "train_examples=300", "test_examples=70"],
        ),
        progress=False,
    )
    # snips trains on its train file and tests on its test file: nothing to skip there.
    assert study.test_skip() == 0
    cfg = study._eval_config("unseen", "lora", 0)
    assert cfg.data.skip == 0 and cfg.data.split == "" and cfg.data.balance_labels
    _, _, test = cfg.data.load()
    assert len(test) == 70  # 10 of each of the 7 intents, from the test file
    _, _, train = cfg.data.load("train")
    assert not {e.fields["text"] for e in test} & {e.fields["text"] for e in train}
    # A single-file source keeps the test slice after the training one.
    one_file = Study(
        load_config(
            StudyConfig,
            None,
            [f"output_dir={tmp_path}", "data.task=boolq", "data.source=x.jsonl"],
        ),
        progress=False,
    )
    assert one_file.test_skip() == one_file.cfg.train_examples


def test_every_block_baseline_has_its_picker_and_no_study_row_is_a_training_method():
    from flexpaft.settings.methods import METHODS
    from flexpaft.workflows.study import BLOCK_BASELINES, STUDY_METHODS, VARIANT_METHODS
    from flexpaft.workflows.study.baselines import BLOCK_PICKERS
    from flexpaft.workflows.study.rows import ROWS, row_of

    assert set(BLOCK_PICKERS) == set(BLOCK_BASELINES) == {n for n, r in ROWS.items() if r.trains}
    assert not set(ROWS) & set(METHODS) and len(set(STUDY_METHODS)) == len(STUDY_METHODS)
    assert set(VARIANT_METHODS) == set(METHODS)
    assert row_of("random-d2").name == "random" and row_of("lora_drop-rank").name == "lora_drop"
    assert row_of("grad_probe-rank").name == "grad_probe" and row_of("paft") is None
