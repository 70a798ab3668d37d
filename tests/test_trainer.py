import json

import pytest
import torch
from conftest import boolq_rows, recording_cudnn_flag, write_jsonl
from peft import PeftModel
from transformers import AutoModelForCausalLM

from flexpaft.errors import FlexpaftError
from flexpaft.prompts import Template
from flexpaft.recipe import train
from flexpaft.render import Rendered, encode_for_training, render
from flexpaft.settings.loading import load_config
from flexpaft.settings.train import LoraSettings, TrainConfig
from flexpaft.tasks import AnswerFormat, get_task
from flexpaft.training.data import PadCollator, answer_loss
from flexpaft.training.lora import add_lora


def test_labels_cover_the_answer_only_and_truncation_keeps_it(tiny):
    _, tok = tiny
    r = Rendered("Question: is the sky blue? Answer:", [" yes", " no"], gold=0)
    enc = encode_for_training(tok, r, max_length=64)
    answer = tok(" yes", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert enc.labels[-len(answer) :] == answer
    assert all(x == -100 for x in enc.labels[: -len(answer)])
    short = encode_for_training(tok, r, max_length=5)
    assert len(short.input_ids) == 5 and short.labels[-len(answer) :] == answer


def test_answer_loss_equals_shifted_label_loss(tiny_model_dir):
    from flexpaft.models import load_model

    model, tok = load_model(str(tiny_model_dir), device="cpu")
    task = get_task("boolq")
    exs = [task.normalize(r) for r in boolq_rows(5)]
    tpl = Template("{passage}\nQuestion: {question}?\nAnswer:")
    items = [
        encode_for_training(tok, render(task, tpl, e, AnswerFormat.LABEL_WORDS), 64) for e in exs
    ]
    batch = PadCollator(tok.pad_token_id)(
        [{"input_ids": e.input_ids, "labels": e.labels} for e in items]
    )
    ours = answer_loss(model, batch)
    # Reference: each sequence alone, unpadded, with the model's own label loss, token-weighted.
    total, count = 0.0, 0
    for e in items:
        n = sum(x != -100 for x in e.labels)
        out = model(input_ids=torch.tensor([e.input_ids]), labels=torch.tensor([e.labels]))
        total, count = total + out.loss.item() * n, count + n
    assert ours.item() == pytest.approx(total / count, abs=1e-5)


def _cfg(tiny_model_dir, data, out, *extra):
    return load_config(
        TrainConfig,
        None,
        [
            f"model.name={tiny_model_dir}",
            f"data.source={data}",
            "data.max_length=64",
            "optim.batch_size=4",
            "optim.lr=5e-3",
            "optim.num_workers=0",
            f"output_dir={out}",
            "log_every=0",
            *extra,
        ],
    )


def test_train_writes_a_plain_peft_adapter(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "b.jsonl", boolq_rows(16))
    res = train(_cfg(tiny_model_dir, data, tmp_path / "run", "optim.max_steps=3"), progress=False)
    m = res.manifest
    assert m["steps"] == 3 and m["tokens"] > 0 and m["tokens_per_second"] > 0
    assert m["layers"] == [0, 1, 2, 3]
    for key in ("config", "versions", "data_digest", "prompt_set_digest", "seed", "wall_seconds"):
        assert key in m
    on_disk = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert on_disk["data_digest"] == m["data_digest"]

    # Plain PEFT, no flexpaft: same logits as the adapter that flexpaft applies.
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    plain = PeftModel.from_pretrained(base, str(res.adapter_dir)).eval()
    from flexpaft.evaluation.evaluator import load_adapter
    from flexpaft.models import load_model

    ours = load_adapter(load_model(str(tiny_model_dir), device="cpu")[0], res.adapter_dir).eval()
    with torch.no_grad():
        assert torch.allclose(plain(ids).logits, ours(ids).logits, atol=1e-6)
    lora_b = [p for n, p in plain.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b)


def test_resume_reproduces_an_uninterrupted_run(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "b.jsonl", boolq_rows(24))
    full = train(
        _cfg(tiny_model_dir, data, tmp_path / "full", "optim.max_steps=6", "checkpoint_every=0"),
        progress=False,
    )
    # First run stops after 3 steps but leaves a checkpoint at step 3 (checkpoint_every=3, max 6).
    part_cfg = _cfg(
        tiny_model_dir, data, tmp_path / "part", "optim.max_steps=6", "checkpoint_every=3"
    )
    import flexpaft.training.loop as trainer_mod

    calls = {"n": 0}
    real_save = trainer_mod.save_checkpoint

    def save_then_crash(*a, **k):
        real_save(*a, **k)
        calls["n"] += 1
        raise KeyboardInterrupt

    trainer_mod.save_checkpoint = save_then_crash
    try:
        with pytest.raises(KeyboardInterrupt):
            train(part_cfg, progress=False)
    finally:
        trainer_mod.save_checkpoint = real_save
    assert calls["n"] == 1 and not (tmp_path / "part" / "adapter").exists()
    resumed = train(part_cfg, progress=False)
    from safetensors.torch import load_file

    a = load_file(str(full.adapter_dir / "adapter_model.safetensors"))
    b = load_file(str(resumed.adapter_dir / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


def test_checkpoint_of_another_config_is_refused(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "b.jsonl", boolq_rows(16))
    first = _cfg(tiny_model_dir, data, tmp_path / "r", "optim.max_steps=4", "checkpoint_every=2")
    train(first, progress=False)
    # A finished run keeps no checkpoint; its directory is still not silently reused.
    assert not (tmp_path / "r" / "checkpoint").exists()
    other = _cfg(tiny_model_dir, data, tmp_path / "r", "optim.max_steps=4", "optim.lr=1e-3")
    with pytest.raises(FlexpaftError, match="finished run of a different configuration"):
        train(other, progress=False)
    # An interrupted run's checkpoint (no manifest yet) must not be continued by another lr.
    (tmp_path / "r" / "manifest.json").unlink()
    import shutil

    shutil.rmtree(tmp_path / "r" / "adapter")
    import flexpaft.training.loop as trainer_mod

    real_save = trainer_mod.save_checkpoint

    def save_then_crash(*a, **k):
        real_save(*a, **k)
        raise KeyboardInterrupt

    trainer_mod.save_checkpoint = save_then_crash
    try:
        with pytest.raises(KeyboardInterrupt):
            train(first, progress=False)
    finally:
        trainer_mod.save_checkpoint = real_save
    with pytest.raises(FlexpaftError, match="checkpoint of a different configuration"):
        train(other, progress=False)
    # --overwrite replaces the other configuration's checkpoint and trains from the start.
    res = train(other, progress=False, overwrite=True)
    assert res.manifest["steps"] == 4 and not (tmp_path / "r" / "checkpoint").exists()


def test_layers_to_transform_adapts_only_those_blocks(tiny):
    model, _ = tiny
    import copy

    peft_model = add_lora(copy.deepcopy(model), LoraSettings(layers_to_transform=[1, 3]))
    names = [n for n, _ in peft_model.named_parameters() if "lora_" in n]
    assert names and all(".layers.1." in n or ".layers.3." in n for n in names)


def test_topaccuracy_trains_on_the_base_models_best_template(tmp_path, tiny_model_dir):
    from flexpaft.evaluation.evaluator import evaluate_templates
    from flexpaft.models import load_model
    from flexpaft.prompts import PromptSet
    from flexpaft.settings.common import DataSettings

    data = write_jsonl(tmp_path / "b.jsonl", boolq_rows(24))
    texts = [
        "{passage}\nQ: {question}?\nA:",
        "Q: {question}? {passage}\nAnswer:",
        "{question}?\n{passage}\nYes or no:",
    ]
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"template": t} for t in texts])
    cfg = _cfg(
        tiny_model_dir,
        data,
        tmp_path / "top",
        "method=topaccuracy",
        "optim.max_steps=1",
        f"prompts.prompt_set={prompts}",
        "prompts.topaccuracy_examples=12",
    )
    res = train(cfg, progress=False)
    # Independently: the base model's accuracy per template on the same 12 probe examples.
    task, fmt, exs = DataSettings(task="boolq", source=str(data), max_length=64).load()
    model, tok = load_model(str(tiny_model_dir), device="cpu")
    ps = PromptSet.load(prompts)
    accs = evaluate_templates(model, tok, task, fmt, list(ps), exs[:12], progress=False).accuracies
    best = ps[max(range(len(ps)), key=lambda i: accs[i])]
    assert res.manifest["templates"]["chosen"] == best.id
    assert res.manifest["templates"]["base_accuracy"] == pytest.approx(max(accs))


def _crash_after_first_checkpoint(cfg):
    import flexpaft.training.loop as trainer_mod

    real_save = trainer_mod.save_checkpoint

    def save_then_crash(*a, **k):
        real_save(*a, **k)
        raise KeyboardInterrupt

    trainer_mod.save_checkpoint = save_then_crash
    try:
        with pytest.raises(KeyboardInterrupt):
            train(cfg, progress=False)
    finally:
        trainer_mod.save_checkpoint = real_save


def test_resume_with_lora_dropout_is_bit_identical(tmp_path, tiny_model_dir):
    # Dropout masks come from the torch RNG: without its state in the checkpoint, the resumed
    # half of the run draws other masks and ends elsewhere (max abs diff ~1e-2 before the fix).
    data = write_jsonl(tmp_path / "b.jsonl", boolq_rows(24))
    extra = ("optim.max_steps=6", "lora.dropout=0.3")
    full = train(
        _cfg(tiny_model_dir, data, tmp_path / "full", *extra, "checkpoint_every=0"),
        progress=False,
    )
    part_cfg = _cfg(tiny_model_dir, data, tmp_path / "part", *extra, "checkpoint_every=3")
    _crash_after_first_checkpoint(part_cfg)
    import random

    import numpy as np

    # Whatever ran in between (here: other draws) must not matter.
    torch.rand(100), random.random(), np.random.rand(3)
    resumed = train(part_cfg, progress=False)
    from safetensors.torch import load_file

    a = load_file(str(full.adapter_dir / "adapter_model.safetensors"))
    b = load_file(str(resumed.adapter_dir / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_divergence_stops_the_run_and_keeps_the_last_checkpoint(
    tmp_path, tiny_model_dir, monkeypatch
):
    import flexpaft.training.loop as trainer_mod

    data = write_jsonl(tmp_path / "b.jsonl", boolq_rows(24))
    calls = {"n": 0}
    real_loss = trainer_mod.answer_loss

    def loss_turning_nan(model, batch):
        calls["n"] += 1
        loss = real_loss(model, batch)
        return loss * float("nan") if calls["n"] >= 4 else loss

    monkeypatch.setattr(trainer_mod, "answer_loss", loss_turning_nan)
    cfg = _cfg(tiny_model_dir, data, tmp_path / "r", "optim.max_steps=6", "checkpoint_every=2")
    with pytest.raises(FlexpaftError) as e:
        train(cfg, progress=False)
    msg = str(e.value)
    assert "diverged at step 4: loss is nan" in msg and "last finite loss" in msg
    assert "at step 3" in msg and "optim.lr" in msg and "\n" not in msg
    # No adapter of NaNs; the checkpoint of step 2 is still there, with finite weights.
    assert not (tmp_path / "r" / "adapter").exists()
    state = json.loads((tmp_path / "r" / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 2
    from safetensors.torch import load_file

    ckpt = load_file(str(tmp_path / "r" / "checkpoint" / "adapter.safetensors"))
    assert all(torch.isfinite(t).all() for t in ckpt.values())


def test_training_never_runs_cudnn_attention_and_restores_the_flag(
    tmp_path, tiny_model_dir, monkeypatch
):
    """cuDNN's SDPA backward gives NaN gradients on left-padded batches (pytorch#196678): off for
    every training forward and backward, the Flexora search's included; back on afterwards."""
    import flexpaft.methods.flexora.search as search_mod
    import flexpaft.training.loop as trainer_mod

    data = write_jsonl(tmp_path / "b.jsonl", boolq_rows(24))
    seen = {"forward": [], "backward": []}
    for mod in (trainer_mod, search_mod):
        monkeypatch.setattr(mod, "answer_loss", recording_cudnn_flag(mod.answer_loss, seen))
    assert torch.backends.cuda.cudnn_sdp_enabled()
    extra = ["method=flexora", "optim.max_steps=2", "flexora.val_examples=4"]
    train(_cfg(tiny_model_dir, data, tmp_path / "r", *extra, "flexora.search_steps=2"), False)
    # 2 search steps x (inner + alpha) and 2 stage-2 steps.
    assert len(seen["forward"]) >= 6 and len(seen["backward"]) >= 4
    assert not any(seen["forward"]) and not any(seen["backward"])
    assert torch.backends.cuda.cudnn_sdp_enabled()


def test_attention_without_cudnn_nests_and_restores_after_an_error():
    from flexpaft.training.compute import attention_without_cudnn

    scope = attention_without_cudnn()
    with pytest.raises(RuntimeError):
        with scope:
            with scope:
                assert not torch.backends.cuda.cudnn_sdp_enabled()
            assert not torch.backends.cuda.cudnn_sdp_enabled()
            raise RuntimeError("boom")
    assert torch.backends.cuda.cudnn_sdp_enabled()
    assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.math_sdp_enabled()


@pytest.mark.parametrize(
    "extra, n, message",
    [
        (
            ["method=flexora", "flexora.val_examples=16"],
            16,
            "flexora.val_examples=16 would hold out 16 of the 16",
        ),
        (
            [
                "method=flexora",
                "flexora.val_examples=6",
                "validation.eval_every=5",
                "validation.eval_examples=10",
            ],
            16,
            "validation.eval_examples=10 + flexora.val_examples=6 would hold out 16 of the 16",
        ),
        (["validation.eval_every=5", "validation.eval_examples=20"], 8, "of the 8 training"),
    ],
)
def test_held_out_sets_that_leave_nothing_to_train_on_are_refused(
    tmp_path, tiny_model_dir, extra, n, message
):
    data = write_jsonl(tmp_path / "b.jsonl", boolq_rows(n))
    cfg = _cfg(tiny_model_dir, data, tmp_path / "r", *extra)
    with pytest.raises(FlexpaftError, match="leaving none to train on") as e:
        cfg.check_held_out(n)
    assert message in str(e.value)
    # train() says so before the model is loaded: nothing is written but the run directory.
    with pytest.raises(FlexpaftError, match="leaving none to train on"):
        train(cfg, progress=False)
    assert not (tmp_path / "r" / "adapter").exists()


def test_held_out_sets_with_something_left_pass():
    TrainConfig(method="flexora").check_held_out(201)  # the default 200 held out
    TrainConfig(method="lora").check_held_out(1)  # lora holds nothing out
