"""The search's row chunks: same gradients as the whole micro-batch, less held at once."""

from __future__ import annotations

import pytest
import torch
from conftest import build_model, build_tokenizer
from test_flexora_search import config, float64_answer_loss, gated_float64_model, run_search

from flexpaft.errors import FlexpaftError
from flexpaft.methods.flexora.chunks import chunked_loss_backward, search_rows, split_rows
from flexpaft.methods.flexora.hypergrad import alpha_gradient
from flexpaft.settings.train import LoraSettings
from flexpaft.training.data import PadCollator, answer_loss
from flexpaft.training.lora import add_lora


def items(lengths, answers, vocab=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for k, a in zip(lengths, answers):
        ids = torch.randint(2, vocab, (k,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [-100] * (k - a) + ids[-a:]})
    return out


def test_split_rows_drops_the_padding_a_chunk_shares_and_keeps_positions():
    rows = items([3, 12, 5, 4], [1, 1, 1, 1])
    batch = PadCollator(0)(rows)  # longest 12, padded to 16
    first, second = split_rows(batch, 2)
    # Rows 0-1: longest 12 -> 16 columns, nothing to drop; rows 2-3: longest 5 -> 8 columns.
    assert first["input_ids"].shape == (2, 16) and second["input_ids"].shape == (2, 8)
    # Each chunk is what the collator makes of its rows alone.
    for chunk, alone in ((first, PadCollator(0)(rows[:2])), (second, PadCollator(0)(rows[2:]))):
        assert chunk.keys() == alone.keys()
        for k in chunk:
            assert torch.equal(chunk[k], alone[k]), k
    assert split_rows(batch, 4) == [batch] and split_rows(batch, 0) == [batch]
    assert [c["input_ids"].shape[0] for c in split_rows(batch, 3)] == [3, 1]


def lora_grads(model):
    return [p.grad.clone() for p in model.parameters() if p.requires_grad]


@pytest.mark.parametrize("rows", [1, 3])
def test_chunked_backward_gives_the_whole_batch_gradient(rows):
    # Answers of 1, 4, 2 and 3 tokens: an unweighted mean of chunk means would differ.
    batch = PadCollator(0)(items([6, 9, 5, 8], [1, 4, 2, 3]))
    model = add_lora(build_model(100), LoraSettings(r=2))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)

    whole = answer_loss(model, batch)
    whole.backward()
    expected = lora_grads(model)
    model.zero_grad()

    loss = chunked_loss_backward(
        batch, rows, lambda b: answer_loss(model, b), lambda loss, last: loss.backward()
    )
    got = lora_grads(model)
    assert loss == pytest.approx(float(whole.detach()), rel=1e-5)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)
    model.zero_grad()

    # The naive mean of chunk means is a different gradient: the weights are doing the work.
    chunks = split_rows(batch, rows)
    for c in chunks:
        (answer_loss(model, c) / len(chunks)).backward()
    naive = lora_grads(model)
    assert any(not torch.allclose(n, e, rtol=1e-3, atol=1e-6) for n, e in zip(naive, expected))


def test_backward_is_told_which_chunk_is_last():
    batch = PadCollator(0)(items([6, 9, 5, 8, 7], [1, 4, 2, 3, 1]))
    model = add_lora(build_model(100), LoraSettings(r=2))
    seen = []
    chunked_loss_backward(
        batch, 2, lambda b: answer_loss(model, b), lambda loss, last: seen.append(last)
    )
    assert seen == [False, False, True]


def test_alpha_gradient_in_chunks_is_the_whole_batches_gradient():
    model, gates, _ = gated_float64_model()
    collate = PadCollator(0)
    batches = [
        collate(items([5, 7, 4], [1, 3, 2], seed=1)),
        collate(items([6, 3, 8], [2, 1, 4], seed=2)),
    ]
    whole, whole_loss = alpha_gradient(model, gates, batches, float64_answer_loss)
    for rows in (1, 2):
        got, loss = alpha_gradient(model, gates, batches, float64_answer_loss, rows=rows)
        torch.testing.assert_close(got, whole, rtol=1e-9, atol=1e-12)
        assert loss == pytest.approx(whole_loss, rel=1e-9)


def test_search_rows_defaults_to_half_the_batch_and_deepspeed_never_splits():
    assert search_rows(8, 0) == 4 and search_rows(5, 0) == 3 and search_rows(1, 0) == 1
    assert search_rows(8, 2) == 2 and search_rows(8, 16) == 16
    assert search_rows(8, 0, deepspeed=True) == 0 and search_rows(8, 8, deepspeed=True) == 0
    with pytest.raises(FlexpaftError, match="DeepSpeed"):
        search_rows(8, 2, deepspeed=True)


def test_search_trajectory_does_not_depend_on_the_chunk_size(tmp_path):
    tok = build_tokenizer()
    runs = {}
    for rows in (4, 1):  # batch_size 4: whole micro-batches, then one row at a time
        cfg = config(tmp_path / str(rows), "flexora.search_steps=3", f"flexora.micro_batch={rows}")
        search, outcome = run_search(cfg, tok)
        assert search.rows == rows
        runs[rows] = outcome
    torch.testing.assert_close(
        torch.tensor(runs[1].alpha), torch.tensor(runs[4].alpha), rtol=0, atol=1e-4
    )
    assert runs[1].layers == runs[4].layers
    assert max(abs(a) for a in runs[4].alpha) > 1e-3  # alpha did move
    # The default splits a micro-batch of 4 into 2 x 2.
    search, _ = run_search(config(tmp_path / "auto", "flexora.search_steps=1"), tok)
    assert search.rows == 2
