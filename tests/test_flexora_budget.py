"""Flexora search length: the budget in steps, examples or a share of one pass (the same on every
machine), the compute it records, and the early stop."""

from __future__ import annotations

import json
import warnings

import pytest
from conftest import build_tokenizer
from test_flexora_search import build_search, config, run_search

from flexpaft.errors import FlexpaftError
from flexpaft.methods.flexora.budget import (
    StableSelection,
    compute_share,
    outer_step_cost,
    passes_per_micro_batch,
    search_length,
)
from flexpaft.settings.train import FlexoraSettings, OptimSettings
from flexpaft.training import data as data_mod


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def length(steps_per_epoch=40, global_batch=8, optim=None, **flexora):
    return search_length(
        FlexoraSettings(**flexora), optim or OptimSettings(), steps_per_epoch, global_batch
    )


def test_explicit_steps_and_examples_win_over_the_auto_budget():
    assert length(search_steps=7) == 7
    assert length(search_steps=7, search_examples=100) == 7
    assert length(search_examples=100) == 13  # ceil(100 / 8) optimizer steps
    assert length(search_examples=100, unroll=2) == 7  # two inner steps per outer step


def test_auto_budget_is_a_share_of_one_pass():
    # One pass over the training split: 40 optimizer steps, one outer step each.
    assert length() == 40
    assert length(search_budget=0.5) == 20
    assert length(search_budget=0.1) == 4
    assert length(search_budget=0.29, steps_per_epoch=100) == 29  # 28.999999999999996
    assert length(search_budget=0.15, steps_per_epoch=63) == 9  # rounded down
    assert length(search_budget=0.01) == 1  # at least one step
    # What an outer step costs, and how long stage 2 is, no longer shorten it: 1 is a whole pass
    # with 2 validation batches, at 1 epoch, and with max_steps (before 2026-12-07: 120 / 3 =
    # 40, 40 / 2 = 20 and 50 / 2 = 25 outer steps).
    assert length(val_batches=2) == 40
    assert length(optim=OptimSettings(epochs=1)) == 40
    assert length(optim=OptimSettings(max_steps=50)) == 40
    # grad_accum 2: 20 optimizer steps a pass; the budget counts them, not micro-batches.
    assert length(20, 16, OptimSettings(grad_accum=2), search_budget=0.5) == 10
    # Unrolled: an outer step is 2 inner optimizer steps, so a pass is 20 outer steps.
    assert length(unroll=2) == 20
    assert length(unroll=2, search_budget=0.5) == 10
    assert length(unroll=3, steps_per_epoch=34) == 12  # ceil(34 / 3)


def test_compute_share_counts_the_search_against_stage_two():
    # Stage 2: 3 epochs x 40 steps = 120 micro-batches; a first-order outer step is 1 training
    # + 1 validation micro-batch; unrolled (K = 2): 2 x 3 + 1 = 7.
    f, o = FlexoraSettings(), OptimSettings()
    assert outer_step_cost(f, 1) == 2
    assert compute_share(f, o, 40, 40) == pytest.approx(80 / 120)
    assert outer_step_cost(FlexoraSettings(unroll=2), 1) == 7
    assert compute_share(FlexoraSettings(unroll=2), o, 40, 20) == pytest.approx(140 / 120)
    # max_steps replaces the epochs.
    assert compute_share(f, OptimSettings(max_steps=50), 40, 40) == pytest.approx(80 / 50)


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


@pytest.mark.parametrize("unit", ["auto", "rows", "pass"])
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_a_whole_pass_on_every_machine_whatever_the_unit(unit, device):
    """The snips study's setting: 272 training examples in batches of 8 (34 steps a pass),
    2 epochs, 1 validation batch, micro-batches in 2 chunks of 4 rows. Before 2026-12-07 a GPU
    counted 2 passes per chunked micro-batch and searched 17 outer steps, a CPU 34."""
    f, o = FlexoraSettings(budget_unit=unit), OptimSettings(epochs=2, batch_size=8)
    passes = passes_per_micro_batch(f, 8, 4, device)
    assert search_length(f, o, 34, 8) == 34
    assert search_length(FlexoraSettings(budget_unit=unit, search_budget=0.5), o, 34, 8) == 17
    # The unit says how the search's compute is counted, nothing else: (1 + 1) units per outer
    # step, x 2 where every chunk is a pass; stage 2 is 68 micro-batches.
    counts_chunks = unit == "pass" or (unit == "auto" and device == "cuda")
    assert passes == (2 if counts_chunks else 1)
    assert compute_share(f, o, 34, 34, passes) == pytest.approx(34 * 2 * passes / 68)
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
    # 14 training examples in batches of 4: 4 steps a pass; half of it is 2 outer steps.
    search, outcome = run_search(config(tmp_path, "flexora.search_budget=0.5"), tok)
    assert search.total == 2 and outcome.steps == 2 and not outcome.stopped_early
    # The default, 1: the whole pass, one outer step per optimizer step (built, not run).
    assert build_search(config(tmp_path / "whole"), tok).total == 4
    assert build_search(config(tmp_path / "k2", "flexora.unroll=2"), tok).total == 2


def test_the_search_is_as_long_counting_passes_as_counting_rows(tmp_path, tok):
    # budget_unit=pass is what auto counts on a GPU: batches of 4 run as 2 chunks of 2 rows
    # (micro_batch auto), 2 units per micro-batch. The search is as long as with rows (before
    # 2026-12-07 it was 1 outer step instead of 2); only its recorded compute share doubles:
    # 2 steps x (1 + 2 validation batches) x 2 / (3 epochs x 4 steps).
    cfg = config(tmp_path, "flexora.search_budget=0.5", "flexora.budget_unit=pass")
    search, outcome = run_search(cfg, tok)
    assert search.rows == 2 and search.total == 2 and outcome.steps == 2
    assert outcome.compute_share == 1.0
    rows, rows_outcome = run_search(
        config(tmp_path / "rows", "flexora.search_budget=0.5", "flexora.budget_unit=rows"), tok
    )
    assert rows.total == 2 and rows_outcome.compute_share == 0.5
    sel = json.loads((tmp_path / "flexora" / "selection.json").read_text())
    assert sel["compute_share"] == 1.0 and sel["budget_steps"] == 2


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
    # batches of 4 by wrapping around) rendered, and one more under the own prompt (the
    # validated rule's own-prompt check, rendered once as well).
    val_renders = [u for u in rendered if u in val]
    assert set(val_renders) == val and len(val_renders) == 16
    assert len(search.own_val.batches) == 2
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
