"""Which templates a training method uses: one (lora, topaccuracy) or a whole set (paft)."""

from __future__ import annotations

import logging
from typing import Any

from ..errors import FlexpaftError
from ..prompts import PromptSet, Template
from ..prompts.promptset import template_id
from ..tasks.spec import AnswerFormat, Example, TaskSpec
from .config import TrainConfig

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
        return list(ps), {"source": cfg.prompts.prompt_set, "count": len(ps), "digest": ps.digest()}
    if cfg.method == "topaccuracy":
        if not cfg.prompts.prompt_set:
            raise FlexpaftError(
                "method topaccuracy needs prompts.prompt_set (the candidate templates)"
            )
        from ..evaluate.evaluator import evaluate_templates

        ps = load_valid_set(cfg.prompts.prompt_set, task, fmt)
        probe = examples[: cfg.prompts.topaccuracy_examples]
        from ..chat import resolve_chat

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
