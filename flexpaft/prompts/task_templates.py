"""Templates for one task: its own default, the user's own prompt, a prompt set checked against it."""

from __future__ import annotations

import logging

from flexpaft.errors import FlexpaftError
from flexpaft.prompts.promptset import PromptSet, template_id
from flexpaft.prompts.template import Template
from flexpaft.tasks.spec import AnswerFormat, TaskSpec

log = logging.getLogger(__name__)


def default_template(task: TaskSpec, fmt: AnswerFormat) -> Template:
    """The task's own template for ``fmt``."""
    text = task.templates.get(fmt.value)
    if not text:
        raise FlexpaftError(
            f"task {task.name} has no default {fmt.value} template: give prompts.template"
        )
    return Template(text, template_id(text))


def own_template(text: str, task: TaskSpec, fmt: AnswerFormat) -> Template:
    """The user's own prompt: ``text`` checked against the task, or the task's template when
    ``text`` is empty."""
    if text:
        return Template(text, template_id(text)).validate(task, fmt)
    return default_template(task, fmt)


def load_valid_set(path: str, task: TaskSpec, fmt: AnswerFormat) -> PromptSet:
    """A prompt set with invalid templates reported (with the reason) and skipped."""
    ps = PromptSet.load(path).deduplicate()
    good, bad = ps.validated(task, fmt)
    for t, reasons in bad:
        log.warning("skipping template %s: %s", t.id, "; ".join(reasons))
    if not len(good):
        raise FlexpaftError(f"no template in {path} is valid for task {task.name} ({fmt.value})")
    return good


def own_index(own: Template, templates: list[Template]) -> int | None:
    """Where the user's own template sits in ``templates`` (by text), or None."""
    return next((i for i, t in enumerate(templates) if t.text == own.text), None)
