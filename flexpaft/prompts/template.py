"""Prompt templates with named slots, validated and rendered without evaluating any code.

Syntax is ``str.format``'s subset that is safe: ``{slot}`` where slot is a plain identifier, and
``{{`` / ``}}`` for literal braces. Attribute or index access (``{x.__class__}``, ``{x[0]}``),
conversions (``{x!r}``) and format specs (``{x:>10}``) are rejected, because ``str.format`` on
user text would otherwise reach into Python objects.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

from flexpaft.errors import FlexpaftError
from flexpaft.tasks.spec import AnswerFormat, TaskSpec

MAX_TEMPLATE_CHARS = 4000
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class TemplateError(FlexpaftError):
    """A template that cannot be used; the message says precisely why."""


def parse_template(text: str) -> list[tuple[str, str | None]]:
    """Split ``text`` into (literal, slot-or-None) pieces; raise TemplateError on bad syntax."""
    pieces: list[tuple[str, str | None]] = []
    literal: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "{":
            if i + 1 < n and text[i + 1] == "{":
                literal.append("{")
                i += 2
                continue
            close = text.find("}", i + 1)
            nested = text.find("{", i + 1)
            if close == -1 or (nested != -1 and nested < close):
                raise TemplateError(f"unbalanced braces: '{{' at character {i} is never closed")
            name = text[i + 1 : close]
            if not name.strip():
                raise TemplateError(f"empty slot '{{}}' at character {i}")
            if not _IDENT.match(name):
                raise TemplateError(
                    f"slot {{{name}}} at character {i} is not a plain name "
                    "(attribute/index access, conversions and format specs are not allowed)"
                )
            pieces.append(("".join(literal), name))
            literal = []
            i = close + 1
        elif c == "}":
            if i + 1 < n and text[i + 1] == "}":
                literal.append("}")
                i += 2
                continue
            raise TemplateError(f"unbalanced braces: '}}' at character {i} has no opening '{{'")
        else:
            literal.append(c)
            i += 1
    if literal:
        pieces.append(("".join(literal), None))
    return pieces


@dataclass(frozen=True)
class Template:
    """One prompt wording; ``text`` holds ``{slot}`` placeholders for an example's fields."""

    text: str
    id: str = ""

    @cached_property
    def pieces(self) -> list[tuple[str, str | None]]:
        return parse_template(self.text)

    @property
    def slots(self) -> list[str]:
        """Slot names in order of appearance (repeats kept)."""
        return [s for _, s in self.pieces if s is not None]

    def problems(self, task: TaskSpec | None = None, fmt: AnswerFormat | None = None) -> list[str]:
        """Everything wrong with this template for ``task`` in format ``fmt`` (empty = usable)."""
        if not self.text.strip():
            return ["template is empty"]
        if len(self.text) > MAX_TEMPLATE_CHARS:
            return [f"template is too long ({len(self.text)} > {MAX_TEMPLATE_CHARS} characters)"]
        try:
            slots = self.slots
        except TemplateError as e:
            return [str(e)]
        if not slots:
            return ["template has no slots, so it cannot show the example"]
        if task is not None:
            return task.slot_problems(slots, fmt or task.default_format)
        return []

    def validate(self, task: TaskSpec | None = None, fmt: AnswerFormat | None = None) -> Template:
        problems = self.problems(task, fmt)
        if problems:
            label = f"template {self.id}" if self.id else "template"
            raise TemplateError(f"{label}: {'; '.join(problems)}")
        return self

    def render(self, values: dict[str, str]) -> str:
        """Substitute slots by plain string lookup; a missing value is an error, never code."""
        out = []
        for literal, slot in self.pieces:
            out.append(literal)
            if slot is not None:
                if slot not in values:
                    raise TemplateError(
                        f"template {self.id or ''} uses {{{slot}}}, which the example lacks"
                    )
                out.append(values[slot])
        return "".join(out)

    def render_split(self, values: dict[str, str], slot: str) -> tuple[str, str]:
        """Render, cut where ``{slot}`` starts: (prefix, rest). Without the slot, rest is ''."""
        full = self.render(values)
        prefix = []
        for literal, s in self.pieces:
            prefix.append(literal)
            if s == slot:
                head = "".join(prefix)
                return head, full[len(head) :]
            if s is not None:
                prefix.append(values[s])
        return full, ""
