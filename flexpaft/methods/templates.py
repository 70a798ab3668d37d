"""Template policies: which templates a method's examples are rendered under.

``one``: the user's own template (``prompts.template``) or the task's; ``ranked`` (topaccuracy):
the prompt set's template that scores best on the base model; ``set`` (PAFT): the whole prompt
set, a template drawn per example and per epoch, with the user's own template drawn at
``prompts.own_rate``. ``flexpaft.settings.methods`` says which policy each method uses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flexpaft.errors import FlexpaftError
from flexpaft.prompts import Template
from flexpaft.prompts.task_templates import load_valid_set, own_index, own_template
from flexpaft.settings.train import TrainConfig
from flexpaft.tasks.spec import AnswerFormat, Example, TaskSpec

log = logging.getLogger(__name__)

Chosen = tuple[list[Template], dict[str, Any]]


def _prompt_set(cfg: TrainConfig, task: TaskSpec, fmt: AnswerFormat):
    if not cfg.prompts.prompt_set:
        raise FlexpaftError(
            f"method {cfg.method} needs prompts.prompt_set (its candidate templates): make one "
            f"with `flexpaft prompts generate --task {cfg.data.task} --out DIR` and pass "
            "--set prompts.prompt_set=DIR/train.jsonl"
        )
    return load_valid_set(cfg.prompts.prompt_set, task, fmt)


def one_template(cfg: TrainConfig, task: TaskSpec, fmt: AnswerFormat, *_: Any) -> Chosen:
    t = own_template(cfg.prompts.template, task, fmt)
    return [t], {"template": t.text, "id": t.id}


def ranked_template(
    cfg: TrainConfig,
    task: TaskSpec,
    fmt: AnswerFormat,
    examples: list[Example],
    model: Any,
    tokenizer: Any,
) -> Chosen:
    """The prompt set's template with the best accuracy of the base model on the first
    ``prompts.topaccuracy_examples`` training examples."""
    from flexpaft.chat import resolve_chat
    from flexpaft.evaluation.evaluator import evaluate_templates

    ps = _prompt_set(cfg, task, fmt)
    probe = examples[: cfg.prompts.topaccuracy_examples]
    chat = resolve_chat(cfg.model.chat_template, tokenizer)
    result = evaluate_templates(
        model, tokenizer, task, fmt, list(ps), probe, progress=False, chat=chat
    )
    best = max(range(len(ps)), key=lambda i: result.per_template[i].accuracy)
    chosen = ps[best]
    log.info(
        "%s: template %s scores %.3f on the base model",
        cfg.method,
        chosen.id,
        result.per_template[best].accuracy,
    )
    return [chosen], {
        "source": cfg.prompts.prompt_set,
        "chosen": chosen.id,
        "base_accuracy": result.per_template[best].accuracy,
        "candidates": len(ps),
    }


def drawn_templates(cfg: TrainConfig, task: TaskSpec, fmt: AnswerFormat, *_: Any) -> Chosen:
    """The prompt set, plus the user's own template when it is drawn at ``own_rate`` and is not
    in the set already."""
    ps = _prompt_set(cfg, task, fmt)
    info: dict[str, Any] = {
        "source": cfg.prompts.prompt_set,
        "count": len(ps),
        "digest": ps.digest(),
    }
    templates = list(ps)
    own = drawn_own_template(cfg, task, fmt)
    if own is not None:
        added = own_index(own, templates) is None
        if added:  # the user's own prompt is drawn at own_rate, so it must be in the list
            templates.append(own)
        info["own"] = {"id": own.id, "rate": cfg.prompts.own_rate, "added": added}
    return templates, info


TEMPLATE_POLICIES: dict[str, Callable[..., Chosen]] = {
    "one": one_template,
    "ranked": ranked_template,
    "set": drawn_templates,
}


def training_templates(
    cfg: TrainConfig,
    task: TaskSpec,
    fmt: AnswerFormat,
    examples: list[Example],
    model: Any,
    tokenizer: Any,
) -> Chosen:
    """The templates ``cfg.method`` trains under, and a small record of how they were chosen."""
    policy = TEMPLATE_POLICIES[cfg.spec.templates]
    return policy(cfg, task, fmt, examples, model, tokenizer)


def drawn_own_template(cfg: TrainConfig, task: TaskSpec, fmt: AnswerFormat) -> Template | None:
    """The template drawn for a ``prompts.own_rate`` share of the examples, or None where there
    is no such share (rate 0, or a method that trains under one template anyway)."""
    if cfg.prompts.own_rate <= 0 or not cfg.spec.draws_templates:
        return None
    return own_template(cfg.prompts.template, task, fmt)


def sampled_own_index(
    cfg: TrainConfig, task: TaskSpec, fmt: AnswerFormat, templates: list[Template]
) -> int | None:
    """The own template's index in ``templates`` for the sampler, else None.

    None as well where the list lacks it (a caller's own template list); Flexora's search never
    holds the own template out for validation (methods/flexora/wordings.py).
    """
    own = drawn_own_template(cfg, task, fmt)
    return None if own is None else own_index(own, templates)
