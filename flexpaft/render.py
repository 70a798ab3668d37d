"""Examples rendered under templates: prompt text, the answer string of every option, token ids.

This is the one place that decides how an answer is attached to a prompt, shared by the trainer
(which learns ``prompt + gold answer``) and the evaluator (which scores every option's answer), so
the two can never disagree about whitespace or tokenization.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from flexpaft.prompts.template import Template
from flexpaft.tasks.spec import OPTION_SLOT, AnswerFormat, Example, TaskSpec

if TYPE_CHECKING:
    from flexpaft.chat import ChatFormat


@dataclass
class Rendered:
    """One (template, example) pair: the prompt and each option's continuation after it."""

    prompt: str
    answers: list[str]
    gold: int


def render(
    task: TaskSpec,
    template: Template,
    example: Example,
    fmt: AnswerFormat,
    chat: ChatFormat | None = None,
) -> Rendered:
    """``example`` under ``template``; with ``chat``, the prompt is the user turn of a chat and
    each answer the assistant turn's content (see chat.py)."""
    plain = _render_plain(task, template, example, fmt)
    if chat is None:
        return plain
    return Rendered(chat.wrap(plain.prompt), [a.lstrip(" ") for a in plain.answers], plain.gold)


def _render_plain(
    task: TaskSpec, template: Template, example: Example, fmt: AnswerFormat
) -> Rendered:
    if fmt is AnswerFormat.OPTION_TEXT and OPTION_SLOT in template.slots:
        # Cloze with the option inside the text (Winogrande's blank): the scored continuation
        # is everything from the option onwards; the prompt is the text before it.
        answers, prompt = [], ""
        for option in example.options:
            prompt, rest = template.render_split(
                {**example.fields, OPTION_SLOT: option}, OPTION_SLOT
            )
            answers.append(rest)
        prompt, answers = _move_space(prompt, answers)
        return Rendered(prompt, answers, example.gold)
    prompt = template.render(example.fields)
    words = task.answer_strings(example, fmt)
    # The answer follows a space unless the prompt already ends in whitespace ("Answer:\n").
    sep = "" if prompt[-1:].isspace() else " "
    return Rendered(prompt, [sep + w for w in words], example.gold)


def _move_space(prompt: str, answers: list[str]) -> tuple[str, list[str]]:
    # Tokenizers attach a leading space to the following word (" Sarah"), so a space at the end
    # of the prompt belongs to the continuation.
    stripped = prompt.rstrip(" ")
    moved = prompt[len(stripped) :]
    return stripped, [moved + a for a in answers]


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    return tokenizer(prompt, add_special_tokens=True)["input_ids"]


def encode_answer(tokenizer, answer: str) -> list[int]:
    return tokenizer(answer, add_special_tokens=False)["input_ids"]


def encode_for_training(
    tokenizer, rendered: Rendered, max_length: int, append_eos: bool = True
) -> Encoded:
    """Prompt + gold answer; labels are -100 on the prompt so the loss covers the answer only.

    Prompt and answer are tokenized separately, exactly as the evaluator scores them. A sequence
    that is too long loses tokens from the start of the prompt, never from the answer or the
    question at the end of the prompt.
    """
    prompt_ids = encode_prompt(tokenizer, rendered.prompt)
    answer_ids = encode_answer(tokenizer, rendered.answers[rendered.gold])
    if append_eos and tokenizer.eos_token_id is not None:
        answer_ids = answer_ids + [tokenizer.eos_token_id]
    room = max_length - len(answer_ids)
    if room < 1:
        answer_ids = answer_ids[: max_length - 1]
        room = 1
    if len(prompt_ids) > room:
        prompt_ids = prompt_ids[len(prompt_ids) - room :]
    return Encoded(prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids)
