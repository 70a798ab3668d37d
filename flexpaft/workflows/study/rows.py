"""The rows a study compares: the training methods, the base model, the baselines of Flexora's
selection.

A training method is a row of ``settings.methods.METHODS`` and needs nothing here. The other rows
are the study's own: ``base`` (the model without an adapter: evaluated once, no seeds) and the
block baselines, plain LoRA on blocks that something cheaper than Flexora's search picks (the
pickers are ``baselines.BLOCK_PICKERS``). What each needs is data in ``ROWS``, so the steps ask a
row's properties and never its name.
"""

from __future__ import annotations

from dataclasses import dataclass

from flexpaft.settings.methods import METHODS


@dataclass(frozen=True)
class Row:
    """A study row that is not a training method of its own."""

    name: str
    summary: str
    # The training method of its runs; None: nothing is trained (one evaluation, no seeds).
    trains: str | None = "lora"
    # Its block count k is the one the flexora run of the same seed selected.
    needs_flexora: bool = False
    # It reads the model's block count (check() counts the blocks before any training).
    counts_blocks: bool = False
    # One run per draw (``random_draws`` of them), each its own report row NAME-dD.
    draws: bool = False
    # train/LABEL-sS beside its runs keeps the scores that rank the blocks.
    rank_label: str = ""


BASE = "base"
# The run whose selection the block baselines are judged against and take k from.
FLEXORA = "flexora"

ROWS: dict[str, Row] = {
    r.name: r
    for r in (
        Row(BASE, "the base model, no adapter", trains=None),
        Row("random", "k blocks drawn at random", needs_flexora=True, draws=True),
        Row(
            "lora_drop",
            "the k blocks with the largest LoRA output norm after a short all-block LoRA run",
            needs_flexora=True,
            rank_label="lora_drop-rank",
        ),
        Row("top_half", "the upper half of the blocks", counts_blocks=True),
        Row("bottom_half", "the lower half of the blocks", counts_blocks=True),
        Row(
            "grad_probe",
            "the k blocks with the largest LoRA gradient norm at the start",
            needs_flexora=True,
            rank_label="grad_probe-rank",
        ),
        Row(
            "first_last",
            "k blocks at the two ends: the first ceil(k/2) and the last floor(k/2)",
            needs_flexora=True,
        ),
    )
}

# Plain LoRA restricted to blocks chosen without Flexora's search: the baselines of its selection.
BLOCK_BASELINES = tuple(name for name, row in ROWS.items() if row.trains is not None)
STUDY_METHODS = (BASE, *METHODS, *BLOCK_BASELINES)
# The methods a variant row may train: the block baselines pick blocks for flexora's comparison,
# base trains nothing.
VARIANT_METHODS = tuple(METHODS)
# The short all-block LoRA run whose output norms rank the blocks for lora_drop.
LORA_DROP_RANK = ROWS["lora_drop"].rank_label


def row_of(label: str) -> Row | None:
    """The study row of a run label (random-d2 -> random, lora_drop-rank -> lora_drop); None for
    a training method's or a variant's."""
    for row in ROWS.values():
        if label == row.name or (row.rank_label and label == row.rank_label):
            return row
        if row.draws and label.startswith(f"{row.name}-d"):
            return row
    return None


def report_rows(name: str, draws: int) -> list[str]:
    """The report rows of study method ``name``: one per draw where it draws, else itself."""
    row = ROWS.get(name)
    return [draw_label(name, d) for d in range(draws)] if row and row.draws else [name]


def draw_label(name: str, draw: int) -> str:
    return f"{name}-d{draw}"


def trains_nothing(label: str) -> bool:
    """Run ``label`` is the base model: evaluated once, with no seed and no adapter."""
    row = row_of(label)
    return row is not None and row.trains is None
