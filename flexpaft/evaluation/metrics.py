"""Accuracy statistics across templates, and prompt-robustness metrics.

Definitions (all on per-template accuracies a_1..a_T in [0, 1]):
- mean, std (population, ddof=0), min, max, spread = max - min (FormatSpread);
- Top@t: share of templates with accuracy >= t (the PAFT paper's Top%);
- PDR (PromptBench's Performance Drop Rate) of template j against reference r:
  1 - a_j / a_r; reported as the mean over templates j != r;
- PromptSensiScore (ProSA): for each example, the mean over template pairs of
  |correct_i - correct_j| (0 = every template agrees), averaged over examples;
- consistency: share of examples answered correctly under every template.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def summarize(
    accuracies: Sequence[float], thresholds: Sequence[float] = (0.8, 0.85, 0.9)
) -> dict[str, float]:
    a = np.asarray(accuracies, dtype=np.float64)
    if a.size == 0:
        return {"templates": 0}
    out = {
        "templates": int(a.size),
        "mean": float(a.mean()),
        "std": float(a.std()),
        "min": float(a.min()),
        "max": float(a.max()),
        "spread": float(a.max() - a.min()),
    }
    for t in thresholds:
        out[f"top@{t:g}"] = float((a >= t).mean())
    return out


def performance_drop_rate(accuracies: Sequence[float], reference: int) -> float:
    """Mean PDR of every other template against template ``reference`` (PromptBench)."""
    a = np.asarray(accuracies, dtype=np.float64)
    ref = a[reference]
    if ref <= 0 or a.size < 2:
        return math.nan
    others = np.delete(a, reference)
    return float((1 - others / ref).mean())


def prompt_sensitivity(correct: np.ndarray) -> float:
    """ProSA's PromptSensiScore from a (templates x examples) 0/1 matrix.

    For one example with c of T templates correct, the mean |x_i - x_j| over the T(T-1)/2
    unordered pairs is c (T - c) / (T (T - 1) / 2).
    """
    c = np.asarray(correct, dtype=np.float64)
    t = c.shape[0]
    if t < 2:
        return 0.0
    k = c.sum(axis=0)
    return float((k * (t - k) / (t * (t - 1) / 2)).mean())


def consistency(correct: np.ndarray) -> float:
    """Share of examples answered correctly under every template."""
    c = np.asarray(correct, dtype=bool)
    return float(c.all(axis=0).mean()) if c.size else math.nan
