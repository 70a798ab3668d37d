"""Evaluation during training: the measures, the best adapter, early stopping, resume."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from conftest import boolq_rows, build_model, build_tokenizer, write_jsonl
from test_flexora_search import TEMPLATES, examples

from flexpaft.errors import FlexpaftError
from flexpaft.evaluation.evaluator import evaluate_templates, load_adapter
from flexpaft.recipe import train
from flexpaft.settings.loading import load_config
from flexpaft.settings.train import LoraSettings, TrainConfig
from flexpaft.tasks import AnswerFormat, get_task
from flexpaft.training.data import PadCollator, RenderedDataset, answer_loss
from flexpaft.training.lora import add_lora
from flexpaft.training.validation import ValidationSettings, Validator

FMT = AnswerFormat.LABEL_WORDS


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def validator(tok, metric="loss", n=6) -> Validator:
    settings = ValidationSettings(eval_every=1, eval_examples=n, metric=metric, batch_size=4)
    return Validator(
        settings, get_task("boolq"), FMT, examples(n), TEMPLATES, tok, Accelerator(cpu=True), 48
    )


def lora_model(tok, seed=1):
    """The same base model every time; LoRA B drawn with ``seed``."""
    model = add_lora(build_model(len(tok), layers=2, seed=1), LoraSettings(r=4))
    torch.manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    return model


def test_measures_are_the_evaluators_accuracy_and_the_training_loss(tok):
    model = lora_model(tok)
    v = validator(tok)
    got = v.measure(model)
    # Accuracy: the project's evaluator on the same pairs, averaged over templates by hand.
    res = evaluate_templates(
        model, tok, get_task("boolq"), FMT, TEMPLATES, examples(6), progress=False
    )
    assert got["accuracy"] == pytest.approx(sum(res.accuracies) / 2)
    assert got["min_accuracy"] == pytest.approx(min(res.accuracies))
    # Loss: answer cross-entropy over every pair, weighted by answer tokens, one pair at a time.
    ds = RenderedDataset(get_task("boolq"), examples(6), TEMPLATES, FMT, tok, 48)
    total, count = 0.0, 0
    with torch.no_grad():
        for t in range(2):
            for e in range(6):
                b = PadCollator(tok.pad_token_id, 1)([ds[(e, t)]])
                n = int((b["labels"] != -100).sum())
                total, count = total + answer_loss(model, b).item() * n, count + n
    assert got["loss"] == pytest.approx(total / count, rel=1e-5)
    assert model.training  # measure leaves the model as it found it


def test_the_best_evaluations_weights_are_restored(tok):
    v = validator(tok, metric="loss")
    a, b = lora_model(tok, seed=1), lora_model(tok, seed=2)
    # Evaluate the better model first, so that restoring has something to undo.
    if v.measure(b)["loss"] < v.measure(a)["loss"]:
        a, b = b, a
    weights = {n: p.detach().clone() for n, p in a.named_parameters() if "lora_" in n}
    model = a
    assert v.run(1, model) is False
    with torch.no_grad():  # the same model, now with the worse model's LoRA weights
        for (n, p), q in zip(model.named_parameters(), b.parameters()):
            if "lora_" in n:
                p.copy_(q)
    v.run(2, model)
    assert v.history[1]["loss"] > v.history[0]["loss"]
    assert v.best["step"] == 1 and v.stale == 1
    v.restore_best(model)
    for n, p in model.named_parameters():
        if "lora_" in n:
            assert torch.equal(p, weights[n]), n


def _cfg(tiny_model_dir, data, out, *extra):
    return load_config(
        TrainConfig,
        None,
        [
            f"model.name={tiny_model_dir}",
            f"data.source={data}",
            "data.max_length=64",
            "optim.batch_size=4",
            "optim.num_workers=0",
            f"output_dir={out}",
            "log_every=0",
            "validation.eval_examples=8",
            "validation.batch_size=8",
            *extra,
        ],
    )


def test_saved_adapter_is_the_best_one_and_the_manifest_says_so(tmp_path, tiny_model_dir):
    from flexpaft.models import load_model
    from flexpaft.settings.common import DataSettings
    from flexpaft.tasks.data import split_examples

    data = write_jsonl(tmp_path / "b.jsonl", boolq_rows(32))
    cfg = _cfg(
        tiny_model_dir,
        data,
        tmp_path / "run",
        "optim.lr=3e-2",
        "optim.max_steps=5",
        "validation.eval_every=2",
        "validation.metric=loss",
    )
    m = train(cfg, progress=False).manifest
    val = m["validation"]
    assert [r["step"] for r in val["history"]] == [2, 4, 5]  # every 2 steps and the last
    best = min(val["history"], key=lambda r: r["loss"])
    assert val["best_step"] == best["step"] and val["best"]["loss"] == best["loss"]
    assert m["examples"] == 32 - 8  # the validation examples were not trained on

    # Re-measured from disk, the saved adapter has the best evaluation's loss.
    task, fmt, exs = DataSettings(task="boolq", source=str(data), max_length=64).load()
    _, held = split_examples(exs, 8, cfg.seed + 2)
    base, tok = load_model(str(tiny_model_dir), device="cpu")
    model = load_adapter(base, tmp_path / "run" / "adapter")
    settings = ValidationSettings(eval_every=1, eval_examples=8)
    from flexpaft.prompts.task_templates import default_template

    v = Validator(settings, task, fmt, held, [default_template(task, fmt)], tok, Accelerator(), 64)
    assert v.measure(model)["loss"] == pytest.approx(best["loss"], rel=1e-5)


def test_early_stopping(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "b.jsonl", boolq_rows(32))
    # A learning rate too small to change any prediction: accuracy never improves.
    cfg = _cfg(
        tiny_model_dir,
        data,
        tmp_path / "run",
        "optim.lr=1e-12",
        "optim.max_steps=10",
        "validation.eval_every=1",
        "validation.early_stopping_patience=2",
    )
    m = train(cfg, progress=False).manifest
    assert m["steps"] == 3 and m["validation"]["stopped_early"] is True
    assert m["validation"]["best_step"] == 1
    assert len(m["validation"]["history"]) == 3


def test_resume_keeps_the_validation_history(tmp_path, tiny_model_dir):
    import flexpaft.training.loop as trainer_mod

    data = write_jsonl(tmp_path / "b.jsonl", boolq_rows(32))
    extra = ("optim.lr=3e-2", "optim.max_steps=6", "validation.eval_every=2", "checkpoint_every=4")
    full = train(_cfg(tiny_model_dir, data, tmp_path / "full", *extra), progress=False)
    real_save = trainer_mod.save_checkpoint

    def save_then_crash(*a, **k):
        real_save(*a, **k)
        raise KeyboardInterrupt

    trainer_mod.save_checkpoint = save_then_crash
    try:
        with pytest.raises(KeyboardInterrupt):
            train(_cfg(tiny_model_dir, data, tmp_path / "part", *extra), progress=False)
    finally:
        trainer_mod.save_checkpoint = real_save
    # The crash came right after the checkpoint, before the validation state beside it: the
    # resumed run must not trust a validation state of another step.
    assert not (tmp_path / "part" / "validation").exists()
    trainer_mod.save_checkpoint = real_save
    resumed = train(_cfg(tiny_model_dir, data, tmp_path / "part", *extra), progress=False)
    steps = [r["step"] for r in resumed.manifest["validation"]["history"]]
    assert steps == [6]  # history before the checkpoint was lost with the validation state

    # With the validation state saved, the resumed history is the uninterrupted one.
    calls = {"n": 0}
    real_vsave = trainer_mod.Validator.save

    def vsave_then_crash(self, *a, **k):
        real_vsave(self, *a, **k)
        calls["n"] += 1
        raise KeyboardInterrupt

    trainer_mod.Validator.save = vsave_then_crash
    try:
        with pytest.raises(KeyboardInterrupt):
            train(_cfg(tiny_model_dir, data, tmp_path / "part2", *extra), progress=False)
    finally:
        trainer_mod.Validator.save = real_vsave
    assert calls["n"] == 1
    again = train(_cfg(tiny_model_dir, data, tmp_path / "part2", *extra), progress=False)
    a, b = full.manifest["validation"], again.manifest["validation"]
    assert [r["step"] for r in b["history"]] == [2, 4, 6]
    for x, y in zip(a["history"], b["history"]):
        assert y["loss"] == pytest.approx(x["loss"], abs=1e-5)
    assert a["best_step"] == b["best_step"]
    from safetensors.torch import load_file

    w1 = load_file(str(full.adapter_dir / "adapter_model.safetensors"))
    w2 = load_file(str(again.adapter_dir / "adapter_model.safetensors"))
    assert w1.keys() == w2.keys()
    for k in w1:
        assert torch.allclose(w1[k], w2[k], atol=1e-6), k


def test_validation_settings_are_checked(tmp_path, tiny_model_dir):
    with pytest.raises(FlexpaftError, match="metric must be one of"):
        load_config(TrainConfig, None, ["validation.metric=f1"])
    data = write_jsonl(tmp_path / "b.jsonl", boolq_rows(8))
    cfg = _cfg(tiny_model_dir, data, tmp_path / "r", "validation.eval_every=1")
    # Refused after the data is read, before the model loads (TrainConfig.check_held_out).
    with pytest.raises(FlexpaftError, match="eval_examples=8 would hold out 8 of the 8 training"):
        train(cfg, progress=False)
