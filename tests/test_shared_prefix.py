"""Shared-prefix scoring (prompt once, all options packed after it) against the naive scorer
(one full forward per option), for every answer format, 2, 4 and 5 options, varied lengths and
left padding, under both attention implementations that take a custom 4D mask."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import build_model, build_tokenizer

from flexpaft.evaluation.evaluator import evaluate_templates
from flexpaft.evaluation.scoring import (
    TokenCache,
    score_continuations,
    score_first_token,
    score_naive,
    single_token_answers,
    supports_packing,
)
from flexpaft.prompts import Template
from flexpaft.render import Rendered, render
from flexpaft.tasks import AnswerFormat, get_task

ARC = get_task("arc_easy")  # up to 5 options (A..E)
BOOLQ = get_task("boolq")
WORDS = ["lid", "twist", "open the jar", "first", "second option here", "the cat sat", "blue"]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def model(request, tok):
    m = build_model(len(tok), layers=3, seed=3)
    m.set_attn_implementation(request.param)
    return m.eval()


def _mc_examples(k: int, n: int = 9):
    """ARC-schema records with ``k`` options; questions and options of varied token length."""
    out = []
    for i in range(n):
        opts = [
            " ".join(WORDS[(i + j) % len(WORDS)] for _ in range(1 + (i * j) % 3)) for j in range(k)
        ]
        out.append(
            ARC.normalize(
                {
                    "question": "is the sky blue " * (1 + i % 4) + f"number {i}?",
                    "choices": {"text": opts, "label": list("ABCDE"[:k])},
                    "answerKey": "ABCDE"[i % k],
                }
            )
        )
    return out


def _items(kind: str, k: int) -> list[Rendered]:
    if kind.startswith("label_words"):
        exs = [
            BOOLQ.normalize({"question": f"is item {i} red", "passage": "x " * i, "answer": i % 2})
            for i in range(9)
        ]
        task = BOOLQ if kind == "label_words" else replace(BOOLQ, label_words=("true", "false"))
        tpl = Template("{passage}\nQuestion: {question}?\nAnswer:")
        return [render(task, tpl, e, AnswerFormat.LABEL_WORDS) for e in exs]
    exs = _mc_examples(k)
    if kind == "option_text":
        return [
            render(ARC, Template("Question: {question}\nAnswer:"), e, AnswerFormat.OPTION_TEXT)
            for e in exs
        ]
    tpl = Template("Question: {question}\n{options}\nAnswer:")
    items = [render(ARC, tpl, e, AnswerFormat.LETTER) for e in exs]
    if kind == "letter_multi":
        # A tokenizer that splits letters: " F".." J" are two tokens here (space, letter), and
        # all options share the first one, so no single position can tell them apart.
        items = [replace(it, answers=[" " + c for c in "FGHIJ"[:k]]) for it in items]
    return items


CASES = [
    ("letter", 2),
    ("letter", 4),
    ("letter", 5),
    ("letter_multi", 2),
    ("letter_multi", 4),
    ("letter_multi", 5),
    ("label_words", 2),
    ("label_words_multi", 2),
    ("option_text", 2),
    ("option_text", 4),
    ("option_text", 5),
]


@pytest.mark.parametrize("kind, k", CASES)
def test_shared_prefix_matches_naive(model, tok, kind, k):
    items = _items(kind, k)
    assert all(len(it.answers) == k for it in items)
    single = single_token_answers(items, TokenCache(tok))
    assert single == (kind in ("letter", "label_words"))
    lengths = {len(tok(it.prompt)["input_ids"]) for it in items}
    assert len(lengths) > 2  # batches of 3 are left-padded
    slow = score_naive(model, tok, items)
    fast = score_continuations(model, tok, items, batch_size=3, shared_prefix=True)
    assert [s.prediction for s in fast] == [s.prediction for s in slow]
    np.testing.assert_allclose([s.scores for s in fast], [s.scores for s in slow], atol=1e-4)
    # The per-option path (flash attention's fallback) gives the same.
    per = score_continuations(model, tok, items, batch_size=4, shared_prefix=False)
    np.testing.assert_allclose([s.scores for s in per], [s.scores for s in slow], atol=1e-4)
    if single:
        first = score_first_token(model, tok, items, batch_size=3)
        assert [s.prediction for s in first] == [s.prediction for s in slow]
        np.testing.assert_allclose([s.scores for s in first], [s.scores for s in slow], atol=1e-4)


def test_one_forward_per_prompt_holds_all_options(model, tok):
    items = _items("option_text", 4)
    seen: list[tuple[int, int]] = []
    hook = model.register_forward_pre_hook(
        lambda mod, args, kw: seen.append(tuple(kw["input_ids"].shape)), with_kwargs=True
    )
    try:
        score_continuations(model, tok, items, batch_size=1, shared_prefix=True)
    finally:
        hook.remove()
    assert len(seen) == len(items)  # one forward per (template, example), not per option
    expected = sorted(
        len(tok(it.prompt)["input_ids"])
        + sum(len(tok(a, add_special_tokens=False)["input_ids"]) - 1 for a in it.answers)
        for it in items
    )
    # The prompt once + every option's tokens but its last (a target only, never an input).
    assert sorted(n for _, n in seen) == expected


def test_token_budget_splits_packed_batches_without_changing_scores(model, tok):
    items = _items("option_text", 5)
    big = score_continuations(model, tok, items, batch_size=16, shared_prefix=True)
    small = score_continuations(
        model, tok, items, batch_size=16, max_batch_tokens=40, shared_prefix=True
    )
    np.testing.assert_allclose([s.scores for s in big], [s.scores for s in small], atol=1e-5)


def test_length_normalized_is_mean_per_token(model, tok):
    items = _items("option_text", 4)
    summed = score_continuations(model, tok, items, shared_prefix=True)
    mean = score_continuations(model, tok, items, length_normalize=True, shared_prefix=True)
    for it, s, m in zip(items, summed, mean):
        n = [len(tok(a, add_special_tokens=False)["input_ids"]) for a in it.answers]
        np.testing.assert_allclose(m.scores, np.array(s.scores) / n, rtol=1e-6)
        assert m.prediction == int(np.argmax(m.scores))


def test_prompt_longer_than_max_length_is_cut_as_naive_cuts_it(model, tok):
    # Prompt + longest option over max_length: that item goes per option, each option keeping
    # the prompt's last (max_length - its length) tokens, exactly like score_naive.
    items = _items("option_text", 4)
    fast = score_continuations(model, tok, items, batch_size=3, max_length=14, shared_prefix=True)
    slow = score_naive(model, tok, items, max_length=14)
    assert [s.prediction for s in fast] == [s.prediction for s in slow]
    np.testing.assert_allclose([s.scores for s in fast], [s.scores for s in slow], atol=1e-4)


def test_packing_only_where_a_4d_mask_is_honoured(tok):
    m = build_model(len(tok), layers=1)
    m.set_attn_implementation("eager")
    assert supports_packing(m)
    m.config._attn_implementation = "flash_attention_2"
    assert not supports_packing(m)


def test_evaluator_scores_multi_token_letters_with_shared_prefix(model, tok):
    exs = _mc_examples(4, n=6)
    # Letters " A".." D" are single tokens here: first-token scoring; the evaluator's result
    # must equal naive per-choice scoring either way.
    tpl = Template("Question: {question}\n{options}\nAnswer:")
    res = evaluate_templates(model, tok, ARC, AnswerFormat.LETTER, [tpl], exs, progress=False)
    naive = score_naive(model, tok, [render(ARC, tpl, e, AnswerFormat.LETTER) for e in exs])
    assert res.mode == "first_token"
    assert res.per_template[0].predictions == [s.prediction for s in naive]
    cloze = Template("Question: {question}\nAnswer:")
    res = evaluate_templates(
        model, tok, ARC, AnswerFormat.OPTION_TEXT, [cloze], exs, progress=False
    )
    naive = score_naive(model, tok, [render(ARC, cloze, e, AnswerFormat.OPTION_TEXT) for e in exs])
    assert res.mode == "continuation"
    assert res.per_template[0].predictions == [s.prediction for s in naive]
    assert torch.get_default_dtype() == torch.float32
