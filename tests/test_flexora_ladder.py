"""Flexora never costs accuracy (issue 30): validation decides the block count (ladder.py), the
search's inner loop trains on stage 2's loss, and its validation wordings are unseen ones."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch
from conftest import build_tokenizer
from test_flexora_search import (
    TEMPLATES,
    build_search,
    config,
    gated_float64_model,
    random_batches,
)

from flexpaft.methods.flexora import search as search_mod
from flexpaft.methods.flexora.gates import gate_values
from flexpaft.methods.flexora.ladder import (
    choose,
    ladder_sizes,
    paired,
    per_example_losses,
    validated_selection,
)
from flexpaft.methods.flexora.wordings import validation_set, validation_templates
from flexpaft.prompts import Template
from flexpaft.settings.train import FlexoraSettings
from flexpaft.tasks import AnswerFormat
from flexpaft.training.data import answer_loss
from flexpaft.training.options import OptionsCollator, options_loss


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


# -- the rungs and the choice ------------------------------------------------------------------


def test_rungs_are_top_k_by_alpha_and_always_include_all_blocks():
    alpha = [0.3, -0.1, 0.2, -0.4, 0.05, -0.2, 0.1, -0.3]
    sizes = ladder_sizes(alpha)
    gate_count = int((gate_values(torch.tensor(alpha, dtype=torch.float64)) > 1).sum())
    assert list(sizes) == sorted({4, gate_count, 2, 6, 8})
    assert "positive" in sizes[4] and "N/2" in sizes[4] and sizes[8] == ["all"]

    # softmax ignores a shift of alpha; the positive rule's count does not, the other rungs do.
    def by_rule(rungs):
        return {name: k for k, names in rungs.items() for name in names}

    shifted = by_rule(ladder_sizes([a + 0.25 for a in alpha]))
    assert shifted.pop("positive") == 6 and by_rule(sizes).pop("positive") == 4
    assert shifted == {n: k for n, k in by_rule(sizes).items() if n != "positive"}
    # No alpha above 0: the positive rung is the best block alone.
    assert 1 in ladder_sizes([-0.1, -0.2, -0.3, -0.4])


def test_paired_standard_error_is_the_sd_of_the_differences_over_root_n():
    d, se = paired([1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0])
    assert d == pytest.approx(1.5)
    assert se == pytest.approx(math.sqrt(sum((x - 1.5) ** 2 for x in range(4)) / 3) / 2)
    assert paired([0.3], [0.1]) == (pytest.approx(0.2), 0.0)


BASE = [0.5 + 0.01 * j for j in range(10)]


def test_the_smallest_rung_within_noise_of_the_best_is_kept():
    sizes = {1: ["N/4"], 2: ["positive", "N/2"], 4: ["all"]}
    order = [2, 0, 1, 3]
    worse = [x + 0.5 for x in BASE]  # 0.5 worse on every example: separated
    level = [x + (0.01 if j % 2 else -0.012) for j, x in enumerate(BASE)]  # noise around all
    ladder = choose(sizes, order, [worse, level, BASE], 1.0)
    assert ladder.layers == [0, 2]
    assert [r["chosen"] for r in ladder.records] == [False, True, False]
    assert [r["level"] for r in ladder.records] == [False, True, True]
    assert ladder.records[-1]["blocks"] == [0, 1, 2, 3] and ladder.records[-1]["rules"] == ["all"]
    assert ladder.message.startswith("flexora: 2 of 4 blocks (validated: within 1 SE of the best")


def test_all_blocks_are_kept_when_every_smaller_rung_validates_worse():
    sizes = {1: ["N/4"], 2: ["N/2"], 4: ["all"]}
    worse = [[x + 0.1 + 0.001 * (j % 3) for j, x in enumerate(BASE)] for _ in range(2)]
    ladder = choose(sizes, [3, 1, 0, 2], [*worse, BASE], 1.0)
    assert ladder.layers == [0, 1, 2, 3] and ladder.records[-1]["chosen"]
    assert ladder.message.startswith(
        "flexora: all 4 blocks (validated: every smaller selection validates worse"
    )


def test_the_choice_never_validates_worse_than_all_blocks_beyond_the_noise():
    rng = np.random.default_rng(0)
    sizes = {1: ["a"], 2: ["b"], 3: ["c"], 5: ["d"], 8: ["all"]}
    for trial in range(200):
        tolerance = [0.0, 0.5, 1.0, 2.0][trial % 4]
        shifts = rng.normal(0, 0.05, size=5)
        losses = [(1.0 + s + rng.normal(0, 0.1, size=12)).tolist() for s in shifts]
        ladder = choose(sizes, list(range(8)), losses, tolerance)
        chosen = next(i for i, r in enumerate(ladder.records) if r["chosen"])
        d, se = paired(losses[chosen], losses[-1])
        assert d <= tolerance * se + 1e-9
        means = [sum(x) / len(x) for x in losses]
        best = min(range(5), key=lambda i: (means[i], i))
        d, se = paired(losses[chosen], losses[best])
        assert d <= tolerance * se + 1e-9
        assert chosen <= best  # the smallest level rung: never a larger one than the best
        assert not any(r["level"] for r in ladder.records[:chosen])


def test_tolerance_zero_takes_the_best_rung():
    sizes = {1: ["a"], 2: ["b"], 4: ["all"]}
    middle = [x - 0.001 for x in BASE]
    noisy = [x + 0.01 * (-1) ** j for j, x in enumerate(BASE)]  # level within 1 SE
    ladder = choose(sizes, [0, 1, 2, 3], [noisy, middle, BASE], 0.0)
    assert ladder.layers == [0, 1]
    assert choose(sizes, [0, 1, 2, 3], [noisy, middle, BASE], 1.0).layers == [0]


# -- the own-prompt check -----------------------------------------------------------------------


def test_a_rung_worse_under_the_own_prompt_is_not_kept():
    sizes = {1: ["N/4"], 2: ["N/2"], 4: ["all"]}
    level = [x + (0.01 if j % 2 else -0.012) for j, x in enumerate(BASE)]  # level with all
    unseen = [level, level, BASE]
    worse = [x + 0.2 for x in BASE]
    calls = []

    def own(table):
        def score(i):
            calls.append(i)
            return table[i]

        return score

    # Rung 0 is worse under the own prompt, rung 1 level there: rung 1 is kept.
    ladder = choose(sizes, [2, 0, 1, 3], unseen, 1.0, own([worse, level, BASE]))
    assert ladder.layers == [0, 2]
    assert [r.get("own_level") for r in ladder.records] == [False, True, None]
    assert ladder.records[0]["own_vs_all"][0] == pytest.approx(0.2)
    assert "own prompt" in ladder.message
    assert sorted(set(calls)) == [0, 1, 2]  # lazily: never more rungs than it must judge
    # Every smaller rung worse under the own prompt: all blocks, and the line says why.
    calls.clear()
    ladder = choose(sizes, [2, 0, 1, 3], unseen, 1.0, own([worse, worse, BASE]))
    assert ladder.layers == [0, 1, 2, 3]
    assert "worse under the own prompt" in ladder.message
    # The smallest rung passes both: the rungs above it are never scored under the own prompt.
    calls.clear()
    ladder = choose(sizes, [2, 0, 1, 3], unseen, 1.0, own([level, worse, BASE]))
    assert ladder.layers == [2] and sorted(set(calls)) == [0, 2]
    # Without the check the unseen wordings alone decide.
    assert choose(sizes, [2, 0, 1, 3], unseen, 1.0).layers == [2]


def test_the_own_prompt_check_never_keeps_a_rung_worse_there_beyond_the_noise():
    rng = np.random.default_rng(1)
    sizes = {1: ["a"], 2: ["b"], 3: ["c"], 5: ["d"], 8: ["all"]}
    for trial in range(200):
        tolerance = [0.0, 0.5, 1.0, 2.0][trial % 4]
        unseen = [(1.0 + s + rng.normal(0, 0.1, size=12)).tolist() for s in rng.normal(0, 0.05, 5)]
        owned = [(1.0 + s + rng.normal(0, 0.1, size=12)).tolist() for s in rng.normal(0, 0.05, 5)]
        ladder = choose(sizes, list(range(8)), unseen, tolerance, owned.__getitem__)
        chosen = next(i for i, r in enumerate(ladder.records) if r["chosen"])
        d, se = paired(owned[chosen], owned[-1])
        assert d <= tolerance * se + 1e-9
        d, se = paired(unseen[chosen], unseen[-1])
        assert d <= tolerance * se + 1e-9
        # A smaller rung was passed over only for failing one of the two checks.
        for r in ladder.records[:chosen]:
            assert not r["level"] or r["own_level"] is False


def test_the_search_scores_the_own_prompt_on_its_validation_examples(tmp_path, tok):
    cfg = config(
        tmp_path,
        "method=flexora",
        "flexora.val_templates=train",
        "flexora.search_steps=2",
        "flexora.alpha_warmup=0",
        "flexora.stable_steps=0",
    )
    # Plain flexora validating under the template it trains on, the own prompt itself: the
    # validation losses are the own prompt's already, so nothing is rendered twice.
    from flexpaft.prompts.task_templates import own_template
    from flexpaft.tasks import get_task

    mine = own_template(cfg.prompts.template, get_task("boolq"), AnswerFormat.LABEL_WORDS)
    search = build_search(cfg, tok, templates=[mine])
    assert search.own_val is None
    search.release()
    assert mine.text != TEMPLATES[1].text
    search = build_search(cfg, tok, templates=[TEMPLATES[1]], layers=4)
    own = search.own_val.batches
    # Trained and validated under another template: the same 6 validation examples (2 batches
    # of 4, the last one filled) are rendered under the own prompt, the task's default template.
    assert sum(len(b["input_ids"]) for b in own) == sum(
        len(b["input_ids"]) for b in search.val.batches
    )
    text = tok.decode(own[0]["input_ids"][0], skip_special_tokens=True)
    assert "Answer:" in text
    outcome = search.run(progress=False)
    scored = [r for r in outcome.ladder if "own_loss" in r]
    assert outcome.ladder[-1] in scored  # all N blocks, the reference
    (chosen,) = [r for r in outcome.ladder if r["chosen"]]
    assert chosen["own_vs_all"][0] <= chosen["own_vs_all"][1] + 1e-9
    # Off: no own-prompt batches, no own fields.
    cfg = config(
        tmp_path / "off", "method=flexora", "flexora.val_templates=train", "flexora.own_check=false"
    )
    search = build_search(cfg, tok, templates=[TEMPLATES[1]])
    assert search.own_val is None
    search.release()


# -- scoring a rung on the model ----------------------------------------------------------------


def test_per_example_losses_average_to_the_batch_losses():
    model, gates, _ = gated_float64_model()
    for batch in random_batches():  # every row: 2 answer tokens
        got = per_example_losses(model, batch)
        assert len(got) == 2
        assert sum(got) / 2 == pytest.approx(float(answer_loss(model, batch)), rel=1e-5)
        assert per_example_losses(model, batch, rows=1) == pytest.approx(got, rel=1e-9)
    g = torch.Generator().manual_seed(1)
    items = [
        {
            "prompt": torch.randint(2, 100, (5,), generator=g).tolist(),
            "answers": [torch.randint(2, 100, (n,), generator=g).tolist() for n in (2, 1, 3)],
            "gold": gold,
        }
        for gold in (0, 2, 1)
    ]
    batch = OptionsCollator(0)(items)
    got = per_example_losses(model, batch, rows=2)
    assert len(got) == 3
    assert sum(got) / 3 == pytest.approx(float(options_loss(model, batch)), rel=1e-9)


def test_rungs_switch_off_blocks_with_gate_zero_and_keep_the_searched_gates_on_the_rest():
    """Off blocks: gate 0, so their LoRA adds nothing (the same as zeroing their B). On blocks:
    the searched gate, so the all-blocks rung is the searched model itself."""
    model, gates, _ = gated_float64_model()  # alpha [0.3, -0.2, 0.1]: block 0 ranks first
    batches = random_batches()
    searched = [x for b in batches for x in per_example_losses(model, b)]
    ladder = validated_selection(model, gates, batches, tolerance=1.0)
    assert [r["k"] for r in ladder.records] == [1, 2, 3]
    assert ladder.records[-1]["loss"] == pytest.approx(sum(searched) / len(searched), abs=1e-6)
    assert ladder.records[0]["blocks"] == [0] and ladder.records[1]["blocks"] == [0, 2]

    # Block 0 alone, by hand: the B matrices of blocks 1 and 2 zeroed, alpha as searched.
    kept = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name and (".h.1." in name or ".h.2." in name):
                kept[name] = p.clone()
                p.zero_()
    alone = [x for b in batches for x in per_example_losses(model, b)]
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in kept:
                p.copy_(kept[name])
    assert ladder.records[0]["loss"] == pytest.approx(sum(alone) / len(alone), abs=1e-6)
    # Nothing is left behind: alpha, the gates and the mode are as they were.
    assert gates.fixed is None and gates.alpha.tolist() == [0.3, -0.2, 0.1]
    assert not model.training


# -- the search ---------------------------------------------------------------------------------


def test_the_validated_search_records_its_ladder_logs_one_line_and_resumes_to_it(
    tmp_path, tok, caplog
):
    cfg = config(
        tmp_path,
        "flexora.search_steps=3",
        "flexora.alpha_warmup=0",
        "flexora.stable_steps=0",
        "checkpoint_every=3",
    )
    with caplog.at_level(logging.INFO, logger="flexpaft"):
        outcome = build_search(cfg, tok, layers=4).run(progress=False)
    sel = json.loads((tmp_path / "flexora" / "selection.json").read_text())
    ladder = sel["ladder"]
    assert sel["rule"] == "validated" and ladder == outcome.ladder
    assert ladder[-1]["k"] == 4 and "all" in ladder[-1]["rules"]
    assert [r["k"] for r in ladder] == sorted({r["k"] for r in ladder})
    (chosen,) = [r for r in ladder if r["chosen"]]
    assert chosen["blocks"] == sel["layers"] == outcome.layers and chosen["level"]
    assert not any(r["level"] for r in ladder if r["k"] < chosen["k"])
    d, se = chosen["vs_all"]
    assert d <= se + 1e-9  # tolerance_se = 1: never worse than all blocks beyond the noise
    # Every rung on every validation row served: 6 examples in 2 batches of 4.
    assert {r["examples"] for r in ladder} == {8}
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("flexora: ")]
    assert len(lines) == 1 and "validated" in lines[0] and str(outcome.layers) in lines[0]
    # The finished search, resumed from its checkpoint, scores the same rungs again.
    again = build_search(cfg, tok, layers=4).run(progress=False)
    assert again.steps == 3 and again.ladder == outcome.ladder


@pytest.mark.parametrize(
    "method, loss, expected",
    [
        ("flexora+paft", "auto", "options"),
        ("flexora+paft", "answer", "answer"),
        ("flexora", "auto", "answer"),
        ("flexora", "options", "options"),
    ],
)
def test_the_inner_loop_trains_on_stage_twos_loss(tmp_path, tok, method, loss, expected):
    cfg = config(tmp_path, f"method={method}", f"optim.loss={loss}", "flexora.val_templates=train")
    search = build_search(cfg, tok)
    assert search.train_loss_kind == cfg.optim.resolved_loss(cfg.spec, AnswerFormat.LABEL_WORDS)
    assert search.train_loss_kind == expected
    assert search.train_loss_fn is (options_loss if expected == "options" else answer_loss)
    # The training stream is in that loss's layout: options batches carry the gold option.
    assert ("gold" in next(search.train)) == (expected == "options")
    search.release()


@pytest.mark.parametrize("k", [1, 3])
def test_the_unrolled_search_runs_on_the_options_loss(tmp_path, tok, monkeypatch, k):
    seen = []
    real = search_mod.model_hypergradient

    def spy(model, optimizer, scheduler, alpha, steps, val, val_loss_fn, train_loss_fn):
        seen.append((train_loss_fn, val_loss_fn, steps, val))
        return real(model, optimizer, scheduler, alpha, steps, val, val_loss_fn, train_loss_fn)

    monkeypatch.setattr(search_mod, "model_hypergradient", spy)
    cfg = config(
        tmp_path,
        "flexora.search_steps=1",
        f"flexora.unroll={k}",
        "flexora.val_batches=1",
        "flexora.alpha_warmup=0",
        "flexora.schedule=search",  # no warm-up: the first inner step moves LoRA
    )
    search = build_search(cfg, tok)
    outcome = search.run(progress=False)
    assert search.train_loss_kind == "options"
    ((train_fn, val_fn, steps, val),) = seen
    assert train_fn is options_loss and val_fn is options_loss
    assert len(steps) == k and all("gold" in b for micro in steps for b in micro)
    assert outcome.inner_steps == k and outcome.alpha != [0.0, 0.0]
    assert {int(s["step"]) for s in search.optimizer.state.values()} == {k}
    assert outcome.ladder and outcome.inner_loss == "options"


# -- unseen validation wordings -----------------------------------------------------------------

PROMPT_SET = [Template(f"T{i}: {{passage}} {{question}}?\nAnswer:") for i in range(8)]
OWN = Template("Own: {passage}\n{question}?\nAnswer:")


@pytest.mark.parametrize("seed", range(12))
def test_the_own_template_never_validates(seed):
    f = FlexoraSettings()
    # flexora+paft: the own template appended to the prompt set (drawn at own_rate).
    train, val = validation_templates(f, [*PROMPT_SET, OWN], seed, own=OWN)
    assert OWN in train and OWN not in val and len(val) == 2
    # The held-out quarter is the prompt set's own, as if there were no own template.
    assert validation_templates(f, PROMPT_SET, seed) == ([t for t in train if t is not OWN], val)
    # The own template already in the prompt set: it stays with the training ones too.
    inside = PROMPT_SET[seed % 8]
    train, val = validation_templates(f, PROMPT_SET, seed, own=inside)
    assert inside in train and inside not in val and len(val) == 2


def test_plain_flexora_validates_under_neither_its_template_nor_the_own_one(tmp_path):
    from flexpaft.settings.loading import load_config
    from flexpaft.settings.train import TrainConfig
    from flexpaft.tasks import get_task

    path = tmp_path / "set.jsonl"
    rows = [{"template": t.text} for t in [*PROMPT_SET[:3], OWN, Template(TEMPLATES[0].text)]]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cfg = load_config(
        TrainConfig,
        None,
        [f"output_dir={tmp_path}/r", "method=flexora", f"prompts.prompt_set={path}"],
    )
    task = get_task("boolq")
    got = validation_set(cfg, task, cfg.data.answer_format(task), [TEMPLATES[0]], own=OWN)
    assert [t.text for t in got] == [t.text for t in PROMPT_SET[:3]]


def test_validation_batches_never_draw_the_own_template(tmp_path, tok, monkeypatch):
    from flexpaft.training import loader

    owns = []
    real = loader.make_loader

    def spy(*args, **kwargs):
        owns.append((kwargs.get("own"), args[4]))
        return real(*args, **kwargs)

    monkeypatch.setattr(loader, "make_loader", spy)
    cfg = config(tmp_path, "prompts.own_rate=0.5")
    search = build_search(cfg, tok, templates=[*PROMPT_SET, OWN], own=OWN)
    # own_rate draws it for training batches only; the third loader is the own-prompt check's.
    assert [o for o, _ in owns] == [OWN, None, None]
    assert owns[2][1] == [OWN] and OWN not in owns[1][1]
    assert OWN in search.train_templates and OWN not in search.val_templates
    assert not set(search.val_templates) & set(search.train_templates)
    search.release()
