"""Filters for candidate prompts: slot validity, length, duplicates, near-duplicates, base score.

The PAFT paper describes no filtering and its released sets contain duplicates and empty rows;
here every dropped template is kept in a report with the reason, so a user can see what was
removed and why instead of trusting a silent count.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from flexpaft.prompts.promptset import PromptSet
from flexpaft.prompts.template import Template
from flexpaft.tasks.spec import AnswerFormat, TaskSpec

# Drop reasons, in the order the filters run.
INVALID, TOO_SHORT, TOO_LONG = "invalid", "too_short", "too_long"
DUPLICATE, NEAR_DUPLICATE, LOW_SCORE = "duplicate", "near_duplicate", "low_score"
REASONS = (INVALID, TOO_SHORT, TOO_LONG, DUPLICATE, NEAR_DUPLICATE, LOW_SCORE)

ScoreFn = Callable[[PromptSet], list[float]]

_PUNCT = re.compile(r"[^\w\s]+")
_SPACE = re.compile(r"\s+")


@dataclass
class Dropped:
    text: str
    reason: str
    detail: str


@dataclass
class FilterReport:
    total: int
    kept: int
    counts: dict[str, int]
    dropped: list[Dropped] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "kept": self.kept,
            "counts": dict(self.counts),
            "settings": dict(self.settings),
            "scores": dict(self.scores),
            "dropped": [asdict(d) for d in self.dropped],
        }

    def to_markdown(self, max_rows: int = 200) -> str:
        lines = [
            "# Candidate prompt filter report",
            "",
            f"{self.kept} of {self.total} candidates kept.",
            "",
            "| reason | dropped |",
            "| --- | ---: |",
        ]
        lines += [f"| {r} | {self.counts.get(r, 0)} |" for r in REASONS]
        if self.settings:
            lines += ["", "Settings: " + ", ".join(f"{k}={v}" for k, v in self.settings.items())]
        if self.dropped:
            lines += ["", "## Dropped templates", "", "| reason | detail | template |"]
            lines += ["| --- | --- | --- |"]
            for d in self.dropped[:max_rows]:
                lines.append(f"| {d.reason} | {_cell(d.detail)} | `{_cell(d.text)}` |")
            if len(self.dropped) > max_rows:
                lines.append(f"\n... and {len(self.dropped) - max_rows} more (see the JSON report)")
        return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    # Markdown table cells hold one line; show newlines as a visible mark.
    return text.replace("|", "\\|").replace("`", "'").replace("\n", " ⏎ ")


def normalize_text(text: str) -> str:
    """Lower case, punctuation removed, whitespace collapsed: the key for near-duplicates."""
    return _SPACE.sub(" ", _PUNCT.sub(" ", text.lower())).strip()


def char_ngrams(text: str, n: int = 3) -> frozenset[str]:
    if len(text) <= n:
        return frozenset([text])
    return frozenset(text[i : i + n] for i in range(len(text) - n + 1))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def filter_candidates(
    candidates: PromptSet,
    task: TaskSpec,
    fmt: AnswerFormat,
    *,
    min_chars: int = 10,
    max_chars: int = 2000,
    near_dup_threshold: float | None = 0.9,
    ngram: int = 3,
    score_fn: ScoreFn | None = None,
    min_score: float | None = None,
) -> tuple[PromptSet, FilterReport]:
    """Keep the candidates that pass every filter; report every drop with its reason.

    ``near_dup_threshold`` is the character-n-gram Jaccard similarity (on normalized text) at or
    above which a template counts as a near-duplicate of one kept earlier; templates that differ
    only in case, spacing or punctuation have similarity 1. None turns near-duplicate removal off.
    ``score_fn`` (e.g. base-model accuracy on a few examples, one number per template) runs once
    on the survivors; those below ``min_score`` are dropped.
    """
    dropped: list[Dropped] = []
    kept: list[Template] = []
    seen_exact: dict[str, str] = {}
    seen_norm: dict[str, str] = {}
    kept_grams: list[tuple[frozenset[str], str]] = []
    for t in candidates:
        problems = t.problems(task, fmt)
        if problems:
            dropped.append(Dropped(t.text, INVALID, "; ".join(problems)))
            continue
        if len(t.text) < min_chars:
            dropped.append(Dropped(t.text, TOO_SHORT, f"{len(t.text)} < {min_chars} characters"))
            continue
        if len(t.text) > max_chars:
            dropped.append(Dropped(t.text, TOO_LONG, f"{len(t.text)} > {max_chars} characters"))
            continue
        exact = t.text.strip()
        if exact in seen_exact:
            dropped.append(Dropped(t.text, DUPLICATE, f"same as template {seen_exact[exact]}"))
            continue
        if near_dup_threshold is not None:
            norm = normalize_text(t.text)
            if norm in seen_norm:
                dropped.append(
                    Dropped(
                        t.text,
                        NEAR_DUPLICATE,
                        f"same as template {seen_norm[norm]} up to case, spacing and punctuation",
                    )
                )
                continue
            grams = char_ngrams(norm, ngram)
            match = _most_similar(grams, kept_grams, near_dup_threshold)
            if match is not None:
                other, sim = match
                dropped.append(
                    Dropped(
                        t.text, NEAR_DUPLICATE, f"similar to template {other} (Jaccard {sim:.2f})"
                    )
                )
                continue
            seen_norm[norm] = t.id
            kept_grams.append((grams, t.id))
        seen_exact[exact] = t.id
        kept.append(t)

    scores: dict[str, float] = {}
    if score_fn is not None and kept:
        values = list(score_fn(PromptSet(kept, candidates.name)))
        if len(values) != len(kept):
            raise ValueError(f"score_fn returned {len(values)} scores for {len(kept)} templates")
        scores = {t.id: float(v) for t, v in zip(kept, values)}
        if min_score is not None:
            survivors = []
            for t, v in zip(kept, values):
                if v < min_score:
                    dropped.append(Dropped(t.text, LOW_SCORE, f"score {v:.3f} < {min_score}"))
                else:
                    survivors.append(t)
            kept = survivors

    counts = Counter(d.reason for d in dropped)
    report = FilterReport(
        total=len(candidates),
        kept=len(kept),
        counts={r: counts.get(r, 0) for r in REASONS},
        dropped=dropped,
        settings={
            "task": task.name,
            "format": fmt.value,
            "min_chars": min_chars,
            "max_chars": max_chars,
            "near_dup_threshold": near_dup_threshold,
            "ngram": ngram,
            "min_score": min_score,
        },
        scores=scores,
    )
    return PromptSet(kept, candidates.name), report


def _most_similar(
    grams: frozenset[str], kept: list[tuple[frozenset[str], str]], threshold: float
) -> tuple[str, float] | None:
    """The first kept template at least ``threshold`` similar, or None."""
    size = len(grams)
    for other, tid in kept:
        # Jaccard can never exceed the ratio of the set sizes: skip the intersection when the
        # sizes alone rule a match out (most pairs, since lengths vary).
        small, large = sorted((size, len(other)))
        if large and small / large < threshold:
            continue
        sim = jaccard(grams, other)
        if sim >= threshold:
            return tid, sim
    return None
