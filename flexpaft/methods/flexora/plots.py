"""alpha.png: each block's logit alpha against the outer step of the search."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flexpaft.io import atomic_output


def plot_alpha(records: list[dict[str, Any]], path: Path) -> None:
    """alpha per block against the outer step, written atomically (Agg canvas, no pyplot state)."""
    from flexpaft.optional import available

    if not available("matplotlib", "alpha plot"):
        return
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not records:
        return
    steps = [r["step"] for r in records]
    alphas = list(zip(*[r["alpha"] for r in records]))
    fig = Figure(figsize=(8, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    cmap = matplotlib.colormaps["viridis"]
    n = len(alphas)
    for i, series in enumerate(alphas):
        ax.plot(steps, series, color=cmap(i / max(n - 1, 1)), lw=1.2, label=str(i))
        ax.annotate(
            str(i),
            (steps[-1], series[-1]),
            fontsize=6,
            xytext=(2, 0),
            textcoords="offset points",
            va="center",
        )
    ax.axhline(0.0, color="black", lw=0.8, ls="--")
    ax.set_xlabel("outer step")
    ax.set_ylabel("alpha (layer logit)")
    ax.set_title("Flexora search: alpha per block (selected: alpha > 0 by default)")
    if n <= 16:
        ax.legend(title="block", fontsize=6, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
