"""Where a training run's numbers go: history.jsonl and loss.png in the run directory, always, and
the experiment trackers named by ``report_to`` through accelerate (TensorBoard, W&B, Trackio).

accelerate silently drops a tracker whose package is missing; a user who asked for one should
hear about it before training starts, so availability is checked here with a one-line error.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import Any

from flexpaft.errors import FlexpaftError, short_repr
from flexpaft.io import atomic_output, atomic_write_text
from flexpaft.optional import available
from flexpaft.stored import damaged, read_jsonl_objects

log = logging.getLogger(__name__)

HISTORY = "history.jsonl"
LOSS_PLOT = "loss.png"
# report_to name -> (module that must be importable, what to install)
TRACKERS = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
    "trackio": ("trackio", "trackio"),
}


def _installed(name: str) -> bool:
    return importlib.util.find_spec(TRACKERS[name][0]) is not None


def tracker_names(report_to: str) -> list[str]:
    """The accelerate tracker names for ``report_to``; an error naming the package to install."""
    names = [n.strip() for n in (report_to or "none").split(",") if n.strip()]
    if names in ([], ["none"]):
        return []
    if "all" in names:
        found = [n for n in TRACKERS if _installed(n)]
        if not found:
            raise FlexpaftError(
                "report_to=all: none of tensorboard, wandb, trackio is installed "
                "(pip install tensorboard)"
            )
        return found
    for n in names:
        if n not in TRACKERS:
            raise FlexpaftError(
                f"report_to: unknown tracker {n!r} (use none, {', '.join(TRACKERS)} or all)"
            )
        if not _installed(n):
            raise FlexpaftError(
                f"report_to={n} needs the {n} package: pip install {TRACKERS[n][1]}"
            )
    return list(dict.fromkeys(names))


def flat_config(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config as ``a/b`` keys with scalar values (TensorBoard's hparams take no lists)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_config(v, key + "/"))
        elif v is None or isinstance(v, (bool, int, float, str)):
            out[key] = v if v is not None else ""
        else:
            out[key] = str(v)
    return out


class RunLog:
    """Loss, learning rate and tokens every ``log_every`` steps: appended to history.jsonl (kept
    across a resume, cut back to the checkpoint's step) and sent to the trackers."""

    def __init__(
        self, out: Path, acc: Any, config: dict[str, Any], start_step: int, project: str
    ) -> None:
        self.path = Path(out) / HISTORY
        self.acc = acc
        self.main = acc.is_main_process
        self.rows: list[dict[str, Any]] = []
        if self.main and self.path.is_file():
            # A resumed run continues the history; rows past the checkpoint are redone.
            remedy = "delete it (it only logs the loss; training does not need it)"
            for n, row in read_jsonl_objects(self.path, remedy):
                step = row.get("step", 0)
                if isinstance(step, bool) or not isinstance(step, (int, float)):
                    raise damaged(
                        self.path, f"line {n}: step is {short_repr(step, 40)}, not a number", remedy
                    )
                if step <= start_step:
                    self.rows.append(row)
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.rows))
        if acc.log_with:
            acc.init_trackers(project, config=flat_config(config))

    def log(self, row: dict[str, Any]) -> None:
        step = int(row["step"])
        if self.acc.log_with:
            self.acc.log({f"train/{k}": v for k, v in row.items() if k != "step"}, step=step)
        if not self.main:
            return
        self.rows.append(row)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def close(self) -> Path | None:
        if self.acc.log_with:
            self.acc.end_training()
        if not self.main or not self.rows:
            return None
        return plot_loss(self.rows, self.path.parent / LOSS_PLOT)


def plot_loss(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Training loss (and learning rate, right axis) against the optimizer step."""
    if not available("matplotlib", "loss plot"):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, [r["loss"] for r in rows], color="C0", label="loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (answer tokens)")
    lr = ax.twinx()
    lr.plot(steps, [r["lr"] for r in rows], color="C1", alpha=0.5, label="learning rate")
    lr.set_ylabel("learning rate")
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path
