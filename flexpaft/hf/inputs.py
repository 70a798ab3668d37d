"""What ``PaftData`` checks before any training: the task's answer format, the loss, the rate and
sizes, every example row, every template (and the own one), and that each template renders."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from flexpaft.chat import ChatFormat
from flexpaft.errors import FlexpaftError, short_repr
from flexpaft.prompts import PromptSet, Template
from flexpaft.prompts.promptset import template_id
from flexpaft.prompts.task_templates import default_template, load_valid_set
from flexpaft.tasks import AnswerFormat, Example, TaskSpec
from flexpaft.tasks.spec import RecordError

LOSSES = ("answer", "options")


def checked_format(task: TaskSpec, value: str | AnswerFormat | None) -> AnswerFormat:
    fmt = task.default_format if value in (None, "") else AnswerFormat.parse(value)
    task.check_format(fmt)
    return fmt


def check_loss(loss: str, fmt: AnswerFormat) -> str:
    if loss not in LOSSES:
        raise FlexpaftError(f"loss must be one of {', '.join(LOSSES)}, not {short_repr(loss, 40)}")
    if loss == "options" and fmt is AnswerFormat.GENERATION:
        raise FlexpaftError(
            "loss='options' scores the task's answer options, which the generation format does "
            "not have: use loss='answer' or another answer_format"
        )
    return loss


def check_rate(rate: float) -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
        # Below 1: at 1 every draw is the own template, which is one-prompt LoRA, not PAFT.
        raise FlexpaftError(f"own_rate must be a number in [0, 1), got {short_repr(rate, 40)}")
    return float(rate)


def check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise FlexpaftError(f"{name} must be an integer >= {low}, got {short_repr(value, 40)}")
    return int(value)


def pad_token_id(tokenizer: Any) -> int:
    if not callable(tokenizer) or not hasattr(tokenizer, "eos_token_id"):
        raise FlexpaftError(
            f"tokenizer must be a transformers tokenizer, got {type(tokenizer).__name__}"
        )
    # Padding is masked out and position_ids skip it, so any id serves; EOS when there is no pad.
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise FlexpaftError("the tokenizer has neither a pad nor an EOS token: set pad_token")
    return int(pad)


def checked_examples(task: TaskSpec, examples: Any) -> list[Example]:
    if isinstance(examples, (str, bytes, Path)) or not isinstance(examples, Iterable):
        raise FlexpaftError(
            "examples must be a list of records (dicts in the task's schema, or a datasets."
            f"Dataset) or of flexpaft Examples, got {type(examples).__name__}; to read a file "
            "use flexpaft.tasks.load_examples(task, path)"
        )
    out: list[Example] = []
    for i, row in enumerate(examples):
        if isinstance(row, Example):
            out.append(row)
            continue
        try:
            out.append(task.normalize(dict(row) if isinstance(row, Mapping) else row, uid=str(i)))
        except RecordError as e:
            # Numbered from 0, as the user's own list or Dataset indexes it.
            message = f"examples[{i}]: {e.reason} (task {task.name})"
            if e.missing and isinstance(row, Mapping):
                message += f"; its fields are: {', '.join(map(str, row)) or 'none'}"
            raise FlexpaftError(message) from None
    if not out:
        raise FlexpaftError("examples is empty: PAFT needs training examples")
    return out


def checked_templates(task: TaskSpec, fmt: AnswerFormat, templates: Any) -> list[Template]:
    if isinstance(templates, (str, Path)):
        path = Path(templates)
        if isinstance(templates, str) and "{" in templates and not path.is_file():
            raise FlexpaftError(
                "templates is a prompt-set file or a list of templates; this looks like one "
                "template text: pass [text]"
            )
        # A file is a generated set: skip what does not fit the task, as flexpaft train does.
        return list(load_valid_set(str(path), task, fmt))
    if isinstance(templates, PromptSet):
        templates = list(templates)
    if not isinstance(templates, Sequence):
        raise FlexpaftError(
            f"templates must be a prompt-set file or a list of templates, got "
            f"{type(templates).__name__}"
        )
    out, seen = [], set()
    for i, t in enumerate(templates):
        tpl = checked_template(t, f"templates[{i}]")
        problems = tpl.problems(task, fmt)
        if problems:
            raise FlexpaftError(
                f"templates[{i}] ({short_repr(tpl.text, 40)}) cannot serve task {task.name} "
                f"({fmt.value}): {'; '.join(problems)}"
            )
        if tpl.text.strip() not in seen:  # a repeat would double its share of the draws
            seen.add(tpl.text.strip())
            out.append(tpl)
    if not out:
        raise FlexpaftError("templates is empty: PAFT needs templates to draw from")
    return out


def checked_template(value: Any, what: str) -> Template:
    if isinstance(value, Template):
        return value if value.id else Template(value.text, template_id(value.text))
    if isinstance(value, str):
        return Template(value, template_id(value))
    raise FlexpaftError(
        f"{what} must be a template text or a Template, got {short_repr(value, 40)}"
    )


def checked_own_template(task: TaskSpec, fmt: AnswerFormat, value: Any) -> Template:
    if value is None:
        if not task.templates.get(fmt.value):
            raise FlexpaftError(
                f"task {task.name} has no {fmt.value} template to draw at own_rate: give "
                "own_template=<your prompt>, or own_rate=0"
            )
        return default_template(task, fmt)
    tpl = checked_template(value, "own_template")
    problems = tpl.problems(task, fmt)
    if problems:
        raise FlexpaftError(
            f"own_template cannot serve task {task.name} ({fmt.value}): {'; '.join(problems)}"
        )
    return tpl


def rendered_items(
    loss: str,
    task: TaskSpec,
    examples: list[Example],
    templates: list[Template],
    fmt: AnswerFormat,
    tokenizer: Any,
    max_length: int,
    append_eos: bool,
    chat: ChatFormat | None,
) -> Any:
    # flexpaft train's own datasets, indexed by (example, template): the HF rows are the very
    # rows `flexpaft train` trains on, tokenized and truncated the same way.
    if loss == "options":
        from flexpaft.training.options import OptionsDataset as cls
    else:
        from flexpaft.training.data import RenderedDataset as cls
    return cls(
        task,
        examples,
        templates,
        fmt,
        tokenizer,
        max_length,
        append_eos=append_eos,
        chat=chat,
    )


def check_renders(items: Any, n_templates: int) -> None:
    """Every template rendered and tokenized once (on the first example), before training."""
    for t in range(n_templates):
        try:
            items[(0, t)]
        except FlexpaftError as e:
            raise FlexpaftError(f"template {items.templates[t].id}: {e}") from None
