"""The options loss over one shared prompt (issue 32): every option packed after the prompt in one
sequence (flexpaft/packing.py), against the row-per-option layout and the naive scorer."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
from conftest import build_model, build_tokenizer, needs_shared, write_jsonl
from test_flexora_search import assert_matches_finite_differences, gated_float64_model

import flexpaft.training.options as options_mod
from flexpaft.evaluation import scoring
from flexpaft.evaluation.scoring import score_naive
from flexpaft.methods.flexora.chunks import weighted_chunks
from flexpaft.methods.flexora.hypergrad import alpha_gradient
from flexpaft.packing import attention_implementation, packs_with_mask, supports_packing
from flexpaft.prompts import Template
from flexpaft.render import render
from flexpaft.settings.loading import load_config
from flexpaft.settings.train import LoraSettings, TrainConfig
from flexpaft.tasks import AnswerFormat, get_task
from flexpaft.training.consistency import PairedCollator, PairedOptionsDataset, consistency_loss
from flexpaft.training.loader import make_loader
from flexpaft.training.lora import add_lora
from flexpaft.training.options import (
    OptionsCollator,
    OptionsDataset,
    option_chunks,
    option_scores,
    options_loss,
    packs_options,
)

ARC = get_task("arc_easy")
CLOZE = AnswerFormat.OPTION_TEXT
WORDS = ["lid", "twist", "open the jar", "first", "second option here", "the cat sat", "blue"]
TEMPLATES = [
    Template("Question: {question}\nAnswer:", "t0"),
    Template("Goal: {question}\nSolution:", "t1"),
    Template("{question}", "t2"),
]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def mc_examples(n: int = 7):
    """ARC-schema records with 3 to 5 options of different token lengths and questions of
    different lengths (so batches are left-padded and options end at different places)."""
    out = []
    for i in range(n):
        k = 3 + i % 3
        opts = [
            " ".join(WORDS[(i + j) % len(WORDS)] for _ in range(1 + (i * j) % 3)) for j in range(k)
        ]
        out.append(
            ARC.normalize(
                {
                    "question": "is the sky blue " * (1 + i % 4) + f"number {i}?",
                    "choices": {"text": opts, "label": list("ABCDE"[:k])},
                    "answerKey": "ABCDE"[(2 * i) % k],
                }
            )
        )
    return out


def lora_model(tok, attention: str, dtype=torch.float32):
    model = build_model(len(tok), layers=2, seed=5).to(dtype)
    model.set_attn_implementation(attention)
    model = add_lora(model, LoraSettings(r=4, alpha=8.0, dropout=0.0))
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # B = 0 at init: give LoRA an effect, so its gradients are general
            p.data.normal_(0, 0.1)
    return model.eval()


def items_and_rendered(tok, n: int = 7):
    exs = mc_examples(n)
    ds = OptionsDataset(ARC, exs, TEMPLATES, CLOZE, tok, 128)
    keys = [(i, i % len(TEMPLATES)) for i in range(n)]
    rendered = [render(ARC, TEMPLATES[t], exs[e], CLOZE) for e, t in keys]
    return [ds[k] for k in keys], rendered


def loss_and_grads(model, batch, loss_fn=options_loss):
    model.zero_grad(set_to_none=True)
    loss = loss_fn(model, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return float(loss.detach()), grads


def test_packed_batches_hold_one_row_per_example_with_the_prompt_once(tok):
    items, _ = items_and_rendered(tok)
    assert len({len(a) for it in items for a in it["answers"]}) > 2  # options of several lengths
    assert len({len(it["prompt"]) for it in items}) > 2  # prompts of several lengths
    packed = OptionsCollator(tok.pad_token_id, packed=True)(items)
    rows = OptionsCollator(tok.pad_token_id)(items)
    assert packed["input_ids"].shape[0] == len(items)
    assert rows["input_ids"].shape[0] == sum(len(it["answers"]) for it in items)
    # Real tokens: each prompt once, and each option's tokens but its last (a target only).
    expected = sum(len(it["prompt"]) + sum(len(a) - 1 for a in it["answers"]) for it in items)
    assert int(packed["attention_mask"].sum()) == expected
    assert int(packed["attention_mask"].sum()) < int(rows["attention_mask"].sum())
    # Left-padded: every row ends at the last position.
    assert bool(packed["attention_mask"][:, -1].all())
    # Every option's every token is a target, once.
    assert packed["target_id"].numel() == sum(len(a) for it in items for a in it["answers"])


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_loss_and_lora_gradients_equal_the_row_layouts(tok, attention):
    model = lora_model(tok, attention)
    items, _ = items_and_rendered(tok)
    packed = OptionsCollator(tok.pad_token_id, packed=True)(items)
    rows = OptionsCollator(tok.pad_token_id)(items)
    assert "segment_ids" in packed and "row_example" in rows
    loss_p, grads_p = loss_and_grads(model, packed)
    loss_r, grads_r = loss_and_grads(model, rows)
    assert loss_p == pytest.approx(loss_r, abs=1e-5)
    assert grads_p.keys() == grads_r.keys() and len(grads_p) == 8  # q, v x A, B x 2 blocks
    for name in grads_p:
        torch.testing.assert_close(grads_p[name], grads_r[name], rtol=1e-4, atol=1e-6)
        assert float(grads_p[name].abs().max()) > 0, name


def test_packed_gradients_of_all_parameters_equal_the_row_layouts(tok):
    # Every weight trainable (no LoRA): the prompt's hidden states get gradient from every
    # option at once in the packed row, from each option's own copy in the row layout. GPT-2
    # computes in float64 throughout (Llama's RMSNorm and rotary run in float32), so the two
    # sums can be held to float64 precision.
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(2)
    config = GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=16, n_layer=2, n_head=2)
    model = GPT2LMHeadModel(config).double().eval()
    items, _ = items_and_rendered(tok)
    packed = OptionsCollator(tok.pad_token_id, packed=True)(items)
    rows = OptionsCollator(tok.pad_token_id)(items)
    loss_p, grads_p = loss_and_grads(model, packed)
    loss_r, grads_r = loss_and_grads(model, rows)
    assert loss_p == pytest.approx(loss_r, rel=1e-10)
    assert len(grads_p) == len(list(model.parameters()))
    for name in grads_p:
        torch.testing.assert_close(grads_p[name], grads_r[name], rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_scores_are_the_naive_scorers_per_option(tok, attention):
    model = lora_model(tok, attention)
    items, rendered = items_and_rendered(tok)
    batch = OptionsCollator(tok.pad_token_id, packed=True)(items)
    with torch.no_grad():
        scores = option_scores(model, batch)
    naive = score_naive(model, tok, rendered)
    for i, ref in enumerate(naive):
        k = len(ref.scores)
        assert scores[i, :k].tolist() == pytest.approx(ref.scores, abs=1e-4)
        assert bool(torch.isinf(scores[i, k:]).all())  # options the example lacks


def test_consistency_loss_and_gradients_are_equal_across_layouts(tok):
    model = lora_model(tok, "sdpa")
    exs = mc_examples(6)
    ds = PairedOptionsDataset(ARC, exs, TEMPLATES, CLOZE, tok, 128)
    items = [ds[(i, i % 3, (i + 1) % 3)] for i in range(6)]
    packed = PairedCollator(tok.pad_token_id, packed=True)(items)
    rows = PairedCollator(tok.pad_token_id)(items)
    assert "first.segment_ids" in packed and "second.segment_ids" in packed
    assert "first.row_example" in rows

    def loss_fn(m, b):
        return consistency_loss(m, b, 0.7)[0]

    loss_p, grads_p = loss_and_grads(model, packed, loss_fn)
    loss_r, grads_r = loss_and_grads(model, rows, loss_fn)
    assert loss_p == pytest.approx(loss_r, abs=1e-5)
    # Examples with fewer options than the batch's most: the missing ones reach no gradient
    # (they once turned every gradient into NaN through the KL term, in both layouts).
    assert all(bool(torch.isfinite(g).all()) for g in [*grads_p.values(), *grads_r.values()])
    for name in grads_p:
        torch.testing.assert_close(grads_p[name], grads_r[name], rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        parts_p = consistency_loss(model, packed, 0.7)[1]
        parts_r = consistency_loss(model, rows, 0.7)[1]
    assert parts_p == pytest.approx(parts_r, abs=1e-5) and parts_p["sym_kl"] > 0


def test_chunks_of_packed_batches_give_the_batchs_loss_and_gradient(tok):
    model = lora_model(tok, "sdpa")
    items, _ = items_and_rendered(tok)
    batch = OptionsCollator(tok.pad_token_id, packed=True)(items)
    whole, grads = loss_and_grads(model, batch)
    parts = list(option_chunks(batch, 3))
    assert [round(w, 3) for _, w in parts] == [round(3 / 7, 3), round(3 / 7, 3), round(1 / 7, 3)]
    # Flexora's search chunks options batches through the same function.
    assert [w for _, w in weighted_chunks(batch, 3)] == [w for _, w in parts]
    for chunk, _ in parts:
        assert chunk["input_ids"].shape[0] == chunk["gold"].shape[0]  # a packed row stays whole
        # All-padding columns dropped; the targets, counted from the end, still fit.
        assert bool(chunk["attention_mask"].bool().any(dim=0)[0])
        assert int(chunk["target_back"].max()) <= chunk["input_ids"].shape[1]
    model.zero_grad(set_to_none=True)
    summed = 0.0
    for chunk, w in parts:
        loss = options_loss(model, chunk) * w
        loss.backward()
        summed += float(loss.detach())
    assert summed == pytest.approx(whole, abs=1e-6)
    for name, p in model.named_parameters():
        if name in grads:
            torch.testing.assert_close(p.grad, grads[name], rtol=1e-4, atol=1e-7)


def test_alpha_gradient_under_the_packed_options_loss(tok):
    """Flexora's validation gradient, chunked by rows=1: the same as under per-option rows, and
    central differences agree (float64, GPT-2 under its default attention)."""
    model, gates, _ = gated_float64_model()
    assert supports_packing(model)
    g = torch.Generator().manual_seed(1)

    def item(gold):
        prompt = torch.randint(2, 100, (int(torch.randint(3, 7, (1,), generator=g)),), generator=g)
        answers = [torch.randint(2, 100, (n,), generator=g).tolist() for n in (2, 1, 3)]
        return {"prompt": prompt.tolist(), "answers": answers, "gold": gold}

    pairs = [[item(0), item(2)], [item(1), item(1)]]
    packed = [OptionsCollator(0, packed=True)(p) for p in pairs]
    rows = [OptionsCollator(0)(p) for p in pairs]
    grad_p, loss_p = alpha_gradient(model, gates, packed, options_loss, rows=1)
    grad_r, loss_r = alpha_gradient(model, gates, rows, options_loss, rows=1)
    assert loss_p == pytest.approx(loss_r, rel=1e-10)
    torch.testing.assert_close(grad_p, grad_r, rtol=1e-8, atol=1e-12)

    def total() -> float:
        with torch.no_grad():
            return sum(float(options_loss(model, b)) for b in packed)

    assert loss_p == pytest.approx(total())
    assert_matches_finite_differences(grad_p, gates, total)


@pytest.mark.parametrize("unroll", [0, 1])
def test_the_search_validates_on_packed_batches_as_on_rows(tmp_path, tok, monkeypatch, unroll):
    """Flexora's search with the options validation loss on a multi-token task: its validation
    batches are packed, and alpha follows the same trajectory as with per-option rows (the
    first-order step chunked by one row, and the unrolled hypergradient)."""
    import json

    from accelerate import Accelerator

    from flexpaft.methods.flexora.search import LayerSearch

    def search(out, packed):
        if not packed:
            import flexpaft.training.loader as loader_mod

            monkeypatch.setattr(loader_mod, "packs_options", lambda attn: False)
        cfg = load_config(
            TrainConfig,
            None,
            [
                "method=flexora",
                f"output_dir={out}",
                "optim.batch_size=4",
                "optim.num_workers=0",
                "optim.lr=0.01",
                "data.max_length=64",
                "flexora.val_examples=6",
                "flexora.val_batches=2",
                "flexora.search_steps=3",
                "flexora.alpha_warmup=0",
                "flexora.stable_steps=0",
                "flexora.micro_batch=1",
                f"flexora.unroll={unroll}",
                "lora.r=4",
            ],
        )
        s = LayerSearch(
            cfg,
            build_model(len(tok), layers=2),
            tok,
            ARC,
            CLOZE,
            mc_examples(14),
            TEMPLATES,
            Accelerator(cpu=True),
        )
        assert s.val_loss_kind == "options" and s.rows == 1
        assert all(("segment_ids" in b) == packed for b in s.val.batches)
        s.run(progress=False)
        log = (out / "flexora" / "alpha.jsonl").read_text().splitlines()
        return [json.loads(x) for x in log]

    packed = search(tmp_path / "packed", True)
    rows = search(tmp_path / "rows", False)
    assert len(packed) == len(rows) == 3
    for a, b in zip(packed, rows):
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-5)
        assert a["alpha"] == pytest.approx(b["alpha"], abs=1e-5)
    assert packed[-1]["alpha"] != [0.0, 0.0]


# --- which layout: the decision, the fallback and its warning ---------------------------------


def test_layout_follows_the_attention_implementation(monkeypatch, caplog):
    monkeypatch.setattr(options_mod, "_warned_rows", False)
    assert packs_with_mask("sdpa") and packs_with_mask("eager")
    assert not packs_with_mask("flash_attention_2") and not packs_with_mask(None)
    with caplog.at_level(logging.WARNING, logger="flexpaft.training.options"):
        assert packs_options("sdpa") and packs_options("eager")
        assert not packs_options(None)  # not told: rows, as before, and nothing to say
        assert not caplog.records
        assert not packs_options("flash_attention_2")
        assert not packs_options("flash_attention_3")
        assert not packs_options("flash_attention_2")
    warned = [r for r in caplog.records if "4D mask" in r.getMessage()]
    assert len(warned) == 1 and "flash_attention_2" in warned[0].getMessage()


def test_attention_implementation_is_read_through_wrappers(tok):
    model = build_model(len(tok), layers=1)
    model.set_attn_implementation("eager")
    lora = add_lora(model, LoraSettings())
    assert attention_implementation(lora) == "eager"
    assert attention_implementation(SimpleNamespace(module=lora)) == "eager"  # DDP keeps .module
    assert attention_implementation(torch.nn.Linear(2, 2)) is None
    model.config._attn_implementation = "flash_attention_2"  # a fake config: no flash here
    assert attention_implementation(lora) == "flash_attention_2"
    assert not supports_packing(lora)
    # The evaluator's decision is the same function.
    assert scoring.supports_packing is supports_packing


def _loader_batch(tok, tmp_path, attention, pairs=False):
    cfg = load_config(
        TrainConfig,
        None,
        [f"data.source={tmp_path / 'x.jsonl'}", "optim.batch_size=4", "optim.num_workers=0"],
    )
    acc = SimpleNamespace(
        process_index=0,
        num_processes=1,
        device=torch.device("cpu"),
        prepare_data_loader=lambda loader: loader,
    )
    loader, sampler = make_loader(
        cfg,
        ARC,
        CLOZE,
        mc_examples(8),
        TEMPLATES,
        tok,
        0,
        acc,
        options=True,
        pairs=pairs,
        attn_implementation=attention,
    )
    sampler.set_epoch(0)
    return next(iter(loader))


def test_make_loader_packs_where_the_kernel_takes_a_mask_and_falls_back_once(
    tok, tmp_path, monkeypatch, caplog
):
    monkeypatch.setattr(options_mod, "_warned_rows", False)
    write_jsonl(tmp_path / "x.jsonl", [])
    with caplog.at_level(logging.WARNING, logger="flexpaft.training.options"):
        assert "segment_ids" in _loader_batch(tok, tmp_path, "sdpa")
        assert "first.segment_ids" in _loader_batch(tok, tmp_path, "eager", pairs=True)
        assert "row_example" in _loader_batch(tok, tmp_path, None)  # the old call: rows
        assert not caplog.records
        assert "row_example" in _loader_batch(tok, tmp_path, "flash_attention_2")
        assert "first.row_example" in _loader_batch(tok, tmp_path, "flash_attention_2", True)
    assert len([r for r in caplog.records if "4D mask" in r.getMessage()]) == 1


def test_the_trainer_trains_on_packed_batches(tmp_path, tiny_model_dir, monkeypatch):
    """``flexpaft train`` with the options loss on a cloze task: packed batches reach the loss
    (the tiny model runs sdpa), and the run's tokens count the prompt once."""
    from test_trainer import _cfg

    from flexpaft.training import loop as trainer_mod

    rows = [
        {
            "goal": f"open jar number {i}",
            "sol1": "twist the lid",
            "sol2": "open the jar",
            "label": i % 2,
        }
        for i in range(8)
    ]
    data = write_jsonl(tmp_path / "piqa.jsonl", rows)
    seen = []
    real = trainer_mod.options_loss

    def recording(model, batch):
        seen.append(("segment_ids" in batch, batch["input_ids"].shape[0], batch["gold"].shape[0]))
        return real(model, batch)

    monkeypatch.setattr(trainer_mod, "options_loss", recording)
    cfg = _cfg(
        tiny_model_dir,
        data,
        tmp_path / "run",
        "data.task=piqa",
        "data.format=option_text",
        "optim.loss=options",
        "optim.max_steps=2",
    )
    res = train_quiet(cfg)
    assert seen and all(packed and n == b for packed, n, b in seen)
    assert res.manifest["loss"] == "options" and res.manifest["steps"] == 2


def train_quiet(cfg):
    from flexpaft.recipe import train

    return train(cfg, progress=False)


@needs_shared
def test_the_options_benchmark_runs_both_parts_on_the_tiny_model(tmp_path, tiny_model_dir):
    """benchmarks/options_throughput.py end to end on the tiny model (steps and train runs)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "options.json"
    cmd = [
        sys.executable,
        str(root / "benchmarks" / "options_throughput.py"),
        f"--model={tiny_model_dir}",
        "--cases=snips7,arc4",
        "--examples=16",
        "--batch=4",
        "--max-length=64",
        "--repeats=1",
        "--warmup=0",
        "--train-limit=24",
        "--val-examples=8",
        "--rows",
        f"--out={out}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(out.read_text())
    snips = result["cases"]["snips7"]
    assert snips["info"]["options"] == 7
    rows = {r["variant"]: r for r in snips["rows"]}
    assert set(rows) == {"answer", "options packed", "options rows", "consistency"}
    # One row per example packed, one per (example, option) otherwise; consistency: two views.
    assert rows["options packed"]["rows_per_step"] == 4
    assert rows["options rows"]["rows_per_step"] == 28
    assert rows["consistency"]["rows_per_step"] == 8
    runs = {r["run"]: r for r in result["train"]}
    assert set(runs) == {"lora", "paft", "flexora", "paft rows", "flexora rows"}
    assert runs["paft"]["loss"] == "options" and runs["flexora"]["search_s"] > 0
