"""Templates for one task: its own default, the user's own prompt, a prompt set checked against it."""

from __future__ import annotations

import logging

from flexpaft.errors import FlexpaftError
from flexpaft.prompts.promptset import PromptSet, template_id
from flexpaft.prompts.template import Template
from flexpaft.tasks.spec import AnswerFormat, TaskSpec

log = logging.getLogger(__name__)


# What follows the task's fields in a template made for a task that names none, by format.
_ANSWER_CUE = {
    AnswerFormat.LABEL_WORDS: "Answer ({label_words}):",
    AnswerFormat.LETTER: "{options}\nAnswer ({option_letters}):",
    AnswerFormat.OPTION_TEXT: "Answer:",
    AnswerFormat.GENERATION: "Answer ({label_words}):",
}


def default_template(task: TaskSpec, fmt: AnswerFormat) -> Template:
    """The task's own template for ``fmt``; for a task that gives none (a minimal task YAML),
    one line per field ("Text: {text}") and the format's answer cue, said once in the log."""
    text = task.templates.get(fmt.value)
    if not text:
        shown = [f for f in task.fields if f in task.required] or list(task.fields)
        if not shown:
            raise FlexpaftError(
                f"task {task.name} has no default {fmt.value} template and no fields to make "
                "one from: give prompts.template, or templates: in the task YAML"
            )
        lines = [f"{f.replace('_', ' ').replace('.', ' ').capitalize()}: {{{f}}}" for f in shown]
        text = "\n".join([*lines, _ANSWER_CUE[fmt]])
        if (task.name, fmt) not in _said:
            _said.add((task.name, fmt))
            log.info("task %s has no %s template; using %r", task.name, fmt.value, text)
    return Template(text, template_id(text))


_said: set[tuple[str, AnswerFormat]] = set()


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
