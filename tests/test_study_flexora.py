"""The Flexora study: flexora against random, LoRA-drop and top-half blocks, in one ``flexpaft study``."""

from __future__ import annotations

import json
import logging
from itertools import combinations

import pytest
import yaml
from conftest import boolq_rows, write_jsonl

from flexpaft.cli import main
from flexpaft.errors import FlexpaftError
from flexpaft.methods.flexora.select import random_layers, random_selections, top_half_layers

FLEXORA_METHODS = [
    "base",
    "lora",
    "flexora",
    "random",
    "lora_drop",
    "top_half",
    "paft",
    "flexora+paft",
]


def _study_yaml(tmp_path, tiny_model_dir, **extra):
    data = write_jsonl(tmp_path / "boolq.jsonl", boolq_rows(40))
    cfg = {
        "output_dir": str(tmp_path / "study"),
        "methods": FLEXORA_METHODS,
        "seeds": [0],
        "train_examples": 16,
        "test_examples": 8,
        "train": {
            "optim": {"max_steps": 2, "batch_size": 4, "num_workers": 0},
            # k = 3 of the tiny model's 4 blocks: not top_half's 2, and 4 distinct triples exist.
            # Gate ranks make flexora's manifest config differ from the requested one.
            "flexora": {"val_examples": 4, "selection": "topk", "k": 3, "ranks": "gate"},
        },
        "eval": {"batch_size": 8},
        "bootstrap": 50,
        "lora_drop_batches": 2,
        "model": {"name": str(tiny_model_dir)},
        "data": {"task": "boolq", "source": str(data), "format": "label_words"},
        "prompts": {"n": 12, "test": 3, "adversarial": 1},
        **extra,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_random_draws_differ_and_repeat_per_seed():
    draws = random_selections(4, 2, 3, seed=0)
    assert draws == random_selections(4, 2, 3, seed=0)  # reproducible
    assert draws[0] == random_layers(4, 2, seed=0)  # draw 0 is the old single draw
    assert len({tuple(d) for d in draws}) == 3 and all(len(d) == 2 for d in draws)
    assert all(d == sorted(set(d)) and set(d) <= {0, 1, 2, 3} for d in draws)
    # Draw d does not depend on how many follow it.
    assert random_selections(4, 2, 2, seed=0) == draws[:2]
    assert any(random_selections(4, 2, 3, seed=s) != draws for s in (1, 2))
    # All 6 pairs of 4 blocks come out before any repeats; then repeats are all there is.
    six = random_selections(4, 2, 7, seed=5)
    assert sorted(map(tuple, six[:6])) == list(combinations(range(4), 2))
    assert random_selections(3, 3, 2, seed=0) == [[0, 1, 2], [0, 1, 2]]
    with pytest.raises(FlexpaftError, match="cannot draw 5 of 4"):
        random_selections(4, 5, 1)


def test_top_half_by_hand(tiny_model_dir):
    from flexpaft.methods.flexora.blocks import count_blocks

    assert top_half_layers(4) == [2, 3]
    assert top_half_layers(5) == [3, 4]  # the last 5 // 2 blocks
    assert top_half_layers(1) == [0]
    assert top_half_layers(30) == list(range(15, 30))  # SmolLM2-135M
    assert count_blocks(str(tiny_model_dir)) == 4  # from the config, no weights loaded


def test_random_and_lora_drop_need_flexora(tmp_path, tiny_model_dir, capsys):
    for method in ("random", "lora_drop"):
        path = _study_yaml(tmp_path, tiny_model_dir, methods=["base", "lora", method])
        assert main(["-q", "study", "--config", str(path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]  # after the prompts step's line
        assert f"study method '{method}' trains on as many blocks as flexora selected" in err
        assert "add flexora to methods" in err
        assert not (tmp_path / "study" / "train").exists()  # refused before any training


def test_a_flexora_held_out_set_as_large_as_the_training_slice_is_refused_first(
    tmp_path, tiny_model_dir, capsys
):
    # 16 training examples, 16 held out for the search: caught before lora (listed first) trains.
    path = _study_yaml(tmp_path, tiny_model_dir, methods=["lora", "flexora"])
    argv = ["-q", "study", "--config", str(path), "--set", "train.flexora.val_examples=16"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.endswith(
        "flexora.val_examples=16 would hold out 16 of the 16 training examples, leaving none to "
        "train on: lower it or train on more examples"
    )
    assert not (tmp_path / "study" / "train").exists()


def test_missing_adversarial_set_is_refused_then_regenerated(tmp_path, tiny_model_dir, caplog):
    from flexpaft.settings.loading import load_config
    from flexpaft.workflows.study import Study, StudyConfig

    path = _study_yaml(tmp_path, tiny_model_dir, methods=["base"])
    study = Study(load_config(StudyConfig, path), progress=False)
    study.generate()
    adv = tmp_path / "study" / "prompts" / "adversarial.jsonl"
    original = adv.read_text()
    assert original.strip()
    adv.unlink()
    # Before: the evaluation silently lost its adversarial set. Now check() names the file...
    with pytest.raises(
        FlexpaftError, match="prompts.adversarial=1 but .*adversarial.jsonl is miss"
    ):
        study.check()
    assert study._eval_config("unseen", "base", None).adversarial_set == str(adv)
    # ...and the prompts step rewrites it exactly as it was generated (same seed, same templates).
    study.generate()
    assert adv.read_text() == original
    study.check()
    # Two variants per template asked for after the prompts step: the file is kept (evaluations
    # used it) and the mismatch is said.
    study2 = Study(load_config(StudyConfig, path, ["prompts.adversarial=2"]), progress=False)
    with caplog.at_level(logging.WARNING, logger="flexpaft.workflows.study"):
        study2.generate()
    assert adv.read_text() == original
    assert "made with other settings than prompts.adversarial=2" in caplog.text


def test_flexora_study_trains_every_baseline_and_reports_them(tmp_path, tiny_model_dir, capsys):
    from flexpaft.settings.loading import load_config
    from flexpaft.workflows.study import Study, StudyConfig
    from flexpaft.workflows.study.baselines import random_selection

    path = _study_yaml(tmp_path, tiny_model_dir)
    assert main(["-q", "study", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    root = tmp_path / "study"

    def manifest(run):
        return json.loads((root / "train" / run / "manifest.json").read_text())

    flexora = manifest("flexora-s0")
    assert flexora["flexora"]["n_blocks"] == 4 and len(flexora["flexora"]["layers"]) == 3
    assert flexora["config"]["lora"]["rank_pattern"]  # the stage-2 config, not the request's
    study = Study(load_config(StudyConfig, path), progress=False)
    draws = random_selection(study, 0)
    assert draws == random_selections(4, 3, 3, seed=0)
    assert len({tuple(d) for d in draws}) == 3
    for d, layers in enumerate(draws):
        m = manifest(f"random-d{d}-s0")
        # k = flexora's count; plain LoRA on exactly the drawn blocks, same data as lora.
        assert m["layers"] == layers and len(layers) == len(flexora["flexora"]["layers"])
        assert m["method"] == "lora" and m["examples"] == manifest("lora-s0")["examples"]
    assert manifest("top_half-s0")["layers"] == [2, 3]
    # lora_drop: a short all-block run as long as flexora's search, then its top 3 by score.
    rank = manifest("lora_drop-rank-s0")
    assert rank["layers"] == [0, 1, 2, 3]
    assert rank["steps"] == flexora["flexora"]["inner_steps"]
    scores = json.loads((root / "train/lora_drop-rank-s0/lora_drop.json").read_text())["scores"]
    assert len(scores) == 4 and min(scores) > 0
    top3 = sorted(sorted(range(4), key=lambda i: -scores[i])[:3])
    assert manifest("lora_drop-s0")["layers"] == top3

    labels = ["base", "lora", "flexora", "random-d0", "random-d1", "random-d2"]
    labels += ["lora_drop", "top_half", "paft", "flexora+paft"]
    report = json.loads((root / "report" / "unseen" / "report.json").read_text())
    assert [m["name"] for m in report["methods"]] == labels
    pairs = {(c["a"], c["b"]) for c in report["comparisons"]}
    assert len(pairs) == 45  # every pair of the 10 rows
    for other in ("random-d0", "random-d1", "random-d2", "lora_drop", "top_half"):
        assert (other, "flexora") in pairs
    assert ("flexora+paft", "paft") in pairs
    assert "random-d0 vs flexora" in out and "flexora+paft vs paft" in out
    assert "adversarial" in json.loads((root / "eval/unseen/random-d2-s0/results.json").read_text())

    # Run again: every step is found done, flexora (gate ranks) and the LoRA-drop scores included.
    watched = [
        root / "train" / run / "adapter" / "adapter_model.safetensors"
        for run in ("flexora-s0", "random-d1-s0", "lora_drop-s0", "top_half-s0")
    ] + [root / "train/lora_drop-rank-s0/lora_drop.json"]
    before = [p.stat().st_mtime_ns for p in watched]
    assert main(["-q", "study", "--config", str(path)]) == 0
    assert [p.stat().st_mtime_ns for p in watched] == before
