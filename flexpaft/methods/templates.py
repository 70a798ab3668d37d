"""Which templates a training method uses: one (lora, topaccuracy) or a whole set (paft)."""

from __future__ import annotations

import logging
from typing import Any

from flexpaft.errors import FlexpaftError
from flexpaft.prompts import PromptSet, Template
from flexpaft.prompts.promptset import template_id
from flexpaft.settings.train import MULTI_TEMPLATE_METHODS, TrainConfig
from flexpaft.tasks.spec import AnswerFormat, Example, TaskSpec

log = logging.getLogger(__name__)


def default_template(task: TaskSpec, fmt: AnswerFormat) -> Template:
    text = task.templates.get(fmt.value)
    if not text:
        raise FlexpaftError(
            f"task {task.name} has no default {fmt.value} template: give prompts.template"
        )
    return Template(text, template_id(text))


def load_valid_set(path: str, task: TaskSpec, fmt: AnswerFormat) -> PromptSet:
    """A prompt set with invalid templates reported (with the reason) and skipped."""
    ps = PromptSet.load(path).deduplicate()
    good, bad = ps.validated(task, fmt)
    for t, reasons in bad:
        log.warning("skipping template %s: %s", t.id, "; ".join(reasons))
    if not len(good):
        raise FlexpaftError(f"no template in {path} is valid for task {task.name} ({fmt.value})")
    return good


def single_template(cfg: TrainConfig, task: TaskSpec, fmt: AnswerFormat) -> Template:
    if cfg.prompts.template:
        t = Template(cfg.prompts.template, template_id(cfg.prompts.template))
        return t.validate(task, fmt)
    return default_template(task, fmt)


def own_index(own: Template, templates: list[Template]) -> int | None:
    """Where the user's own template sits in ``templates`` (by text), or None."""
    return next((i for i, t in enumerate(templates) if t.text == own.text), None)


def sampled_own_index(
    cfg: TrainConfig, task: TaskSpec, fmt: AnswerFormat, templates: list[Template]
) -> int | None:
    """The own template's index for the sampler under ``prompts.own_rate``, else None.

    None as well where the list lacks it: Flexora's search may train on a slice of the prompt
    set that holds it out (flexora.val_templates=heldout); there it is simply not drawn.
    """
    if cfg.prompts.own_rate <= 0 or cfg.method not in MULTI_TEMPLATE_METHODS:
        return None
    return own_index(single_template(cfg, task, fmt), templates)


def training_templates(
    cfg: TrainConfig,
    task: TaskSpec,
    fmt: AnswerFormat,
    examples: list[Example],
    model: Any,
    tokenizer: Any,
) -> tuple[list[Template], dict[str, Any]]:
    """Templates for ``cfg.method`` and a small record of how they were chosen."""
    if cfg.method in ("paft", "flexora+paft"):
        if not cfg.prompts.prompt_set:
            raise FlexpaftError(
                f"method {cfg.method} needs prompts.prompt_set (the training templates)"
            )
        ps = load_valid_set(cfg.prompts.prompt_set, task, fmt)
        info = {"source": cfg.prompts.prompt_set, "count": len(ps), "digest": ps.digest()}
        templates = list(ps)
        if cfg.prompts.own_rate > 0:
            own = single_template(cfg, task, fmt)
            added = own_index(own, templates) is None
            if added:  # the user's own prompt is drawn at own_rate, so it must be in the list
                templates.append(own)
            info["own"] = {"id": own.id, "rate": cfg.prompts.own_rate, "added": added}
        return templates, info
    if cfg.method == "topaccuracy":
        if not cfg.prompts.prompt_set:
            raise FlexpaftError(
                "method topaccuracy needs prompts.prompt_set (the candidate templates)"
            )
        from flexpaft.evaluate.evaluator import evaluate_templates

        ps = load_valid_set(cfg.prompts.prompt_set, task, fmt)
        probe = examples[: cfg.prompts.topaccuracy_examples]
        from flexpaft.chat import resolve_chat

        chat = resolve_chat(cfg.model.chat_template, tokenizer)
        result = evaluate_templates(
            model, tokenizer, task, fmt, list(ps), probe, progress=False, chat=chat
        )
        best = max(range(len(ps)), key=lambda i: result.per_template[i].accuracy)
        chosen = ps[best]
        log.info(
            "topaccuracy: template %s scores %.3f on the base model",
            chosen.id,
            result.per_template[best].accuracy,
        )
        return [chosen], {
            "source": cfg.prompts.prompt_set,
            "chosen": chosen.id,
            "base_accuracy": result.per_template[best].accuracy,
            "candidates": len(ps),
        }
    t = single_template(cfg, task, fmt)
    return [t], {"template": t.text, "id": t.id}
