"""Cheap checks of the data a run is about to use, said once before the expensive part starts.

Nothing here changes the data: duplicate rows and over-long prompts are legal, but a user who
does not know about them draws the wrong conclusions from the run, so each is one warning line
(how many, by how much). A slice that balancing leaves with one answer is an error: training or
scoring on one label measures nothing.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from flexpaft.errors import FlexpaftError
from flexpaft.prompts.template import Template
from flexpaft.tasks.spec import AnswerFormat, Example, TaskSpec

log = logging.getLogger(__name__)

# Prompts tokenized to find over-long ones: enough to see a pattern, a fraction of a second.
LENGTH_SAMPLE = 512


def warn(message: str) -> None:
    log.warning("flexpaft: warning: %s", message)


def check_one_label(examples: list[Example], where: str) -> None:
    """Refuse a balanced slice in which every example has the same gold answer."""
    golds = {ex.gold for ex in examples}
    if examples and len(golds) == 1:
        raise FlexpaftError(
            f"data.balance_labels: all {len(examples)} examples of {where} have the same gold "
            f"answer ({ex_answer(examples[0])}): there is nothing to balance, and a model trained "
            "or scored on one label learns or shows nothing; use data with both answers"
        )


def ex_answer(ex: Example) -> str:
    return repr(ex.options[ex.gold]) if 0 <= ex.gold < len(ex.options) else str(ex.gold)


def warn_duplicates(examples: list[Example], role: str) -> int:
    """Warn when examples repeat (same fields and options); returns how many are repeats."""
    from flexpaft.splits import example_hash

    counts = Counter(example_hash(ex) for ex in examples)
    repeats = sum(n - 1 for n in counts.values() if n > 1)
    if repeats:
        distinct = sum(1 for n in counts.values() if n > 1)
        warn(
            f"{repeats} of the {len(examples)} {role} examples repeat another one (same text "
            f"and options; {distinct} distinct example(s) appear more than once): they weigh "
            "more than the rest"
        )
    return repeats


def sampled_pairs(
    examples: list[Example], templates: list[Template]
) -> list[tuple[Example, Template]]:
    """Up to ``LENGTH_SAMPLE`` (example, template) pairs covering every template and as many
    examples as fit: the i-th example under the (i mod T)-th template."""
    n = max(min(len(examples), LENGTH_SAMPLE), min(len(templates), LENGTH_SAMPLE))
    if not examples or not templates:
        return []
    return [(examples[i % len(examples)], templates[i % len(templates)]) for i in range(n)]


def warn_long_prompts(
    task: TaskSpec,
    fmt: AnswerFormat,
    examples: list[Example],
    templates: list[Template],
    tokenizer: Any,
    max_length: int,
    key: str,
    chat: Any = None,
    with_answer: bool = True,
    eos: bool = False,
) -> int:
    """Warn when rendered prompts (plus the gold answer and ``eos``, for training) exceed
    ``max_length`` tokens and will be cut from the left; returns how many of the checked do."""
    from flexpaft.render import encode_answer, encode_prompt, render

    pairs = sampled_pairs(examples, templates)
    over = []
    for ex, t in pairs:
        r = render(task, t, ex, fmt, chat)
        n = len(encode_prompt(tokenizer, r.prompt))
        if with_answer:
            n += len(encode_answer(tokenizer, r.answers[r.gold])) + int(eos)
        if n > max_length:
            over.append(n - max_length)
    if over:
        what = "prompts with their answer" if with_answer else "prompts"
        warn(
            f"{len(over)} of {len(pairs)} checked {what} are longer than {key}={max_length} "
            f"tokens, by {min(over)} to {max(over)} (mean {sum(over) / len(over):.0f}): they are "
            f"cut from the left, so the model sees less of the passage; raise {key}"
        )
    return len(over)
