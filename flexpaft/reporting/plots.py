"""Per-template accuracy plot: one box per method, every template drawn as a point over it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from flexpaft.io import atomic_output
from flexpaft.optional import available

DPI = 150


def plot_per_template(report: dict[str, Any], path: str | os.PathLike) -> Path | None:
    """Box plot + jittered strip of per-template accuracy per method; written atomically.
    None (and a note saying what to install) without matplotlib."""
    if not available("matplotlib", "per-template plot"):
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    import matplotlib.pyplot as plt

    methods = report["methods"]
    names = [m["name"] for m in methods]
    data = [100 * np.array(list(m["per_template"].values())) for m in methods]
    positions = np.arange(1, len(methods) + 1)
    fig, ax = plt.subplots(figsize=(max(5.5, 1.3 * len(methods) + 3), 4.5))
    ax.boxplot(
        data,
        positions=positions,
        widths=0.5,
        showfliers=False,  # the strip below shows every template, outliers included
        medianprops={"color": "black"},
        boxprops={"color": "0.35"},
        whiskerprops={"color": "0.35"},
        capprops={"color": "0.35"},
    )
    # A fixed seed: re-running the report must give the same picture.
    rng = np.random.default_rng(0)
    for x, accs in zip(positions, data):
        jitter = rng.uniform(-0.15, 0.15, size=accs.size)
        ax.scatter(x + jitter, accs, s=14, alpha=0.65, color="tab:blue", zorder=3, linewidths=0)
    legend = [("test templates", dict(marker="o", color="tab:blue", linestyle=""))]
    ref_drawn = adv_drawn = False
    for x, m in zip(positions, methods):
        if m.get("reference_accuracy") is not None:
            y = 100 * m["reference_accuracy"]
            ax.hlines(y, x - 0.35, x + 0.35, colors="tab:red", linestyles="dashed", zorder=4)
            ref_drawn = True
        if m.get("adversarial"):
            ax.scatter(
                x + 0.3, 100 * m["adversarial"]["mean"], marker="x", color="tab:orange", zorder=4
            )
            adv_drawn = True
    if ref_drawn:
        legend.append(("reference template", dict(color="tab:red", linestyle="dashed")))
    if adv_drawn:
        legend.append(("adversarial mean", dict(marker="x", color="tab:orange", linestyle="")))
    handles = [plt.Line2D([], [], **style) for _, style in legend]
    # Outside the axes: inside, it would hide the lowest templates, the ones that matter most.
    ax.legend(
        handles,
        [label for label, _ in legend],
        loc="upper left",
        bbox_to_anchor=(1.01, 1),
        fontsize=8,
        frameon=False,
    )
    ax.set_xticks(positions)
    long_labels = max(len(n) for n in names) > 10 or len(names) > 5
    ax.set_xticklabels(
        names, rotation=25 if long_labels else 0, ha="right" if long_labels else "center"
    )
    ax.set_ylabel("accuracy per template (%)")
    ax.set_xlabel("method")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(
        f"{report['task']} ({report['format']}): {len(report['templates'])} unseen templates, "
        f"{report['examples']} examples each",
        fontsize=10,
    )
    fig.tight_layout()
    return _save_atomically(fig, Path(path))


def _save_atomically(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    try:
        with atomic_output(path) as tmp:
            fig.savefig(tmp, dpi=DPI, format="png")
    finally:
        plt.close(fig)
    return path
