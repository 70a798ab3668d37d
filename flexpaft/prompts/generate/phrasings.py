"""The phrasing bank behind the offline generator: per-task instructions, labels, cues, markers.

The bank is data (``flexpaft/data/phrasings.yaml``) so wording can be reviewed and extended without
touching code. Tasks the bank does not know (a user's own task YAML) get a generic bank built from
the task's fields and description, so the offline generator works for every task.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

from flexpaft.tasks.spec import AnswerFormat, TaskSpec
from flexpaft.yaml_input import load_yaml

# Which instruction list stands in when a format has none of its own.
_INSTRUCTION_FALLBACK = {
    AnswerFormat.LETTER: (AnswerFormat.LETTER, AnswerFormat.LABEL_WORDS),
    AnswerFormat.GENERATION: (
        AnswerFormat.GENERATION,
        AnswerFormat.LETTER,
        AnswerFormat.LABEL_WORDS,
    ),
    AnswerFormat.LABEL_WORDS: (AnswerFormat.LABEL_WORDS, AnswerFormat.LETTER),
    AnswerFormat.OPTION_TEXT: (AnswerFormat.OPTION_TEXT, AnswerFormat.LABEL_WORDS),
}


@dataclass(frozen=True)
class BodyPart:
    """One field shown in the prompt: ``label + separator + {slot}``, or one of ``lines``."""

    slot: str
    labels: tuple[str, ...] = ("",)
    suffix: str = ""
    lines: tuple[str, ...] = ()
    optional: bool = False


@dataclass(frozen=True)
class TaskBank:
    body: tuple[BodyPart, ...]
    instructions: dict[str, tuple[str, ...]]
    cues: dict[str, tuple[str, ...]] = field(default_factory=dict)
    fixed_option_count: bool = False

    def instructions_for(self, fmt: AnswerFormat) -> tuple[str, ...]:
        for f in _INSTRUCTION_FALLBACK[fmt]:
            if self.instructions.get(f.value):
                return self.instructions[f.value]
        return next(iter(self.instructions.values()))


@lru_cache(maxsize=1)
def load_bank() -> dict[str, Any]:
    """The parsed phrasings.yaml shipped with the package."""
    text = resources.files("flexpaft").joinpath("data/phrasings.yaml").read_text("utf-8")
    return load_yaml(text, "phrasings.yaml")


def escape_literal(text: str) -> str:
    """Plain text -> template text that renders as itself (braces doubled)."""
    return text.replace("{", "{{").replace("}", "}}")


def task_bank(task: TaskSpec) -> TaskBank:
    """The bank entry for ``task``; a generic one built from its fields when it has none."""
    raw = load_bank()["tasks"].get(task.name)
    # A user task that reuses a built-in name but has other fields must not get that bank.
    if raw and all(p["slot"] in task.slots for p in raw["body"]):
        return TaskBank(
            body=tuple(_body_part(p) for p in raw["body"]),
            instructions={k: tuple(v) for k, v in raw["instructions"].items()},
            cues={k: tuple(v) for k, v in raw.get("cues", {}).items()},
            fixed_option_count=bool(raw.get("fixed_option_count", False)),
        )
    return _generic_bank(task)


def _body_part(raw: dict[str, Any]) -> BodyPart:
    return BodyPart(
        slot=raw["slot"],
        labels=tuple(raw.get("labels", ("",))),
        suffix=raw.get("suffix", ""),
        lines=tuple(raw.get("lines", ())),
        optional=bool(raw.get("optional", False)),
    )


def _generic_bank(task: TaskSpec) -> TaskBank:
    option_fields = set(task.options) if isinstance(task.options, tuple) else set()
    shown = [f for f in task.required] + [
        f for f in task.fields if f not in task.required and f not in option_fields
    ]
    body = []
    for f in dict.fromkeys(shown):
        label = f.replace("_", " ").replace(".", " ").strip().capitalize()
        body.append(BodyPart(slot=f, labels=(label, label.upper(), "")))
    description = escape_literal(task.description.strip()) or "Answer the question."
    instructions = {
        fmt: tuple(s.replace("{description}", description) for s in texts)
        for fmt, texts in load_bank()["generic"]["instructions"].items()
    }
    return TaskBank(body=tuple(body), instructions=instructions)


def enumeration_slots(task: TaskSpec, bank: TaskBank | None = None) -> list[list[str]] | None:
    """Per-option slot names a template may use to list the options itself, or None.

    None means "use ``{options}``": the task's options are fixed words (yes/no) or a list whose
    length varies between examples (ARC has 3 to 5 choices), so per-option slots would render
    empty options. Each inner list holds the synonyms for one option (``A``, ``sol1`` ...).
    """
    if task.fixed_options or not task.option_slots:
        return None
    if not isinstance(task.options, tuple):
        bank = bank or task_bank(task)
        if not bank.fixed_option_count:
            return None
    return [task.option_synonyms(i) for i in range(len(task.option_slots))]
