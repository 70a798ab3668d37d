"""Offline candidate prompts: a format grammar over a phrasing bank, no LLM needed.

In the spirit of FormatSpread (Sclar et al., 2023), a candidate is one draw from the product of
instruction phrasing x field labels x separators x option markers x casing x answer cue, so the
set varies both wording and surface format, the two things PAFT should make a model robust to.
Format rules that keep every candidate usable:

* letter: the options are enumerated (per-option slots, or ``{options}`` when the number of
  options varies) and the template ends with an answer cue; markers stay upper-case letters,
  because the answer is always `` A`` / `` B``.
* label_words: ends with a cue; may name ``{label_words}``.
* option_text: context first, then a cue, so an option's text is the continuation; a task with
  a blank (Winogrande) puts ``{option}`` into the sentence instead.
* generation: shows the options (or names the label words) and asks for the answer explicitly.

Templates never end in whitespace: the answer is appended as " A" / " yes".
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, replace

from flexpaft.prompts.generate.filters import normalize_text
from flexpaft.prompts.generate.phrasings import (
    BodyPart,
    TaskBank,
    enumeration_slots,
    escape_literal,
    load_bank,
    task_bank,
)
from flexpaft.prompts.promptset import PromptSet
from flexpaft.prompts.template import Template, parse_template
from flexpaft.tasks.spec import LETTERS, OPTION_SLOT, AnswerFormat, TaskSpec

# Draws per requested candidate before giving up: the grammar is large, so running out means the
# bank is too small for ``n``, and the caller gets fewer candidates rather than a hang.
_ATTEMPTS_PER_CANDIDATE = 50


@dataclass(frozen=True)
class _Style:
    """The surface choices shared by every part of one candidate."""

    separator: str
    joiner: str
    option_joiner: str
    marker: str
    header: str
    casing: str
    layout: str = "lines"


# Template *structure*, not only wording: the field order, where the instruction sits, whether an
# answer cue ends the prompt, and how fields are marked up. Measured on BoolQ (docs/RESULTS.md),
# a model trained on lines-only, passage-first, cue-terminated templates is no more robust than a
# one-prompt LoRA on human-written templates that put the question first or end without a cue.
# Probabilities keep the classic "Label: value / cue" layout the most common one.
_LAYOUTS = ("lines", "lines", "lines", "inline", "markdown", "xml", "bracket")
_QUESTION_FIRST = 0.3  # body fields in reverse order (question before passage)
_NO_CUE = 0.2  # label words: end on the last field or the instruction, FLAN-style
_INSTRUCTION_PLACES = ("lead", "lead", "lead", "lead", "before_cue", "before_cue", "none")
_WORD_LIST = 0.2  # label words: an explicit "OPTIONS: - yes - no" listing


def recase(text: str, mode: str) -> str:
    """Change the case of a template's literal text; slot names are never touched."""
    if mode in ("as_is", "upper_labels", "lower_labels"):
        return text
    change = {"lower": str.lower, "upper": str.upper}[mode]
    return "".join(
        escape_literal(change(lit)) + ("{" + slot + "}" if slot else "")
        for lit, slot in parse_template(text)
    )


def _label_case(label: str, mode: str) -> str:
    if mode == "upper_labels":
        return label.upper()
    if mode in ("lower", "lower_labels"):
        return label.lower()
    return label


def _field_block(part: BodyPart, style: _Style, rng: random.Random) -> str:
    if part.lines:
        return recase(rng.choice(part.lines), style.casing)
    label = _label_case(rng.choice(part.labels), style.casing)
    value = "{" + part.slot + "}" + part.suffix
    if style.layout == "xml":
        tag = re.sub(r"\W+", "_", (label or part.slot).lower()).strip("_") or "field"
        return f"<{tag}>{value}</{tag}>"
    if not label:
        return value
    if style.layout == "markdown":
        return f"### {label}\n{value}"
    if style.layout == "bracket":
        return f"[{label}] {value}"
    return label + style.separator + value


def _word_list(task: TaskSpec, style: _Style) -> str:
    """FLAN's way of naming label words: a literal list, one per line."""
    header = _label_case("OPTIONS:", style.casing)
    return header + "".join("\n- " + escape_literal(w) for w in task.label_words)


def _options_block(task: TaskSpec, bank: TaskBank, style: _Style, rng: random.Random) -> str:
    header = _label_case(style.header, style.casing)
    per_option = enumeration_slots(task, bank)
    if per_option is None:
        # {options} renders its own "A. text" lines, so it always goes on its own line.
        listing = "{options}"
        return f"{header}\n{listing}" if header else listing
    # One naming scheme for all options ({A} {B} or {sol1} {sol2}), never a mix.
    scheme = rng.randrange(min(len(s) for s in per_option))
    listing = style.option_joiner.join(
        style.marker.replace("@", LETTERS[i]) + "{" + synonyms[scheme] + "}"
        for i, synonyms in enumerate(per_option)
    )
    if not header:
        return listing
    return header + ("\n" if style.option_joiner == "\n" else " ") + listing


def has_question(task: TaskSpec) -> bool:
    """The task shows a question (BoolQ's, PIQA's goal...): a template may rely on it to say
    what to answer. A classification task over a text has none."""
    return any("question" in s or s in ("goal", "query") for s in task.slots)


def _instruction(task: TaskSpec, fmt: AnswerFormat, bank: TaskBank, rng: random.Random) -> str:
    requests = load_bank()["answer_requests"]
    phrases = bank.instructions_for(fmt)
    if not has_question(task):
        # "Answer the question below." over a request with no question asks for nothing.
        phrases = tuple(p for p in phrases if "question" not in p.lower()) or phrases
    phrase = rng.choice(phrases)
    if fmt is AnswerFormat.GENERATION:
        kind = "generation_words" if task.label_words else "generation"
        request = rng.choice(requests[kind])
    elif fmt in (AnswerFormat.LETTER, AnswerFormat.LABEL_WORDS):
        request = rng.choice(requests[fmt.value])
    else:
        request = ""
    hint = rng.choice(load_bank()["hints"])
    return " ".join(p for p in (phrase, hint, request) if p)


def _cue(task: TaskSpec, fmt: AnswerFormat, bank: TaskBank, rng: random.Random) -> str:
    cues = bank.cues.get(fmt.value) or tuple(load_bank()["cues"][fmt.value])
    if {w.lower() for w in task.label_words} != {"yes", "no"}:
        # "Answer (yes or no):" would ask a seven-intent or true/false task for the wrong words.
        cues = tuple(c for c in cues if "yes or no" not in c.lower()) or cues
    return rng.choice(cues)


def _shows_options(task: TaskSpec, fmt: AnswerFormat) -> bool:
    if fmt is AnswerFormat.LETTER:
        return True
    # Generation asks for a letter unless the task answers with label words (BoolQ: yes/no).
    return fmt is AnswerFormat.GENERATION and not task.label_words


def compose(task: TaskSpec, fmt: AnswerFormat, bank: TaskBank, rng: random.Random) -> str:
    """One candidate template drawn from the grammar."""
    fmt_bank = load_bank()["format"]
    style = _Style(
        separator=rng.choice(fmt_bank["separators"]),
        joiner=rng.choice(fmt_bank["joiners"]),
        option_joiner=rng.choice(fmt_bank["option_joiners"]),
        marker=rng.choice(fmt_bank["option_markers"]),
        header=rng.choice(fmt_bank["option_headers"]),
        casing=rng.choice(fmt_bank["casings"]),
        layout=rng.choice(_LAYOUTS),
    )
    instruction = recase(_instruction(task, fmt, bank, rng), style.casing)
    cloze_blank = fmt is AnswerFormat.OPTION_TEXT and bool(task.blank_field)
    if cloze_blank and style.layout in ("xml", "markdown"):
        # The scored continuation is the rest of the sentence: no closing tag may follow it.
        style = replace(style, layout="lines")
    body = []
    for part in bank.body:
        if part.optional and rng.random() < 0.5:
            continue
        if cloze_blank and part.slot == task.blank_field:
            # The option goes into the blank, so the scored continuation is the option plus the
            # rest of the sentence; after_blank keeps its own leading space or punctuation.
            blank = "{before_blank} {" + OPTION_SLOT + "}{after_blank}"
            part = BodyPart(slot=part.slot, labels=part.labels)
            block = _field_block(part, style, rng).replace("{" + part.slot + "}", blank)
            body.append(block)
            continue
        body.append(_field_block(part, style, rng))
    # A blank-filling cloze must end with its sentence, so its structure stays fixed.
    if not cloze_blank and len(body) > 1 and rng.random() < _QUESTION_FIRST:
        body.reverse()
    if _shows_options(task, fmt):
        body.append(_options_block(task, bank, style, rng))
    elif fmt is AnswerFormat.LABEL_WORDS and task.label_words and rng.random() < _WORD_LIST:
        body.append(_word_list(task, style))
    # Cues are plain words (no slots), cased like the field labels. Letters and option texts
    # always follow a cue (the answer must read as its continuation); label words may not.
    drop_cue = fmt is AnswerFormat.LABEL_WORDS and rng.random() < _NO_CUE
    cue = "" if cloze_blank or drop_cue else _label_case(_cue(task, fmt, bank, rng), style.casing)
    place = "lead" if cloze_blank else rng.choice(_INSTRUCTION_PLACES)
    if place == "none" and fmt is AnswerFormat.GENERATION:
        place = "lead"  # generation must ask for the answer format explicitly
    if place == "lead":
        parts = [instruction, *body, cue]
    elif place == "before_cue":
        parts = [*body, instruction, cue]
    else:
        parts = [*body, cue]
    joiner = " " if style.layout == "inline" and not cloze_blank else style.joiner
    text = joiner.join(p for p in parts if p).rstrip()
    if needs_answer_words(task, fmt, text):
        # Neither a question nor the answer words: name them in the cue, so the template says
        # what to answer (the words themselves are scored after it).
        named = _label_case(_named_cue(cue), style.casing)
        text = joiner.join(p for p in [*parts[:-1], named] if p).rstrip()
    return text


def needs_answer_words(task: TaskSpec, fmt: AnswerFormat, text: str) -> bool:
    """A label-words template that gives no answer cue: no question to answer, and neither
    ``{label_words}`` nor every label word written out."""
    if fmt is not AnswerFormat.LABEL_WORDS or not task.label_words or has_question(task):
        return False
    lowered = text.lower()
    return "{label_words}" not in text and not all(w.lower() in lowered for w in task.label_words)


def _named_cue(cue: str) -> str:
    stem = cue.rstrip(": ").strip() or "Answer"
    return f"{stem} ({{label_words}}):"


def generate_offline(task: TaskSpec, fmt: AnswerFormat, n: int = 300, seed: int = 0) -> PromptSet:
    """``n`` distinct candidates for ``task`` in ``fmt`` (fewer if the grammar runs out).

    Deterministic for a seed: the random stream is seeded by a string, which Python hashes with
    SHA-512, so PYTHONHASHSEED does not matter.
    """
    fmt = AnswerFormat.parse(fmt)
    task.check_format(fmt)
    bank = task_bank(task)
    rng = random.Random(f"flexpaft-offline:{task.name}:{fmt.value}:{seed}")
    seen: set[str] = set()
    texts: list[str] = []
    for _ in range(max(n, 1) * _ATTEMPTS_PER_CANDIDATE):
        if len(texts) >= n:
            break
        text = compose(task, fmt, bank, rng)
        # Distinct after normalization, so the near-duplicate filter keeps them and a test
        # template is never a mere re-casing or re-punctuation of a training one.
        key = normalize_text(text)
        if key in seen:
            continue
        seen.add(key)
        if not Template(text).problems(task, fmt):
            texts.append(text)
    return PromptSet.from_texts(texts, name=f"{task.name}.{fmt.value}.offline")
