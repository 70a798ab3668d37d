"""95% intervals for robustness numbers, and for differences between methods.

A robustness claim has two sources of noise: which examples were drawn and which wordings were
drawn. The interval of a method's **mean** and **std** across templates therefore comes from a
two-way bootstrap: every replicate resamples the templates and, independently, the examples, both
with replacement. The **worst template** is resampled over examples only: the minimum of a
resample of templates can never fall below the observed minimum, so a template bootstrap would
give a one-sided, meaningless interval; what is uncertain about "the worst of these templates" is
the examples it was measured on.

Methods compared on the same templates and examples are resampled with the *same* indices, so a
difference's interval is a paired one (much narrower than two separate intervals would suggest).
A difference counts as a finding only when its interval excludes zero; the report says
"not separated" otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

LEVEL = 0.95


@dataclass(frozen=True)
class Resamples:
    """Shared bootstrap indices: ``templates[b]`` and ``examples[b]`` for replicate b."""

    templates: np.ndarray  # (B, T) template indices
    examples: np.ndarray  # (B, N) example indices

    @classmethod
    def draw(cls, n_templates: int, n_examples: int, n_boot: int = 2000, seed: int = 0):
        rng = np.random.default_rng(seed)
        return cls(
            templates=rng.integers(0, n_templates, size=(n_boot, n_templates)),
            examples=rng.integers(0, n_examples, size=(n_boot, n_examples)),
        )


def replicate_stats(correct: np.ndarray, rs: Resamples) -> dict[str, np.ndarray]:
    """Per-replicate mean, std (population, as in metrics.summarize) and worst template.

    ``correct`` is (templates x examples), 0/1 or a fraction (several seeds averaged).
    """
    c = np.asarray(correct, dtype=np.float64)
    n_boot = rs.templates.shape[0]
    mean = np.empty(n_boot)
    std = np.empty(n_boot)
    worst = np.empty(n_boot)
    for b in range(n_boot):
        # Per-template accuracy on the resampled examples; then templates resampled.
        acc_all = c[:, rs.examples[b]].mean(axis=1)
        acc = acc_all[rs.templates[b]]
        mean[b] = acc.mean()
        std[b] = acc.std()
        worst[b] = acc_all.min()
    return {"mean": mean, "std": std, "min": worst}


def percentile_interval(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap replicates."""
    tail = (1 - level) / 2 * 100
    x = np.asarray(samples, dtype=np.float64)
    x = x[~np.isnan(x)]
    if x.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.percentile(x, [tail, 100 - tail])
    return float(lo), float(hi)


def method_intervals(
    correct: np.ndarray, rs: Resamples, stats: dict[str, np.ndarray] | None = None
) -> dict[str, list[float]]:
    """95% intervals of one method's mean, std and worst-template accuracy.

    ``stats``: ``replicate_stats(correct, rs)`` when the caller already has it (the resampling
    loop is the expensive part, and a report needs it once per method, not once per use).
    """
    stats = stats if stats is not None else replicate_stats(correct, rs)
    return {k: list(percentile_interval(v)) for k, v in stats.items()}


def majority_share(gold: np.ndarray, rs: Resamples | None = None) -> float | np.ndarray:
    """Accuracy of always answering the most common gold answer (per replicate if ``rs``)."""
    g = np.asarray(gold)
    values, counts = np.unique(g, return_counts=True)
    top = values[np.argmax(counts)]
    hit = (g == top).astype(np.float64)
    if rs is None:
        return float(hit.mean())
    return hit[rs.examples].mean(axis=1)


def compare(
    a: np.ndarray,
    b: np.ndarray,
    rs: Resamples,
    stats_a: dict[str, np.ndarray] | None = None,
    stats_b: dict[str, np.ndarray] | None = None,
) -> dict[str, dict[str, float | bool]]:
    """Paired differences a - b of mean and worst template, and the ratio of stds a / b.

    Each entry holds the point estimate, the interval and ``separated`` (the interval excludes
    the no-difference value: 0 for differences, 1 for the ratio).
    """
    sa = stats_a if stats_a is not None else replicate_stats(a, rs)
    sb = stats_b if stats_b is not None else replicate_stats(b, rs)
    acc_a = np.asarray(a, dtype=np.float64).mean(axis=1)
    acc_b = np.asarray(b, dtype=np.float64).mean(axis=1)
    out: dict[str, dict[str, float | bool]] = {}
    for key, point, samples, null in (
        ("mean_diff", acc_a.mean() - acc_b.mean(), sa["mean"] - sb["mean"], 0.0),
        ("min_diff", acc_a.min() - acc_b.min(), sa["min"] - sb["min"], 0.0),
        ("std_ratio", _ratio(acc_a.std(), acc_b.std()), _ratio(sa["std"], sb["std"]), 1.0),
    ):
        lo, hi = percentile_interval(samples)
        out[key] = {
            "value": float(point),
            "low": lo,
            "high": hi,
            "separated": bool(lo > null or hi < null),
        }
    return out


def versus_majority(
    correct: np.ndarray,
    gold: np.ndarray,
    rs: Resamples,
    stats: dict[str, np.ndarray] | None = None,
) -> dict[str, float]:
    """Mean accuracy minus the majority-label rate of the test examples, with the mean's interval.

    The rate is a property of the test set's design (50% for a label-balanced set), so it is held
    fixed: resampling examples would unbalance a balanced set and add the prior's own noise.
    """
    stats = stats if stats is not None else replicate_stats(correct, rs)
    prior = majority_share(gold)
    lo, hi = percentile_interval(stats["mean"] - prior)
    point = float(np.asarray(correct, dtype=np.float64).mean() - prior)
    return {"value": point, "low": lo, "high": hi, "separated": bool(lo > 0 or hi < 0)}


def across_seeds(values: list[float]) -> dict[str, float]:
    """Mean and sample standard deviation (ddof=1) of one number over seeds."""
    v = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(v.mean()),
        "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
        "seeds": int(v.size),
    }


def _ratio(x, y):
    # A std of exactly 0 (every template identical) makes the ratio undefined, not infinite.
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.asarray(y) > 0, np.asarray(x) / np.asarray(y), np.nan)


def _paired(point: float, samples: np.ndarray, null: float = 0.0) -> dict[str, float | bool]:
    lo, hi = percentile_interval(samples)
    return {"value": float(point), "low": lo, "high": hi, "separated": bool(lo > null or hi < null)}


def own_prompt(
    own: np.ndarray,
    correct: np.ndarray,
    rs: Resamples,
    stats: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Accuracy under the user's own prompt and its gap to the unseen templates' mean and worst.

    ``own`` is the own template's per-example correctness (N,), scored on the same examples as
    ``correct`` (templates x N). The own accuracy's interval resamples examples; each gap is
    paired: own and unseen accuracies share every replicate's examples, and the mean's
    replicate also resamples templates (as ``replicate_stats`` does). A positive gap is the
    wording tax: accuracy lost from the own prompt to unseen ones.
    """
    o = np.asarray(own, dtype=np.float64)
    stats = stats if stats is not None else replicate_stats(correct, rs)
    own_rep = o[rs.examples].mean(axis=1)
    per_template = np.asarray(correct, dtype=np.float64).mean(axis=1)
    acc = float(o.mean())
    lo, hi = percentile_interval(own_rep)
    return {
        "accuracy": acc,
        "interval": [lo, hi],
        "gap_mean": _paired(acc - per_template.mean(), own_rep - stats["mean"]),
        "gap_worst": _paired(acc - per_template.min(), own_rep - stats["min"]),
    }


def compare_own(own_a: np.ndarray, own_b: np.ndarray, rs: Resamples) -> dict[str, float | bool]:
    """Paired difference a - b of two methods' accuracy under the own prompt (examples resampled
    alike for both)."""
    a, b = np.asarray(own_a, dtype=np.float64), np.asarray(own_b, dtype=np.float64)
    return _paired(a.mean() - b.mean(), a[rs.examples].mean(axis=1) - b[rs.examples].mean(axis=1))
