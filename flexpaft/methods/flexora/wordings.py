"""Which wordings the search's two levels see: the templates LoRA trains on in the inner loop,
and the ones the validation batches (alpha's loss) are rendered under.

Where the validation wordings are meant to be unseen (``flexora.val_templates=heldout``, the
default wherever there are enough templates), no template the search trains on renders a
validation batch: neither a training template nor the user's own template (``prompts.template``),
which flexora+paft draws at ``prompts.own_rate`` and plain flexora trains on alone. The own
template is never held out for validation: it always stays with the training templates.
"""

from __future__ import annotations

import random
from typing import Any

from flexpaft.errors import FlexpaftError
from flexpaft.prompts import Template
from flexpaft.tasks.spec import AnswerFormat, TaskSpec


def validation_set(
    cfg: Any,
    task: TaskSpec,
    fmt: AnswerFormat,
    templates: list[Template],
    own: Template | None = None,
) -> list[Template] | None:
    """Plain flexora's validation wordings: its prompt set, when it has one, minus the template
    it trains on and the user's own template ``own``. None for flexora+paft (it holds a slice of
    its own training set out) and for a plain flexora run without a prompt set."""
    if cfg.spec.draws_templates or not cfg.prompts.prompt_set:
        return None
    from flexpaft.prompts.task_templates import load_valid_set

    trained = {t.text for t in [*templates, *([own] if own is not None else [])]}
    found = [t for t in load_valid_set(cfg.prompts.prompt_set, task, fmt) if t.text not in trained]
    if not found:
        raise FlexpaftError(
            f"prompts.prompt_set {cfg.prompts.prompt_set} holds no template but the one flexora "
            "trains on: nothing to validate under"
        )
    return found


def validation_templates(
    f: Any,
    templates: list[Template],
    seed: int,
    others: list[Template] | None = None,
    own: Template | None = None,
) -> tuple[list[Template], list[Template]]:
    """(templates the inner loop trains on, templates the validation batches are rendered under).

    ``heldout`` keeps a seeded share of the prompt set away from the inner loop, so alpha is
    tuned for wordings the LoRA it gates never trained on: the search aims at what the
    evaluation under unseen templates measures. ``others``: wordings that the run never trains
    on at all (plain flexora's prompt set beside its one template); under ``heldout`` they are
    the validation templates and every training template stays in the inner loop. ``own``: the
    user's own template; under ``heldout`` it is never drawn for validation (the held-out share
    is drawn from the other templates) and stays with the training templates.
    """
    mode = f.val_templates
    if mode == "auto":
        mode = "heldout" if len(templates) >= 4 or others else "train"
    if mode == "train":
        return templates, templates
    if others:
        return templates, others
    own_text = own.text if own is not None else None
    pool = [i for i, t in enumerate(templates) if t.text != own_text]
    if len(pool) < 2:
        raise FlexpaftError(
            "flexora.val_templates=heldout needs a prompt set of at least 2 templates besides "
            f"the own template (this run has {len(pool)}): use flexora+paft, or give plain "
            "flexora prompts.prompt_set (its templates then render the validation batches), or "
            "flexora.val_templates=train"
        )
    random.Random(seed).shuffle(pool)
    n_val = min(len(pool) - 1, max(1, round(f.val_template_fraction * len(pool))))
    held = set(pool[:n_val])
    return (
        [t for i, t in enumerate(templates) if i not in held],
        [t for i, t in enumerate(templates) if i in held],
    )
