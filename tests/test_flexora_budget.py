"""Flexora search length: the budget in steps, examples or a share of stage 2, and the early stop."""

from __future__ import annotations

import json
import warnings

import pytest
from conftest import build_tokenizer
from test_flexora_search import config, run_search

from flexpaft.errors import FlexpaftError
from flexpaft.methods.flexora.budget import (
    StableSelection,
    outer_step_cost,
    passes_per_micro_batch,
    search_length,
)
from flexpaft.settings.train import FlexoraSettings, OptimSettings
from flexpaft.training import data as data_mod


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def length(steps_per_epoch=40, global_batch=8, optim=None, passes=1, **flexora):
    return search_length(
        FlexoraSettings(**flexora), optim or OptimSettings(), steps_per_epoch, global_batch, passes
    )


def test_explicit_steps_and_examples_win_over_the_auto_budget():
    assert length(search_steps=7) == 7
    assert length(search_steps=7, search_examples=100) == 7
    assert length(search_examples=100) == 13  # ceil(100 / 8) optimizer steps
    assert length(search_examples=100, unroll=2) == 7  # two inner steps per outer step


def test_auto_budget_is_a_share_of_stage_two_compute():
    # Stage 2: 3 epochs x 40 steps = 120 micro-batches; an outer step is 1 training + 1
    # validation micro-batch; 0.5 x 120 / 2 = 30.
    assert outer_step_cost(FlexoraSettings(), 1) == 2
    assert length(search_budget=0.5) == 30
    # The default, 1: 120 / 2 = 60, but one pass over the training split is 40 steps.
    assert length() == 40
    # grad_accum 2, val_batches 2: 3 x 20 x 2 = 120 micro-batches, 4 per outer step: 15.
    assert length(20, 16, OptimSettings(grad_accum=2), val_batches=2, search_budget=0.5) == 15
    # max_steps replaces the epochs: 0.5 x 50 / 2 = 12.5 -> 12.
    assert length(optim=OptimSettings(max_steps=50), search_budget=0.5) == 12
    # Unrolled: 2 inner steps x 3 + 1 validation = 7 per outer step; 60 / 7 -> 8.
    assert outer_step_cost(FlexoraSettings(unroll=2), 1) == 7
    assert length(unroll=2, search_budget=0.5) == 8
    # The old default, 0.1 of stage 2: 12 / 2 = 6.
    assert length(search_budget=0.1) == 6


def test_auto_budget_stops_at_one_pass_and_takes_at_least_one_step():
    # 30 epochs x 10 steps: 1 x 300 / 2 = 150 outer steps, but one pass is 10.
    assert length(10, optim=OptimSettings(epochs=30)) == 10
    assert length(1, optim=OptimSettings(epochs=1)) == 1


@pytest.mark.parametrize(
    "unit, device, rows, expected",
    [
        ("rows", "cuda", 4, 1),  # a micro-batch is one unit however it is split
        ("pass", "cpu", 4, 2),  # every chunk is a pass: 8 rows as 2 chunks of 4
        ("pass", "cpu", 3, 3),  # 8 rows as chunks of 3, 3, 2
        ("pass", "cuda", 0, 1),  # not split: one pass
        ("pass", "cuda", 8, 1),
        ("auto", "cpu", 4, 1),  # time follows rows on a CPU
        ("auto", "cuda", 4, 2),  # a GPU pays a whole pass per chunk
        ("auto", "mps", 4, 2),
    ],
)
def test_a_micro_batch_costs_one_unit_per_row_chunk_where_passes_are_the_unit(
    unit, device, rows, expected
):
    f = FlexoraSettings(budget_unit=unit)
    assert passes_per_micro_batch(f, 8, rows, device) == expected


def test_counting_passes_shortens_the_auto_budget_but_not_explicit_lengths():
    # Two chunks per micro-batch: an outer step is (1 + 1) x 2 = 4 units; 0.5 x 120 / 4 = 15,
    # and at the default (1) 120 / 4 = 30.
    assert outer_step_cost(FlexoraSettings(), 1, passes=2) == 4
    assert length(passes=2, search_budget=0.5) == 15
    assert length(passes=2) == 30
    assert length(passes=2, search_steps=7) == 7
    assert length(passes=2, search_examples=100) == 13
    # The unrolled hypergradient runs whole micro-batches: chunks do not enter its cost.
    assert outer_step_cost(FlexoraSettings(unroll=2), 1, passes=2) == 7


def test_an_unknown_budget_unit_is_refused_with_the_choices(capsys):
    with pytest.raises(ValueError, match="budget_unit 'time' is not one of auto, rows, pass"):
        FlexoraSettings(budget_unit="time")
    # From the command line: one line and exit 2, before any data or model is read.
    from flexpaft.cli import main

    assert main(["-q", "search", "--set", "flexora.budget_unit=time"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "flexora.budget_unit 'time' is not one of" in err


@pytest.mark.parametrize(
    "kw", [{"search_budget": 0.0}, {"search_budget": 1.5}, {"search_steps": -1}]
)
def test_bad_budgets_are_refused(kw):
    with pytest.raises(FlexpaftError):
        length(**kw)


def test_stable_selection_counts_unchanged_steps_and_resets_on_a_change():
    s = StableSelection(stable_steps=3)
    seq = [[0.1, -0.1], [0.2, -0.1], [0.3, -0.2], [0.1, 0.05], [0.1, 0.1], [0.2, 0.1], [0.3, 0.1]]
    stops = [s.update(a) for a in seq]
    assert stops == [False, False, False, False, False, False, True]
    assert s.unchanged == 3 and s.last == (0, 1)
    never = StableSelection(stable_steps=0)
    assert not any(never.update([0.1, -0.1]) for _ in range(20))


def test_stable_selection_follows_the_rule_and_treats_empty_as_a_pattern():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning at early, all-negative steps
        assert StableSelection().selection([-0.1, -0.2]) == ()
        assert StableSelection(rule="gate").selection([0.0, 0.0]) == ()
        assert StableSelection(rule="gate").selection([0.1, -0.1, 0.05]) == (0, 2)
    assert StableSelection(rule="topk", k=1).selection([0.2, 0.1]) == (0,)
    assert StableSelection(rule="topk", k=1).selection([0.1, 0.2]) == (1,)


def test_search_stops_once_the_sign_pattern_is_stable_and_resumes_as_stopped(tmp_path, tok):
    cfg = config(tmp_path, "flexora.search_steps=40", "flexora.stable_steps=2")
    search, outcome = run_search(cfg, tok)
    assert outcome.stopped_early and outcome.steps < 40 and outcome.budget_steps == 40
    rows = [json.loads(x) for x in (tmp_path / "flexora" / "alpha.jsonl").read_text().splitlines()]
    signs = [tuple(a > 0 for a in r["alpha"]) for r in rows]
    assert len(rows) == outcome.steps
    assert signs[-1] == signs[-2] == signs[-3]  # unchanged over the last two steps
    assert rows[-1]["unchanged"] == 2 and all(r["unchanged"] < 2 for r in rows[:-1])
    sel = json.loads((tmp_path / "flexora" / "selection.json").read_text())
    assert sel["stopped_early"] and sel["steps"] == outcome.steps
    # A resumed run finds the stopped search in its checkpoint and takes no further step.
    _, again = run_search(cfg, tok)
    assert again.steps == outcome.steps and again.alpha == outcome.alpha


def test_default_length_comes_from_the_budget(tmp_path, tok):
    # 14 training examples in batches of 4: 4 steps a pass; stage 2: 3 epochs = 12 steps; an
    # outer step is 1 + 2 validation micro-batches: 0.5 x 12 / 3 = 2.
    search, outcome = run_search(config(tmp_path, "flexora.search_budget=0.5"), tok)
    assert search.total == 2 and outcome.steps == 2 and not outcome.stopped_early


def test_the_search_counts_its_row_chunks_when_told_to(tmp_path, tok):
    # The same run counting passes: batches of 4 run as 2 chunks of 2 rows (micro_batch auto),
    # so an outer step is (1 + 2) x 2 = 6 units: 0.5 x 12 / 6 = 1. On a CPU, auto counts rows.
    cfg = config(tmp_path, "flexora.search_budget=0.5", "flexora.budget_unit=pass")
    search, outcome = run_search(cfg, tok)
    assert search.rows == 2 and search.total == 1 and outcome.steps == 1
    auto, _ = run_search(config(tmp_path / "auto", "flexora.search_budget=0.5"), tok)
    assert auto.total == 2


def test_validation_batches_are_rendered_once(tmp_path, tok, monkeypatch):
    from flexpaft.training import options as options_mod

    rendered: list[str] = []

    def counting(real):
        def getitem(self, key):
            rendered.append(self.examples[key[0]].uid)
            return real(self, key)

        return getitem

    # Validation items come from the options dataset (flexora.val_loss=options by default).
    for cls in (data_mod.RenderedDataset, options_mod.OptionsDataset):
        monkeypatch.setattr(cls, "__getitem__", counting(cls.__getitem__))
    search, outcome = run_search(config(tmp_path, "flexora.search_steps=6"), tok)
    val = {e.uid for e in search.val_examples}
    # 6 steps x 2 validation batches of 4 = 48 rows served; one pass (6 examples, padded to 2
    # batches of 4 by wrapping around) rendered.
    val_renders = [u for u in rendered if u in val]
    assert set(val_renders) == val and len(val_renders) == 8
    assert len(search.val.batches) == 2 and outcome.steps == 6


def test_alpha_pass_runs_with_lora_weights_frozen_and_restores_them():
    from test_flexora_search import gated_float64_model, random_batches

    from flexpaft.methods.flexora.hypergrad import alpha_gradient

    model, gates, _ = gated_float64_model()
    lora = [p for p in model.parameters() if p.requires_grad]
    seen = []

    def loss_fn(m, batch):
        # Nothing the forward saves is for LoRA gradients: no parameter requires one.
        seen.append(any(p.requires_grad for p in m.parameters()))
        return m(input_ids=batch["input_ids"]).logits.float().pow(2).mean()

    grad, _ = alpha_gradient(model, gates, random_batches(), loss_fn)
    assert seen == [False, False] and grad.abs().sum() > 0
    assert lora and all(p.requires_grad for p in lora)
