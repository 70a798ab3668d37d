"""The loss over answer options (train/options.py) and Flexora's search on it (issue 24)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from conftest import build_model, build_tokenizer
from test_flexora_search import (
    TEMPLATES,
    assert_matches_finite_differences,
    config,
    examples,
    gated_float64_model,
    run_search,
)

from flexpaft.errors import FlexpaftError
from flexpaft.evaluation.scoring import score_naive
from flexpaft.methods.flexora.hypergrad import alpha_gradient
from flexpaft.methods.flexora.select import overlap
from flexpaft.methods.flexora.wordings import validation_templates
from flexpaft.prompts import Template
from flexpaft.render import render
from flexpaft.settings.loading import load_config
from flexpaft.settings.train import FlexoraSettings, TrainConfig
from flexpaft.tasks import AnswerFormat, get_task
from flexpaft.training.options import (
    OptionsCollator,
    OptionsDataset,
    option_chunks,
    option_scores,
    options_loss,
)


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


class FixedLogits(torch.nn.Module):
    """A stand-in model whose every position predicts the same logits."""

    def __init__(self, logits: list[float]):
        super().__init__()
        self.logits = torch.tensor(logits, dtype=torch.float64)

    def forward(self, input_ids, logits_to_keep=1, **_):
        b = input_ids.shape[0]
        return SimpleNamespace(logits=self.logits.expand(b, logits_to_keep, -1))


def test_one_token_options_loss_is_the_hand_computed_value():
    # Vocabulary logits 0..4; the options are tokens 1 and 3, gold the second. Over the two
    # options the scores are 1 - lse and 3 - lse, so CE = -(3 - log(e^1 + e^3)) = log(1 + e^-2).
    batch = OptionsCollator(0)(
        [{"prompt": [2, 2], "answers": [[1], [3]], "gold": 1}] * 2
        + [{"prompt": [4], "answers": [[1], [3]], "gold": 0}]
    )
    assert batch["option_ids"].tolist() == [[1, 3]] * 3
    loss = options_loss(FixedLogits([0.0, 1.0, 2.0, 3.0, 4.0]), batch)
    # Two rows with gold 3 (log(1 + e^-2)) and one with gold 1 (log(1 + e^2)).
    expected = (2 * math.log(1 + math.exp(-2)) + math.log(1 + math.exp(2))) / 3
    assert float(loss) == pytest.approx(expected, rel=1e-12)


def test_multi_token_scores_are_the_evaluators_summed_log_probabilities(tok):
    model = build_model(len(tok), layers=2).eval()
    task = get_task("boolq")
    # Multi-token answers: the option texts of a cloze format over made-up words.
    exs = examples(4)
    ds = OptionsDataset(task, exs, TEMPLATES, AnswerFormat.LABEL_WORDS, tok, 64)
    items = [ds[(i, i % 2)] for i in range(4)]
    for it in items:  # make the answers several tokens long
        it["answers"] = [a + a for a in it["answers"]]
    batch = OptionsCollator(tok.pad_token_id)(items)
    assert "row_example" in batch and batch["input_ids"].shape[0] == 8
    with torch.no_grad():
        scores = option_scores(model, batch)

    # The naive reference scores "prompt + answer" text; rebuild it from the same token ids.
    def naive(it, answer):
        ids = torch.tensor([it["prompt"] + answer])
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
        c = len(answer)
        return float(logp[torch.arange(ids.shape[1] - c - 1, ids.shape[1] - 1), ids[0, -c:]].sum())

    with torch.no_grad():
        for i, it in enumerate(items):
            for j, a in enumerate(it["answers"]):
                assert float(scores[i, j]) == pytest.approx(naive(it, a), abs=1e-4)


def test_one_token_scores_rank_as_the_evaluator_does(tok):
    model = build_model(len(tok), layers=2).eval()
    task = get_task("boolq")
    exs = examples(6)
    ds = OptionsDataset(task, exs, TEMPLATES, AnswerFormat.LABEL_WORDS, tok, 64)
    batch = OptionsCollator(tok.pad_token_id)([ds[(i, 0)] for i in range(6)])
    assert "option_ids" in batch  # yes/no are one token each in the test tokenizer
    with torch.no_grad():
        scores = option_scores(model, batch)
    ref = score_naive(
        model, tok, [render(task, TEMPLATES[0], e, AnswerFormat.LABEL_WORDS) for e in exs]
    )
    for i, r in enumerate(ref):
        assert scores[i].tolist() == pytest.approx(r.scores, abs=1e-4)


@pytest.mark.parametrize("multi", [False, True])
def test_chunks_of_whole_examples_sum_to_the_batch_loss(tok, multi):
    model = build_model(len(tok), layers=2).eval()
    ds = OptionsDataset(
        get_task("boolq"), examples(5), TEMPLATES, AnswerFormat.LABEL_WORDS, tok, 64
    )
    items = [ds[(i, i % 2)] for i in range(5)]
    if multi:
        for it in items:
            it["answers"] = [a + a for a in it["answers"]]
    batch = OptionsCollator(tok.pad_token_id)(items)
    with torch.no_grad():
        whole = float(options_loss(model, batch))
        parts = list(option_chunks(batch, 2))
        assert [round(w, 3) for _, w in parts] == [0.4, 0.4, 0.2]
        summed = sum(float(options_loss(model, c)) * w for c, w in parts)
    assert summed == pytest.approx(whole, rel=1e-5)


def test_alpha_gradient_under_the_options_loss_matches_finite_differences():
    model, gates, _ = gated_float64_model()
    g = torch.Generator().manual_seed(1)

    def item(gold):
        prompt = torch.randint(2, 100, (5,), generator=g).tolist()
        answers = [torch.randint(2, 100, (n,), generator=g).tolist() for n in (2, 1, 3)]
        return {"prompt": prompt, "answers": answers, "gold": gold}

    batches = [OptionsCollator(0)([item(0), item(2)]), OptionsCollator(0)([item(1), item(1)])]
    grad, loss = alpha_gradient(model, gates, batches, options_loss, rows=1)

    def total() -> float:
        with torch.no_grad():
            return sum(float(options_loss(model, b)) for b in batches)

    assert loss == pytest.approx(total())
    assert_matches_finite_differences(grad, gates, total)


def test_val_loss_auto_follows_the_answer_format():
    f = FlexoraSettings()
    assert f.resolved_val_loss(AnswerFormat.LABEL_WORDS) == "options"
    assert f.resolved_val_loss(AnswerFormat.LETTER) == "options"
    assert f.resolved_val_loss(AnswerFormat.GENERATION) == "full"
    assert FlexoraSettings(val_loss="full").resolved_val_loss(AnswerFormat.LETTER) == "full"


@pytest.mark.parametrize(
    "override",
    [
        "flexora.val_loss=accuracy",
        "flexora.val_templates=unseen",
        "flexora.schedule=linear",
        "flexora.alpha_warmup=1.0",
        "flexora.val_template_fraction=0",
    ],
)
def test_bad_search_settings_are_refused_before_anything_loads(tmp_path, override):
    with pytest.raises(FlexpaftError, match=override.split("=")[0].split(".")[1]):
        load_config(TrainConfig, None, [f"output_dir={tmp_path}", override])


def test_heldout_validation_templates_are_disjoint_from_training_ones():
    many = [Template(f"T{i}: {{question}}\nAnswer:") for i in range(8)]
    train, val = validation_templates(FlexoraSettings(), many, seed=0)
    assert len(val) == 2 and len(train) == 6 and not set(train) & set(val)
    assert set(train) | set(val) == set(many)
    # auto with one or two templates: the training templates (nothing to hold out).
    assert validation_templates(FlexoraSettings(), many[:2], 0) == (many[:2], many[:2])
    with pytest.raises(FlexpaftError, match="val_templates=heldout needs"):
        validation_templates(FlexoraSettings(val_templates="heldout"), many[:1], 0)


def test_the_search_tunes_alpha_on_options_under_held_out_templates(tmp_path, tok):
    many = [Template(t.text.replace("Answer", f"Reply {i}")) for i, t in enumerate(TEMPLATES * 2)]
    cfg = config(
        tmp_path,
        "flexora.search_steps=6",
        "flexora.alpha_warmup=0.5",
        "flexora.val_templates=heldout",
        "flexora.stable_steps=0",
    )
    from accelerate import Accelerator

    from flexpaft.methods.flexora.search import LayerSearch

    search = LayerSearch(
        cfg,
        build_model(len(tok), layers=2),
        tok,
        get_task("boolq"),
        AnswerFormat.LABEL_WORDS,
        examples(),
        many,
        Accelerator(cpu=True),
    )
    assert search.val_loss_kind == "options" and len(search.val_templates) == 1
    assert not set(search.val_templates) & set(search.train_templates)
    assert all("option_ids" in b for b in search.val.batches)
    outcome = search.run(progress=False)
    rows = [json.loads(x) for x in (tmp_path / "flexora" / "alpha.jsonl").read_text().splitlines()]
    # alpha waits 3 of the 6 outer steps, with no validation pass, then moves.
    assert [r["alpha_moved"] for r in rows] == [False] * 3 + [True] * 3
    assert all(r["alpha"] == [0.0, 0.0] and r["val_loss"] is None for r in rows[:3])
    assert rows[3]["alpha"] != [0.0, 0.0] and rows[3]["val_loss"] > 0
    assert rows[-1]["overlap_final"] == 1.0
    assert all(r["overlap_final"] == overlap(r["selected"], outcome.layers) for r in rows)


def test_stage2_schedule_runs_the_first_steps_of_stage_twos_schedule(tmp_path, tok):
    squeezed, _ = run_search(
        config(tmp_path / "a", "flexora.search_steps=4", "flexora.schedule=search"), tok
    )
    staged, _ = run_search(
        config(tmp_path / "b", "flexora.search_steps=4", "flexora.schedule=stage2"), tok
    )
    # The search's cosine ends at 0 after its 4 steps; stage 2's is barely started there.
    assert squeezed.scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-9)
    assert staged.scheduler.get_last_lr()[0] > 0.005


@pytest.mark.parametrize("stage2, trained", [("all", 20), ("train", 14)])
def test_stage2_trains_on_all_examples_unless_told_otherwise(
    tmp_path, tiny_model_dir, stage2, trained
):
    from conftest import boolq_rows, write_jsonl

    from flexpaft.cli import main

    data = write_jsonl(tmp_path / "boolq.jsonl", boolq_rows(20))
    argv = ["-q", "train", "--method", "flexora", "-o", str(tmp_path / "run")]
    for s in (
        f"model.name={tiny_model_dir}",
        f"data.source={data}",
        "optim.max_steps=1",
        "optim.batch_size=4",
        "flexora.val_examples=6",
        "flexora.search_steps=1",
        f"flexora.stage2_examples={stage2}",
    ):
        argv += ["--set", s]
    assert main(argv) == 0
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    # The search held 6 of the 20 out for alpha; stage 2 learns from all 20 (or the other 14).
    assert manifest["flexora"]["train_examples"] == 14
    assert manifest["examples"] == trained


def test_plain_flexora_validates_under_its_prompt_set_not_its_one_template(tmp_path):
    from flexpaft.methods.flexora.wordings import validation_set as _validation_set

    one = [Template(TEMPLATES[0].text)]
    others = [Template(f"T{i}: {{question}}\nAnswer:") for i in range(3)]
    # heldout with wordings the run never trains on: all of them validate, the one trains.
    f = FlexoraSettings(val_templates="heldout")
    assert validation_templates(f, one, 0, others) == (one, others)
    # auto uses them too (plain flexora given a prompt set); train ignores them.
    assert validation_templates(FlexoraSettings(), one, 0, others) == (one, others)
    train_only = FlexoraSettings(val_templates="train")
    assert validation_templates(train_only, one, 0, others) == (one, one)
    assert validation_templates(FlexoraSettings(), one, 0) == (one, one)
    task = get_task("boolq")
    path = tmp_path / "set.jsonl"
    path.write_text(
        "".join(json.dumps({"template": t.text}) + "\n" for t in [*others, one[0]]),
        encoding="utf-8",
    )
    cfg = load_config(
        TrainConfig,
        None,
        [f"output_dir={tmp_path}/r", "method=flexora", f"prompts.prompt_set={path}"],
    )
    fmt = cfg.data.answer_format(task)
    got = _validation_set(cfg, task, fmt, one)
    assert [t.text for t in got] == [t.text for t in others]  # the trained one is left out
    paft = load_config(
        TrainConfig,
        None,
        [f"output_dir={tmp_path}/r", "method=flexora+paft", f"prompts.prompt_set={path}"],
    )
    assert _validation_set(paft, task, fmt, one) is None
    only = tmp_path / "only.jsonl"
    only.write_text(json.dumps({"template": one[0].text}) + "\n", encoding="utf-8")
    cfg = load_config(
        TrainConfig,
        None,
        [f"output_dir={tmp_path}/r", "method=flexora", f"prompts.prompt_set={only}"],
    )
    with pytest.raises(FlexpaftError, match="nothing to validate under"):
        _validation_set(cfg, task, fmt, one)
