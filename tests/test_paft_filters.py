import json

import pytest

from flexpaft.prompts.generate.filters import (
    char_ngrams,
    filter_candidates,
    jaccard,
    normalize_text,
)
from flexpaft.prompts.promptset import PromptSet
from flexpaft.tasks import BUILTIN_TASKS, AnswerFormat

PIQA = BUILTIN_TASKS["piqa"]
LET = AnswerFormat.LETTER
GOOD = "Question: {goal}\nA. {sol1}\nB. {sol2}\nAnswer:"


def run(texts, **kw):
    return filter_candidates(PromptSet.from_texts(texts, "c"), PIQA, LET, **kw)


def test_ngram_jaccard_by_hand():
    assert char_ngrams("abcd", 3) == {"abc", "bcd"}
    assert jaccard(char_ngrams("abcd"), char_ngrams("abce")) == pytest.approx(1 / 3)
    assert normalize_text("  QUESTION -\n{goal}!! ") == "question goal"


def test_invalid_templates_are_dropped_with_the_reason():
    kept, report = run([GOOD, "Question: {goal}\nAnswer:", "Q: {goal} {A} {B} {oops}"])
    assert kept.texts == [GOOD]
    assert report.counts["invalid"] == 2
    reasons = [d.detail for d in report.dropped]
    assert "letter format needs the options" in reasons[0]
    assert "slot {oops} is not a field of task piqa" in reasons[1]


def test_length_bounds():
    long = GOOD + "\n" + "Think. " * 50
    kept, report = run(["{goal} {A} {B}", GOOD, long], min_chars=20, max_chars=200)
    assert kept.texts == [GOOD]
    assert report.counts["too_short"] == 1 and report.counts["too_long"] == 1
    assert report.dropped[0].detail == "14 < 20 characters"


def test_exact_and_near_duplicates():
    recased = "QUESTION - {goal}\nA) {sol1}\nB) {sol2}\nANSWER"
    intro = "Read the goal and choose the more sensible of the two solutions.\n"
    # Normalized: "... sol2 answer" vs "... sol2 the answer": trigram Jaccard 0.96.
    one_word = intro + "Question: {goal}\nA. {sol1}\nB. {sol2}\nThe answer:"
    different = "Pick the better way to reach the goal.\n{goal}\n(A) {A}\n(B) {B}\nYour choice:"
    kept, report = run([GOOD, GOOD + "  ", recased, intro + GOOD, one_word, different])
    assert kept.texts == [GOOD, intro + GOOD, different]
    assert [d.reason for d in report.dropped] == ["duplicate", "near_duplicate", "near_duplicate"]
    assert "up to case, spacing and punctuation" in report.dropped[1].detail
    assert "Jaccard" in report.dropped[2].detail


def test_near_duplicate_removal_can_be_turned_off():
    recased = "QUESTION - {goal}\nA) {sol1}\nB) {sol2}\nANSWER"
    kept, _ = run([GOOD, recased], near_dup_threshold=None)
    assert len(kept) == 2


def test_score_floor_runs_once_on_survivors():
    texts = [
        GOOD,
        "Goal - {goal}\n(A) {A}\n(B) {B}\nThe correct answer is",
        "Which solution works?\n{goal}\nOption A: {sol1}\nOption B: {sol2}\nChoice:",
        "Question: {goal}",  # invalid: never reaches the scorer
    ]
    calls = []

    def score_fn(ps):
        calls.append(ps.texts)
        return [0.9, 0.2, 0.6]

    kept, report = run(texts, score_fn=score_fn, min_score=0.5)
    assert calls == [texts[:3]]
    assert kept.texts == [texts[0], texts[2]]
    assert report.counts["low_score"] == 1
    assert report.dropped[-1].detail == "score 0.200 < 0.5"
    assert sorted(report.scores.values()) == [0.2, 0.6, 0.9]


def test_report_serializes_and_renders_markdown():
    _, report = run([GOOD, GOOD, "Question: {goal}"])
    d = json.loads(json.dumps(report.to_dict()))
    assert d["total"] == 3 and d["kept"] == 1
    assert d["counts"]["duplicate"] == 1 and d["counts"]["invalid"] == 1
    md = report.to_markdown()
    assert "1 of 3 candidates kept." in md
    assert "| duplicate | 1 |" in md
    assert "Question: {goal} ⏎ A. {sol1}" in md
