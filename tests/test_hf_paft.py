"""PAFT inside a transformers Trainer / TRL SFTTrainer (flexpaft.hf, examples/)."""

from __future__ import annotations

import logging
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import boolq_rows, build_model, build_tokenizer, write_jsonl

from flexpaft.errors import FlexpaftError
from flexpaft.evaluation.scoring import score_naive
from flexpaft.hf import OptionsLossMixin, PaftData
from flexpaft.render import encode_answer, encode_for_training, encode_prompt
from flexpaft.tasks import get_task
from flexpaft.training.sampling import plan_epoch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SNIPS_TEMPLATES = [
    "Request: {text}\nIntent:",
    "Text: {text}\nWhich intent ({label_words})?\nAnswer:",
    "{text}\nLabel:",
    "Classify the request.\n{text}\nIntent:",
    "User said: {text}\nThe intent is",
    "### Input\n{text}\n### Intent\n",
]
INTENTS = get_task("snips").fixed_options


def snips_rows(n: int) -> list[dict]:
    return [{"text": f"play song {i} on my list", "intent": INTENTS[i % 7]} for i in range(n)]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def paft_data(tok, n: int = 40, **kw) -> PaftData:
    kw.setdefault("own_rate", 0.0)
    return PaftData("snips", snips_rows(n), SNIPS_TEMPLATES, tok, **kw)


# ---- the draw ---------------------------------------------------------------------------------
def test_an_example_is_redrawn_every_epoch_and_the_draw_is_reproducible(tok):
    paft = paft_data(tok, n=60)
    t0, t1 = paft.template_indices(0), paft.template_indices(1)
    assert np.array_equal(t0, paft_data(tok, n=60).template_indices(0))  # same (seed, epoch)
    assert np.array_equal(t0, paft.template_indices(0))
    assert (t0 != t1).mean() > 0.6  # 5/6 expected with 6 templates
    assert not np.array_equal(t0, paft_data(tok, n=60, seed=1).template_indices(0))
    # Exactly flexpaft train's (example, template) pairs for that seed and epoch.
    for epoch in (0, 1):
        plan = plan_epoch(60, len(SNIPS_TEMPLATES), epoch, seed=0)
        pairs = set(zip(plan.examples.tolist(), plan.templates.tolist()))
        assert pairs == set(enumerate(paft.template_indices(epoch).tolist()))
    # The dataset's rows follow the epoch the callback sets: one example, two renderings.
    i = int(np.flatnonzero(t0 != t1)[0])
    rows = []
    for epoch in (0, 1, 0):
        paft.set_epoch(epoch)
        rows.append(paft.dataset[i]["input_ids"])
        want = encode_for_training(tok, paft.rendered(i, epoch), 1024, append_eos=False)
        assert rows[-1] == want.input_ids
    assert rows[0] != rows[1] and rows[0] == rows[2]
    assert paft.rendered(i, 0).prompt != paft.rendered(i, 1).prompt


@pytest.mark.parametrize("rate", [0.5, 0.2])
def test_the_own_template_share_is_own_rate(tok, rate):
    # Own template absent from the list: it is added, as flexpaft train adds it.
    templates = SNIPS_TEMPLATES[1:]
    paft = PaftData("snips", snips_rows(2000), templates, tok, own_rate=rate)
    assert len(paft.templates) == len(templates) + 1
    assert paft.templates[paft.own_index].text == get_task("snips").templates["label_words"]
    draws = np.concatenate([paft.template_indices(e) for e in range(5)])
    n = len(draws)
    share = float(np.mean(draws == paft.own_index))
    assert abs(share - rate) < 4 * math.sqrt(rate * (1 - rate) / n)  # binomial, 4 sigma
    # The other draws are uniform over the rest of the set.
    others = draws[draws != paft.own_index]
    p = 1 / len(templates)
    for t in range(len(templates)):
        assert abs(np.mean(others == t) - p) < 4 * math.sqrt(p * (1 - p) / len(others))


def test_a_given_own_template_in_the_list_is_not_added_twice(tok):
    paft = PaftData("snips", snips_rows(10), SNIPS_TEMPLATES, tok, own_template=SNIPS_TEMPLATES[2])
    assert len(paft.templates) == len(SNIPS_TEMPLATES) and paft.own_index == 2


# ---- rows and batches -------------------------------------------------------------------------
def test_labels_mask_the_prompt_and_label_the_answer(tok):
    paft = paft_data(tok, n=12, loss="answer")
    paft.set_epoch(3)
    items = paft.dataset.__getitems__(list(range(12)))  # the Trainer's DataLoader reads batches
    for i, row in enumerate(items):
        rendered = paft.rendered(i, 3)
        k = len(encode_prompt(tok, rendered.prompt))
        answer = encode_answer(tok, rendered.answers[rendered.gold])
        assert row["labels"][:k] == [-100] * k
        assert row["labels"][k:] == answer == row["input_ids"][k:]
        assert rendered.answers[rendered.gold].strip() == get_task("snips").label_words[i % 7]
    batch = paft.collator(items)
    lengths = [len(r["input_ids"]) for r in items]
    for b, n in enumerate(lengths):  # left padding: pads are masked, unlabelled, positions real
        pad = batch["input_ids"].shape[1] - n
        assert (
            batch["attention_mask"][b, :pad].sum() == 0 and batch["attention_mask"][b, pad:].all()
        )
        assert (batch["labels"][b, :pad] == -100).all()
        assert batch["position_ids"][b, pad:].tolist() == list(range(n))


@pytest.mark.parametrize("packed", [False, True])  # one row per option / one per example
@pytest.mark.parametrize("task", ["snips", "boolq"])  # multi-token / one-token answer options
def test_the_mixins_options_loss_is_the_evaluators_ranking_cross_entropy(
    tok, task, tmp_path, packed
):
    from transformers import Trainer, TrainingArguments

    model = build_model(len(tok), layers=2, seed=1).eval()
    if task == "snips":
        paft = paft_data(tok, n=6, loss="options")
    else:
        boolq_templates = [
            "{passage}\nQuestion: {question}?\nAnswer:",
            "Q: {question}\nContext: {passage}\nA:",
        ]
        paft = PaftData("boolq", boolq_rows(6), boolq_templates, tok, loss="options")
    paft.set_epoch(2)
    paft.collator.packed = packed
    batch = paft.collator(paft.dataset.__getitems__(list(range(6))))
    assert ("segment_ids" in batch) == (packed and task == "snips")

    class T(OptionsLossMixin, Trainer):
        pass

    args = TrainingArguments(tmp_path, report_to="none", **paft.training_args_kwargs())
    trainer = T(model=model, args=args, **paft.trainer_kwargs())
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch))
        loss2, out = trainer.compute_loss(model, dict(batch), return_outputs=True)
    # Reference: the evaluator's one-forward-per-option log-likelihoods, unpadded.
    scored = score_naive(model, tok, [paft.rendered(i, 2) for i in range(6)])
    scores = torch.tensor([s.scores for s in scored], dtype=torch.float64)
    gold = torch.tensor([paft.rendered(i, 2).gold for i in range(6)])
    want = torch.nn.functional.cross_entropy(scores, gold)
    assert float(loss) == pytest.approx(float(want), rel=1e-4)
    assert float(loss2) == pytest.approx(float(want), rel=1e-4)
    assert out.logits.argmax(-1).tolist() == [s.prediction for s in scored]


@pytest.mark.parametrize("trainer", ["trl", "transformers"])
def test_the_trainers_own_loss_on_answer_rows_is_flexpaft_trains_answer_loss(
    tok, tmp_path, trainer
):
    from flexpaft.training.data import answer_loss

    paft = paft_data(tok, n=6, loss="answer")
    paft.set_epoch(1)
    batch = paft.collator(paft.dataset.__getitems__(list(range(6))))
    if trainer == "trl":
        t = _trl_trainer(tok, tmp_path, paft)
    else:
        from transformers import Trainer, TrainingArguments

        args = TrainingArguments(tmp_path, report_to="none", **paft.training_args_kwargs())
        t = Trainer(model=_lora_model(tok), args=args, **paft.trainer_kwargs())
    t.model.eval()
    with torch.no_grad():
        got = t.compute_loss(t.model, dict(batch))
        want = answer_loss(t.model, batch)
    assert float(got) == pytest.approx(float(want), rel=1e-5)


# ---- real training runs -----------------------------------------------------------------------
def _example(name: str):
    sys.path.insert(0, str(EXAMPLES))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(EXAMPLES))


def _assert_trained_adapter(base_dir: Path, out: Path) -> None:
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    saved = load_file(out / "adapter_model.safetensors")
    base = AutoModelForCausalLM.from_pretrained(base_dir, use_safetensors=True)
    model = PeftModel.from_pretrained(base, str(out))  # plain PEFT, nothing of flexpaft's
    lora = {n.replace(".default", ""): p for n, p in model.named_parameters() if "lora_" in n}
    assert lora and set(lora) == set(saved)  # every saved weight has its place, and back
    assert all(torch.equal(lora[k], saved[k]) for k in saved)
    # PEFT initializes every lora_B to zero: all of them moved.
    assert all(saved[k].abs().sum() > 0 for k in saved if "lora_B" in k)


@pytest.mark.parametrize(
    "script,loss",
    [("trl_sft_paft", "options"), ("trl_sft_paft", "answer"), ("hf_trainer_paft", "answer")],
)
def test_the_examples_train_and_save_an_adapter_plain_peft_loads(
    tiny_model_dir, tmp_path, script, loss
):
    if script.startswith("trl"):
        pytest.importorskip("trl")
    out = tmp_path / "adapter"
    argv = ["--model", str(tiny_model_dir), "--output-dir", str(out), "--loss", loss]
    argv += ["--max-steps", "3", "--examples", "24", "--batch-size", "4", "--lr", "1e-2"]
    assert _example(script).main(argv) == str(out)
    _assert_trained_adapter(tiny_model_dir, out)


def test_the_trainer_example_with_the_options_loss(tiny_model_dir, tmp_path):
    out = tmp_path / "adapter"
    argv = ["--model", str(tiny_model_dir), "--output-dir", str(out), "--loss", "options"]
    argv += ["--max-steps", "2", "--examples", "16", "--batch-size", "4", "--lr", "1e-2"]
    _example("hf_trainer_paft").main(argv)
    _assert_trained_adapter(tiny_model_dir, out)


def _lora_model(tok):
    from peft import LoraConfig, get_peft_model

    model = build_model(len(tok), layers=2)
    return get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))


class _Recorder:
    """compute_loss that records each batch's unpadded sequences and the cuDNN-attention flag."""

    def __init__(self, trainer_cls):
        seen: dict = {"rows": [], "epochs": [], "cudnn": []}

        class Recording(trainer_cls):
            def compute_loss(self, model, inputs, *a, **k):
                seen["cudnn"].append(torch.backends.cuda.cudnn_sdp_enabled())
                seen["epochs"].append(math.floor(self.state.epoch))
                for ids, mask in zip(inputs["input_ids"], inputs["attention_mask"]):
                    seen["rows"].append(tuple(ids[mask.bool()].tolist()))
                return super().compute_loss(model, inputs, *a, **k)

        self.cls, self.seen = Recording, seen


@pytest.mark.parametrize("workers", [0, 1])
def test_a_trainer_run_trains_each_epoch_on_that_epochs_draw(tok, tmp_path, workers):
    from transformers import Trainer, TrainingArguments

    paft = paft_data(tok, n=8, loss="answer")
    rec = _Recorder(Trainer)
    args = TrainingArguments(
        tmp_path,
        num_train_epochs=3,
        per_device_train_batch_size=4,
        dataloader_num_workers=workers,
        report_to="none",
        save_strategy="no",
        **paft.training_args_kwargs(),
    )
    trainer = rec.cls(model=_lora_model(tok), args=args, **paft.trainer_kwargs())
    cudnn_before = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(True)  # so that "off while training" means something
    try:
        trainer.train()
        assert torch.backends.cuda.cudnn_sdp_enabled()  # restored after
    finally:
        torch.backends.cuda.enable_cudnn_sdp(cudnn_before)
    for epoch in range(3):
        want = set()
        for i in range(8):
            enc = encode_for_training(tok, paft.rendered(i, epoch), 1024, append_eos=False)
            want.add(tuple(enc.input_ids))
        got = {r for r, e in zip(rec.seen["rows"], np.repeat(rec.seen["epochs"], 4)) if e == epoch}
        assert got == want
    # cuDNN attention off while training (NaN gradients on left padding), restored after.
    assert rec.seen["cudnn"] and not any(rec.seen["cudnn"])


def test_the_callback_resumes_at_the_checkpoints_epoch(tok):
    paft = paft_data(tok, n=4)
    for state_epoch, want in [(None, 0), (0.0, 0), (2.0, 2), (1.5, 1), (2.9999999, 2)]:
        paft.callback.on_epoch_begin(None, SimpleNamespace(epoch=state_epoch), None)
        assert paft.epoch == want


# ---- misconfigurations: one clear line each ---------------------------------------------------
def _trl_trainer(tok, tmp_path, paft, trainer_cls=None, **config):
    trl = pytest.importorskip("trl")
    settings = {**paft.sft_config_kwargs(), **config}
    args = trl.SFTConfig(str(tmp_path), report_to="none", bf16=False, max_steps=2, **settings)
    cls = trainer_cls or trl.SFTTrainer
    return cls(model=_lora_model(tok), args=args, processing_class=tok, **paft.trainer_kwargs())


def test_trl_without_skip_prepare_dataset_says_so(tok, tmp_path):
    paft = paft_data(tok, n=8)
    with pytest.raises(ValueError, match="skip_prepare_dataset"):
        _trl_trainer(tok, tmp_path, paft, dataset_kwargs=None)


@pytest.mark.parametrize("trainer", ["trl", "transformers"])
def test_remove_unused_columns_is_refused_when_the_trainer_is_built(tok, tmp_path, trainer):
    paft = paft_data(tok, n=8)
    with pytest.raises(FlexpaftError, match="remove_unused_columns=False"):
        if trainer == "trl":
            _trl_trainer(tok, tmp_path, paft, remove_unused_columns=True)
        else:
            from transformers import Trainer, TrainingArguments

            args = TrainingArguments(tmp_path, report_to="none")
            Trainer(model=_lora_model(tok), args=args, **paft.trainer_kwargs())


def test_persistent_workers_are_refused(tok, tmp_path):
    paft = paft_data(tok, n=8)
    with pytest.raises(FlexpaftError, match="dataloader_persistent_workers=False"):
        _trl_trainer(
            tok, tmp_path, paft, dataloader_num_workers=1, dataloader_persistent_workers=True
        )


def test_options_data_without_the_mixin_is_refused_at_the_first_step(tok, tmp_path):
    paft = paft_data(tok, n=8, loss="options")
    trainer = _trl_trainer(tok, tmp_path, paft)
    cudnn_before = torch.backends.cuda.cudnn_sdp_enabled()
    with pytest.raises(FlexpaftError, match="OptionsLossMixin"):
        trainer.train()
    assert torch.backends.cuda.cudnn_sdp_enabled() == cudnn_before  # released before raising


def test_options_data_without_its_collator_is_refused(tok, tmp_path):
    trl = pytest.importorskip("trl")

    paft = paft_data(tok, n=8, loss="options")

    class T(OptionsLossMixin, trl.SFTTrainer):
        pass

    args = trl.SFTConfig(str(tmp_path), report_to="none", bf16=False, **paft.sft_config_kwargs())
    trainer = T(
        model=_lora_model(tok),
        args=args,
        processing_class=tok,
        train_dataset=paft.dataset,
        callbacks=[paft.callback],
    )
    with pytest.raises(FlexpaftError, match="data_collator=paft.collator"):
        trainer.train()


def test_the_mixin_refuses_answer_batches_and_token_losses(tok, tmp_path):
    trl = pytest.importorskip("trl")

    class T(OptionsLossMixin, trl.SFTTrainer):
        pass

    paft = paft_data(tok, n=8, loss="answer")
    with pytest.raises(FlexpaftError, match="loss='options'"):
        _trl_trainer(tok, tmp_path, paft, T)  # refused when built, before any step
    with pytest.raises(FlexpaftError, match="loss_type='dft'"):
        _trl_trainer(tok, tmp_path, paft_data(tok, n=8, loss="options"), T, loss_type="dft")


def test_a_run_without_the_callback_warns_that_epochs_repeat(tok, tmp_path, caplog):
    from transformers import Trainer, TrainingArguments

    paft = paft_data(tok, n=8)
    args = TrainingArguments(
        tmp_path, num_train_epochs=2, per_device_train_batch_size=4, report_to="none",
        save_strategy="no", **paft.training_args_kwargs(),
    )  # fmt: skip
    kwargs = {k: v for k, v in paft.trainer_kwargs().items() if k != "callbacks"}
    with caplog.at_level(logging.WARNING, logger="flexpaft.hf.data"):
        Trainer(model=_lora_model(tok), args=args, **kwargs).train()
    assert "callbacks=[paft.callback]" in caplog.text


# ---- inputs checked up front ------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"own_rate": 1.0}, r"own_rate must be a number in \[0, 1\)"),
        ({"own_rate": -0.1}, r"own_rate must be a number in \[0, 1\)"),
        ({"own_rate": True}, r"own_rate must be a number in \[0, 1\)"),
        ({"loss": "full"}, "loss must be one of answer, options"),
        ({"loss": "options", "answer_format": "generation"}, "generation format"),
        ({"answer_format": "essay"}, "unknown answer format 'essay'"),
        ({"own_template": "Intent:"}, "own_template cannot serve task snips"),
        ({"own_template": "{question}\nAnswer:"}, r"slot \{question\} is not a field"),
        ({"own_template": "Intent:", "own_rate": 0}, "own_template cannot serve task snips"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"max_length": 1}, "max_length must be an integer >= 2"),
        ({"chat_template": "missing.jinja"}, "chat_template must be auto, none or a template"),
        ({"templates": ["Request: {text}\nIntent:", "Intent?"]}, r"templates\[1\]"),
        ({"templates": "Request: {text}\nIntent:"}, r"pass \[text\]"),
        ({"templates": []}, "templates is empty"),
        ({"templates": [3]}, r"templates\[0\] must be a template text"),
        ({"examples": [{"text": "hi", "intent": "X"}]}, r"examples\[0\]: has gold"),
        (
            {"examples": snips_rows(3) + [{"text": "hi"}]},
            r"examples\[3\]: has no field 'intent' \(task snips\); its fields are: text$",
        ),
        ({"examples": []}, "examples is empty"),
        ({"examples": "train.jsonl"}, "load_examples"),
        ({"task": "no-such-task"}, "no-such-task"),
    ],
)
def test_bad_inputs_fail_up_front_in_one_line(tok, kwargs, message):
    call = {"task": "snips", "examples": snips_rows(8), "templates": SNIPS_TEMPLATES, **kwargs}
    with pytest.raises(FlexpaftError, match=message) as e:
        PaftData(call.pop("task"), call.pop("examples"), call.pop("templates"), tok, **call)
    assert "\n" not in str(e.value)


def test_a_prompt_set_file_skips_invalid_templates_as_flexpaft_train_does(tok, tmp_path):
    good = write_jsonl(tmp_path / "p.jsonl", [{"template": t} for t in SNIPS_TEMPLATES + ["Hi"]])
    assert len(PaftData("snips", snips_rows(4), good, tok, own_rate=0).templates) == 6
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"template": "Hi {question}"}])
    with pytest.raises(FlexpaftError, match="no template in .* is valid for task snips"):
        PaftData("snips", snips_rows(4), bad, tok)


def test_importing_flexpaft_hf_does_not_import_trl():
    code = "import sys, flexpaft.hf; assert 'trl' not in sys.modules, 'trl imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=300)


def test_a_task_yaml_without_a_template_needs_own_template_or_rate_zero(tok, tmp_path):
    task = tmp_path / "intents.yaml"
    task.write_text(
        "name: intents\nfields: [text]\nrequired: [text]\nfixed_options: [PlayMusic, GetWeather]\n"
        "label_words: [music, weather]\ngold: intent\ngold_kind: text\nformats: [label_words]\n"
    )
    rows = [{"text": f"song {i}", "intent": ["PlayMusic", "GetWeather"][i % 2]} for i in range(6)]
    templates = ["Request: {text}\nIntent:", "{text}\nLabel:"]
    with pytest.raises(FlexpaftError, match="give own_template=<your prompt>, or own_rate=0"):
        PaftData(task, rows, templates, tok)
    assert len(PaftData(task, rows, templates, tok, own_rate=0).templates) == 2
    paft = PaftData(task, rows, templates, tok, own_template="Say: {text}\nIntent:")
    assert paft.own_index == 2 and paft.rendered(0, 0).answers == [" music", " weather"]


@pytest.mark.parametrize(("attn", "packed"), [("sdpa", True), ("eager", True), ("flash", False)])
def test_the_callback_packs_options_where_the_models_attention_takes_a_4d_mask(
    tok, attn, packed, monkeypatch
):
    """At train begin the callback tells the options collator the model's attention kernel:
    sdpa and eager take the shared-prefix 4D mask, a flash kernel gets one row per option."""
    import flexpaft.training.options as options_mod
    from flexpaft.hf import PaftEpochCallback

    monkeypatch.setattr(options_mod, "_warned_rows", True)  # the one warning is not the point
    paft = paft_data(tok, n=4, loss="options")
    model = build_model(len(tok), layers=1, seed=0)
    model.config._attn_implementation = {"flash": "flash_attention_2"}.get(attn, attn)
    callback = PaftEpochCallback(paft)
    callback.on_train_begin(None, None, None, model=model)
    try:
        assert paft.collator.packed is packed
    finally:
        callback.on_train_end(None, None, None)
