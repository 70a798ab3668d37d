"""What the generator models are asked and how their replies are read.

``meta_messages`` builds the PAFT paper's meta-prompt for a task and answer format (zero-shot:
the task description and the placeholders it may use; few-shot: also a few seed templates);
``parse_reply`` takes the templates out of whatever layout a model answers in.
"""

from __future__ import annotations

import json
import re

from flexpaft.prompts.generate.clients import Message
from flexpaft.prompts.generate.phrasings import enumeration_slots
from flexpaft.tasks.spec import OPTION_SLOT, AnswerFormat, TaskSpec

# ---- meta-prompts ------------------------------------------------------------------------------
SYSTEM_PROMPT = (
    "You write prompt templates used to test language models on a task. A template is a complete "
    "prompt with placeholders in curly braces that are filled in later with one example's "
    "fields. Reply with a JSON array of strings and nothing else."
)


def slot_guide(task: TaskSpec, fmt: AnswerFormat) -> list[tuple[str, str]]:
    """(placeholder, meaning) pairs a meta-prompt offers for ``task`` in ``fmt``."""
    per_option = enumeration_slots(task)
    option_fields = set(task.options) if isinstance(task.options, tuple) else set()
    blank = fmt is AnswerFormat.OPTION_TEXT and bool(task.blank_field)
    guide = []
    for f in task.fields:
        if f in option_fields or (blank and f == task.blank_field):
            continue
        guide.append((f, f"the example's {f.replace('_', ' ')}"))
    if blank:
        guide += [
            ("before_blank", f"the {task.blank_field} up to the blank"),
            (OPTION_SLOT, "a candidate filler for the blank"),
            ("after_blank", f"the rest of the {task.blank_field} after the blank"),
        ]
    shows_options = fmt is AnswerFormat.LETTER or (
        fmt is AnswerFormat.GENERATION and not task.label_words
    )
    if shows_options:
        if per_option is None:
            guide.append(("options", "all options, already written as lines 'A. ...', 'B. ...'"))
        else:
            for i, synonyms in enumerate(per_option):
                # The dataset's own field name (sol1) where there is one, as in the paper's sets.
                guide.append((synonyms[-1], f"the text of option {chr(65 + i)}"))
        guide.append(("option_letters", "the option letters, e.g. 'A or B'"))
    if task.label_words and fmt in (AnswerFormat.LABEL_WORDS, AnswerFormat.GENERATION):
        guide.append(("label_words", f"the answer words: {' or '.join(task.label_words)}"))
    return guide


def format_rules(task: TaskSpec, fmt: AnswerFormat) -> list[str]:
    cue = "End with an answer cue such as 'Answer:' and put nothing after it."
    if fmt is AnswerFormat.LETTER:
        return [
            "List every option after its letter (A., B., ...).",
            cue + " The answer is a letter.",
        ]
    if fmt is AnswerFormat.LABEL_WORDS:
        return [cue + f" The answer is one word: {' or '.join(task.label_words)}."]
    if fmt is AnswerFormat.OPTION_TEXT:
        if task.blank_field:
            return [
                "Do not list the options. End the template with "
                "{before_blank} {" + OPTION_SLOT + "}{after_blank}, because each candidate "
                "filler is put in place of {" + OPTION_SLOT + "} and the sentence is scored."
            ]
        return [
            "Do not list the options. Put the example's content first and "
            + cue[0].lower()
            + cue[1:],
            "The text of each candidate answer is appended right after the cue and scored.",
        ]
    if task.label_words:
        return [f"Ask explicitly for exactly one word: {' or '.join(task.label_words)}.", cue]
    return [
        "List every option after its letter (A., B., ...).",
        "Ask explicitly for the letter of the correct option only.",
        cue,
    ]


def meta_messages(
    task: TaskSpec, fmt: AnswerFormat, k: int, examples: list[str] | None = None
) -> list[Message]:
    """Chat messages asking for ``k`` templates; ``examples`` makes it the few-shot variant."""
    lines = [f"Task: {task.description or task.name}", ""]
    lines.append(
        f"Write {k} different prompt templates for this task. Use only these placeholders:"
    )
    lines += [f"- {{{name}}}: {meaning}" for name, meaning in slot_guide(task, fmt)]
    lines += ["", "Rules:"]
    lines += [f"- {r}" for r in format_rules(task, fmt)]
    lines += [
        "- Use every placeholder at most once; write no other curly braces.",
        "- Vary the wording, the instructions, the labels and the layout between templates.",
        "- Inside the JSON strings, write line breaks as \\n.",
    ]
    if examples:
        lines += ["", "Examples of good templates:"]
        lines += [f"Example {i}:\n{e}\n" for i, e in enumerate(examples, 1)]
        lines.append("Write new templates; do not copy the examples.")
    lines += ["", f"Reply with a JSON array of {k} strings."]
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "\n".join(lines)},
    ]


# ---- reply parsing -----------------------------------------------------------------------------
_FENCE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n?(.*?)```", re.S)
_ITEM = re.compile(
    r"^\s*(?:\d+\s*[.):]|[-*•]|(?:template|prompt)\s*#?\d+\s*[:.)-]?)\s*", re.IGNORECASE
)
_HAS_SLOT = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")
_TEXT_KEYS = ("template", "prompt", "text")


def parse_reply(reply: str) -> list[str]:
    """Templates in an LLM reply: a JSON array, code fences, a numbered list, or blocks.

    Whatever the layout, only pieces holding at least one ``{slot}`` are kept, so preambles
    ("Here are 5 templates:") fall away; a reply with none is malformed and gives [].
    """
    text = reply.strip()
    fences = _FENCE.findall(text)
    if fences:
        joined = "\n".join(fences)
        items = _json_items(joined)
        if items is None:
            items = [x for f in fences for x in (_listed_items(f) or [f])]
    else:
        items = _json_items(text)
        if items is None:
            items = _listed_items(text) or _blocks(text)
    out = []
    for item in items:
        t = _clean(item)
        if t and _HAS_SLOT.search(t):
            out.append(t)
    return out


def _json_items(text: str) -> list[str] | None:
    start, end = text.find("["), text.rfind("]")
    candidates = [text[start : end + 1]] if 0 <= start < end else []
    if text.lstrip().startswith("{"):
        candidates.append(text.strip())
    for chunk in candidates:
        try:
            data = json.loads(chunk)
        except ValueError:
            continue
        if isinstance(data, dict):
            data = next((v for v in data.values() if isinstance(v, list)), None)
        if isinstance(data, list):
            items = []
            for x in data:
                if isinstance(x, dict):
                    x = next((x[k] for k in _TEXT_KEYS if isinstance(x.get(k), str)), None)
                if isinstance(x, str):
                    items.append(x)
            return items
    return None


def _listed_items(text: str) -> list[str]:
    """Numbered or bulleted items; an item runs until the next item starts."""
    items: list[list[str]] = []
    for line in text.splitlines():
        m = _ITEM.match(line)
        if m:
            items.append([line[m.end() :]])
        elif items:
            items[-1].append(line)
    if len(items) < 2:
        return []
    return ["\n".join(lines).strip() for lines in items]


def _blocks(text: str) -> list[str]:
    return [b for b in re.split(r"\n\s*(?:---+)?\s*\n", text) if b.strip()]


def _clean(item: str) -> str:
    t = item.strip().rstrip(",").strip()
    for q in ('"', "'", "`"):
        if len(t) >= 2 and t[0] == q and t[-1] == q:
            t = t[1:-1]
    # A template never means backslash-n (same rule as PromptSet.load).
    t = t.replace("\\n", "\n")
    # The answer is appended after the cue, so no trailing whitespace; no blank edges either.
    return t.strip()
