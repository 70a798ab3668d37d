import math

import numpy as np
import pytest
import torch

from flexpaft.evaluation import metrics
from flexpaft.evaluation.evaluator import evaluate_templates
from flexpaft.evaluation.scoring import (
    extract_answer,
    generate_answers,
    score_continuations,
    score_first_token,
    score_naive,
)
from flexpaft.prompts import Template
from flexpaft.render import render
from flexpaft.tasks import AnswerFormat, get_task

BOOLQ = get_task("boolq")
PIQA = get_task("piqa")


def _boolq_items(n=12):
    exs = [
        BOOLQ.normalize(
            {
                "question": f"is item {i} red",
                "passage": "x " * (i % 5) + f"Item {i}.",
                "answer": i % 3 == 0,
            }
        )
        for i in range(n)
    ]
    tpl = Template("{passage}\nQuestion: {question}?\nAnswer:")
    return exs, tpl


def test_first_token_scoring_matches_naive_per_choice(tiny):
    model, tok = tiny
    exs, tpl = _boolq_items()
    for fmt in (AnswerFormat.LABEL_WORDS, AnswerFormat.LETTER):
        t = (
            tpl
            if fmt is AnswerFormat.LABEL_WORDS
            else Template("{passage}\n{question}?\n{options}\nAnswer:")
        )
        items = [render(BOOLQ, t, e, fmt) for e in exs]
        fast = score_first_token(model, tok, items, batch_size=5)
        slow = score_naive(model, tok, items)
        assert [s.prediction for s in fast] == [s.prediction for s in slow]
        np.testing.assert_allclose([s.scores for s in fast], [s.scores for s in slow], atol=1e-4)


def test_continuation_scoring_matches_naive(tiny):
    model, tok = tiny
    exs = [
        PIQA.normalize(
            {
                "goal": f"goal number {i}",
                "sol1": "twist the lid" + " now" * (i % 3),
                "sol2": "open",
                "label": i % 2,
            }
        )
        for i in range(7)
    ]
    items = [
        render(PIQA, Template("Question: {goal}\nAnswer:"), e, AnswerFormat.OPTION_TEXT)
        for e in exs
    ]
    fast = score_continuations(model, tok, items, batch_size=4)
    slow = score_naive(model, tok, items)
    assert [s.prediction for s in fast] == [s.prediction for s in slow]
    np.testing.assert_allclose([s.scores for s in fast], [s.scores for s in slow], atol=1e-4)


def test_generation_records_tokens_and_time(tiny):
    model, tok = tiny
    exs, tpl = _boolq_items(4)
    items = [render(BOOLQ, tpl, e, AnswerFormat.GENERATION) for e in exs]
    out = generate_answers(model, tok, items, batch_size=3, max_new_tokens=5)
    assert all(1 <= s.generated_tokens <= 5 and s.seconds > 0 for s in out)
    assert all(s.prediction in (-1, 0, 1) for s in out)


@pytest.mark.parametrize(
    "text, answers, expected",
    [
        (" B. because", [" A", " B"], 1),
        ("The answer is (A)", ["A", "B", "C"], 0),
        ("I think D", [" A", " B"], -1),
        ("Answer: yes, it is", [" yes", " no"], 0),
        ("No. Not at all", [" yes", " no"], 1),
        ("nothing", [" yes", " no"], -1),
        ("twist the lid firmly", [" twist the lid", " twist"], 0),
    ],
)
def test_extract_answer(text, answers, expected):
    assert extract_answer(text, answers) == expected


def test_summary_metrics_hand_computed():
    s = metrics.summarize([0.5, 0.9, 0.7, 0.9], thresholds=(0.8, 0.9))
    assert s["mean"] == pytest.approx(0.75)
    assert s["std"] == pytest.approx(math.sqrt((0.0625 + 0.0225 + 0.0025 + 0.0225) / 4))
    assert (s["min"], s["max"], s["spread"]) == (0.5, 0.9, pytest.approx(0.4))
    assert s["top@0.8"] == 0.5 and s["top@0.9"] == 0.5


def test_robustness_metrics_hand_computed():
    # PDR against template 0 (acc 0.8): others 0.6 and 0.8 -> drops 0.25 and 0 -> mean 0.125
    assert metrics.performance_drop_rate([0.8, 0.6, 0.8], 0) == pytest.approx(0.125)
    c = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1]])
    # example 0: all agree -> 0; example 1: 2 of 3 correct -> 2 of 3 pairs differ; example 2: 1 of 3
    assert metrics.prompt_sensitivity(c) == pytest.approx((0 + 2 / 3 + 2 / 3) / 3)
    assert metrics.consistency(c) == pytest.approx(1 / 3)


def test_evaluator_per_template_accuracy(tiny):
    model, tok = tiny
    exs, tpl = _boolq_items(10)
    other = Template("Q: {question}? ({passage})\nA:")
    res = evaluate_templates(
        model, tok, BOOLQ, AnswerFormat.LABEL_WORDS, [tpl, other], exs, progress=False
    )
    assert res.mode == "first_token" and len(res.per_template) == 2
    for tr, t in zip(res.per_template, [tpl, other]):
        naive = score_naive(
            model, tok, [render(BOOLQ, t, e, AnswerFormat.LABEL_WORDS) for e in exs]
        )
        acc = np.mean([s.prediction == e.gold for s, e in zip(naive, exs)])
        assert tr.accuracy == pytest.approx(acc)
    assert res.summary["mean"] == pytest.approx(np.mean(res.accuracies))


def test_left_padding_does_not_change_scores(tiny):
    model, tok = tiny
    exs, tpl = _boolq_items(6)
    items = [render(BOOLQ, tpl, e, AnswerFormat.LABEL_WORDS) for e in exs]
    alone = [score_first_token(model, tok, [it])[0].scores for it in items]
    batched = [s.scores for s in score_first_token(model, tok, items, batch_size=6)]
    np.testing.assert_allclose(alone, batched, atol=1e-5)
    assert torch.get_default_dtype() == torch.float32


def test_length_batches_respect_token_budget_and_count():
    from flexpaft.evaluation.scoring import length_batches

    lengths = [10, 1300, 12, 90, 11, 95]
    batches = length_batches(lengths, batch_size=3, max_tokens=300)
    # Longest first; the 1300-token prompt travels alone instead of padding the others.
    assert batches == [[1], [5, 3, 2], [4, 0]]
    assert sorted(i for b in batches for i in b) == list(range(6))
    assert all(len(b) * lengths[b[0]] <= 300 or len(b) == 1 for b in batches)
