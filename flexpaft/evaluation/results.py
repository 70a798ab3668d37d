"""What an evaluation produces: one ``TemplateResult`` per template and their ``EvalResult``, and
the check of such a record read back from disk (results.json, partial.jsonl)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from flexpaft.errors import short_repr


@dataclass
class TemplateResult:
    id: str
    text: str
    accuracy: float
    n: int
    correct: list[int] = field(repr=False)
    predictions: list[int] = field(repr=False)
    answered: float = 1.0  # share of examples where an answer could be extracted (generation)
    mean_generated_tokens: float | None = None
    seconds_per_example: float | None = None


@dataclass
class EvalResult:
    task: str
    format: str
    mode: str
    per_template: list[TemplateResult]
    seconds: float
    summary: dict[str, float] = field(default_factory=dict)
    # Throughput of this call: (template, example) pairs scored (templates resumed from an
    # earlier run do not count), per second of scoring, and on CUDA the peak memory allocated.
    pairs_scored: int = 0
    pairs_per_s: float | None = None
    peak_gpu_mib: float | None = None

    @property
    def accuracies(self) -> list[float]:
        return [t.accuracy for t in self.per_template]

    def correct_matrix(self) -> np.ndarray:
        return np.array([t.correct for t in self.per_template], dtype=np.int8)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalResult:
        d = dict(d)
        d["per_template"] = [TemplateResult(**t) for t in d["per_template"]]
        return cls(**d)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _is_count(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def check_template_result(d: Any) -> str | None:
    """What is wrong with one stored per-template result (results.json's ``per_template``
    entries, partial.jsonl's ``result``), or None when it can be trusted."""
    if not isinstance(d, dict):
        return f"a result is {short_repr(d, 40)}, not an object"
    known = set(TemplateResult.__dataclass_fields__)
    required = {"id", "text", "accuracy", "n", "correct", "predictions"}
    if missing := sorted(required - set(d)):
        return f"a result has no {missing[0]}"
    if extra := sorted(set(d) - known):
        return f"a result has an unknown field {short_repr(extra[0], 40)}"
    if not isinstance(d["id"], str) or not isinstance(d["text"], str):
        return "a result's id or text is not text"
    if not _is_count(d["n"]):
        return f"n is {short_repr(d['n'], 40)}, not a count"
    if not _is_number(d["accuracy"]) or not 0 <= d["accuracy"] <= 1:
        return f"accuracy is {short_repr(d['accuracy'], 40)}, not between 0 and 1"
    correct, predictions = d["correct"], d["predictions"]
    if not isinstance(correct, list) or any(
        c not in (0, 1) or isinstance(c, float) for c in correct
    ):
        return "correct is not a list of 0 and 1"
    if not isinstance(predictions, list) or not all(
        isinstance(p, int) and not isinstance(p, bool) for p in predictions
    ):
        return "predictions is not a list of integers"
    if len(correct) != d["n"] or len(predictions) != d["n"]:
        return f"n is {d['n']} but {len(correct)} correct and {len(predictions)} predictions"
    for k in ("answered", "mean_generated_tokens", "seconds_per_example"):
        if d.get(k) is not None and not _is_number(d[k]):
            return f"{k} is {short_repr(d[k], 40)}, not a number"
    return None
