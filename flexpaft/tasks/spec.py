"""Task specifications: which fields a template may use, the choices, the gold answer, the format.

A task is declared as data (``TaskSpec``), not code, so a user can describe their own dataset in
YAML with the same keys the built-in tasks use. ``TaskSpec.normalize`` turns one raw record in the
dataset's own schema into an ``Example``: the slot values a template sees, the option texts and the
index of the gold option.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from flexpaft.errors import FlexpaftError
from flexpaft.tasks.records import GOLD_KINDS, LETTERS, Example, RecordError, normalize_record

# Imported from here by the rest of flexpaft (the records module is the spec's own detail).
__all__ = [
    "GOLD_KINDS",
    "LETTERS",
    "OPTION_SLOT",
    "AnswerFormat",
    "Example",
    "RecordError",
    "TaskSpec",
]


class AnswerFormat(str, Enum):
    """How the answer is written after the prompt and how it is scored."""

    LETTER = "letter"  # options enumerated in the template; answer " A" / " B" ...
    LABEL_WORDS = "label_words"  # a verbalizer: answer " yes" / " no"
    OPTION_TEXT = "option_text"  # cloze: each option's text is scored as the continuation
    GENERATION = "generation"  # free text is generated; the answer is extracted from it

    @classmethod
    def parse(cls, value: str | AnswerFormat) -> AnswerFormat:
        try:
            return cls(value)
        except ValueError:
            raise FlexpaftError(
                f"unknown answer format {value!r} (choose from {', '.join(f.value for f in cls)})"
            ) from None


# Slots every task offers, derived from its options (see TaskSpec.normalize).
GENERIC_SLOTS = ("options", "option_letters", "label_words")
# Task keys that hold a list of strings in YAML.
LIST_KEYS = ("fields", "required", "option_slots", "label_words", "fixed_options", "formats")
STRING_KEYS = (
    "name",
    "description",
    "gold",
    "gold_kind",
    "option_labels",
    "blank_field",
    "default_format",
    "hf_path",
    "hf_name",
    "hf_split",
    "hf_train_split",
)
# In option_text format this slot marks where each option's text goes; the scored continuation
# runs from there to the end of the rendered text (appended after the prompt when absent).
OPTION_SLOT = "option"


@dataclass(frozen=True)
class TaskSpec:
    name: str = field(metadata={"help": "Task name used on the command line."})
    description: str = field(
        default="", metadata={"help": "One sentence describing the task (used in meta-prompts)."}
    )
    fields: tuple[str, ...] = field(
        default=(), metadata={"help": "Dataset fields that templates may use as slots."}
    )
    required: tuple[str, ...] = field(
        default=(), metadata={"help": "Slots every template must contain (the question itself)."}
    )
    options: tuple[str, ...] | str = field(
        default=(),
        metadata={
            "help": "Option texts: a list of fields (sol1, sol2) or one field holding a list "
            "(endings, choices.text)."
        },
    )
    option_slots: tuple[str, ...] = field(
        default=(),
        metadata={"help": "Names templates use for the individual options (A..D, sol1/sol2)."},
    )
    gold: str = field(default="label", metadata={"help": "Field holding the gold answer."})
    gold_kind: str = field(
        default="index",
        metadata={
            "help": "How to read the gold field: index (0-based), one_based, letter (A..), "
            "bool (true = first option), option_label (match against option_labels), text."
        },
    )
    option_labels: str = field(
        default="", metadata={"help": "Field holding per-option labels (choices.label)."}
    )
    label_words: tuple[str, ...] = field(
        default=(),
        metadata={"help": "Verbalizer: one answer word per option (label_words format)."},
    )
    fixed_options: tuple[str, ...] = field(
        default=(), metadata={"help": "Options that are the same for every example (yes/no)."}
    )
    aliases: dict[str, str] = field(
        default_factory=dict,
        metadata={"help": "Extra slot names mapped to fields (prompt -> sentence)."},
    )
    blank_field: str = field(
        default="",
        metadata={"help": "Field with a '_' blank, split into before_blank / after_blank slots."},
    )
    formats: tuple[AnswerFormat, ...] = field(
        default=(AnswerFormat.LETTER, AnswerFormat.OPTION_TEXT, AnswerFormat.GENERATION),
        metadata={"help": "Answer formats this task supports."},
    )
    default_format: AnswerFormat = field(
        default=AnswerFormat.LETTER, metadata={"help": "Answer format used when none is given."}
    )
    templates: dict[str, str] = field(
        default_factory=dict,
        metadata={"help": "A human-written default template per answer format."},
    )
    hf_path: str = field(default="", metadata={"help": "Hugging Face dataset id."})
    hf_name: str = field(default="", metadata={"help": "Hugging Face dataset config name."})
    hf_split: str = field(
        default="validation",
        metadata={"help": "Evaluation split (the one lm-evaluation-harness scores)."},
    )
    hf_train_split: str = field(
        default="train", metadata={"help": "Training split (never the evaluation split)."}
    )
    packaged_data: dict[str, str] = field(
        default_factory=dict,
        metadata={
            "help": "Data shipped inside the flexpaft package, by split name (train/test): file "
            "names under flexpaft/data/, read when no data.source is given (built-in tasks only)."
        },
    )

    # ---- slots ---------------------------------------------------------------------------
    @property
    def slots(self) -> tuple[str, ...]:
        """Every slot name a template of this task may use."""
        names = (
            list(self.fields) + list(self.option_slots) + list(self.aliases) + list(GENERIC_SLOTS)
        )
        if self.blank_field:
            names += ["before_blank", "after_blank"]
        return tuple(dict.fromkeys(names))

    def slot_problems(self, used: list[str], fmt: AnswerFormat) -> list[str]:
        """Why a template using slots ``used`` cannot serve this task in format ``fmt``."""
        problems = []
        allowed = set(self.slots) | ({OPTION_SLOT} if fmt is AnswerFormat.OPTION_TEXT else set())
        for s in dict.fromkeys(used):
            if s not in allowed:
                problems.append(
                    f"slot {{{s}}} is not a field of task {self.name} "
                    f"(fields: {', '.join(sorted(allowed))})"
                )
        names = set(used)
        for r in self.required:
            # A required field is satisfied by itself or any alias that maps to it.
            synonyms = {r} | {a for a, f in self.aliases.items() if f == r}
            if self.blank_field == r:
                synonyms |= {"before_blank", "after_blank"}
            if not names & synonyms:
                problems.append(f"required slot {{{r}}} is missing")
        if fmt is AnswerFormat.LETTER and not self.fixed_options:
            if "options" not in names:
                per_option = [self.option_synonyms(i) for i in range(len(self.option_slots))]
                missing = [syn[0] for syn in per_option if not names & set(syn)]
                if not self.option_slots or missing:
                    what = ", ".join("{" + m + "}" for m in missing) or "{options}"
                    problems.append(f"letter format needs the options: add {{options}} or {what}")
        if fmt is AnswerFormat.OPTION_TEXT and self.option_slots and names & set(self.option_slots):
            pass  # showing the options in a cloze prompt is allowed
        return problems

    def option_synonyms(self, i: int) -> list[str]:
        slot = self.option_slots[i]
        syn = [slot]
        target = (
            self.options[i] if isinstance(self.options, tuple) and i < len(self.options) else None
        )
        syn += [a for a, f in self.aliases.items() if f in (slot, target)]
        if target:
            syn.append(target)
        return syn

    # ---- records -> examples -------------------------------------------------------------
    def normalize(self, record: dict[str, Any], uid: str = "") -> Example:
        """Raw dataset record -> Example; a malformed record raises ``RecordError``
        (``flexpaft.tasks.records``: nothing is coerced silently)."""
        return normalize_record(self, record, uid)

    # ---- answers -------------------------------------------------------------------------
    def answer_strings(self, example: Example, fmt: AnswerFormat) -> list[str]:
        """The text each option is answered with after the prompt, in option order."""
        if fmt is AnswerFormat.LETTER:
            return [LETTERS[i] for i in range(len(example.options))]
        if fmt is AnswerFormat.LABEL_WORDS:
            if not self.label_words:
                raise FlexpaftError(
                    f"task {self.name} has no label words: set label_words (one answer word per "
                    "option) in the task, or use another format"
                )
            return list(self.label_words)
        if fmt is AnswerFormat.GENERATION:
            return list(self.label_words) if self.label_words else list(example.options)
        return list(example.options)

    def check_format(self, fmt: AnswerFormat) -> None:
        if fmt not in self.formats:
            raise FlexpaftError(
                f"task {self.name} does not support the {fmt.value} format "
                f"(supported: {', '.join(f.value for f in self.formats)}; a task YAML lists "
                "its formats under formats:)"
            )

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> TaskSpec:
        """Build a spec from YAML-style data (lists become tuples, formats are parsed)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise FlexpaftError(
                f"unknown task key {unknown[0]!r} (known: {', '.join(sorted(known))})"
            )
        if "name" not in data:
            raise FlexpaftError("a task definition needs a name")
        _check_types(data)
        d = dict(data)
        for key in ("fields", "required", "option_slots", "label_words", "fixed_options"):
            if key in d:
                d[key] = tuple(d[key])
        if isinstance(d.get("options"), list):
            d["options"] = tuple(d["options"])
        if "formats" in d:
            d["formats"] = tuple(AnswerFormat.parse(f) for f in d["formats"])
        if "formats" not in d and d.get("label_words"):
            # A classification task given its label words means them: scoring one word per
            # class, with templates that say which words, not letters A/B/C nobody defined.
            d["formats"] = (
                AnswerFormat.LABEL_WORDS,
                AnswerFormat.LETTER,
                AnswerFormat.OPTION_TEXT,
                AnswerFormat.GENERATION,
            )
        if "default_format" in d:
            d["default_format"] = AnswerFormat.parse(d["default_format"])
        elif d.get("formats"):
            # A task listing only [label_words] means that format, not the class default (letter).
            d["default_format"] = d["formats"][0]
        spec = cls(**d)
        spec.check_definition()
        return spec

    def check_definition(self) -> None:
        """A task definition whose keys contradict each other fails here, naming the key that
        fixes it, not at the first data row or the first template."""
        where = f"task {self.name}"
        if self.gold_kind not in GOLD_KINDS:
            raise FlexpaftError(
                f"{where}: gold_kind {self.gold_kind!r} is not one of {', '.join(GOLD_KINDS)}"
            )
        if self.default_format not in self.formats:
            raise FlexpaftError(
                f"{where}: default_format {self.default_format.value} is not among formats "
                f"({', '.join(f.value for f in self.formats)}); add it to formats"
            )
        if AnswerFormat.LABEL_WORDS in self.formats and not self.label_words:
            raise FlexpaftError(
                f"{where}: the label_words format needs label_words, one answer word per option "
                "(e.g. label_words: [weather, music]), or drop label_words from formats"
            )
        if self.label_words and self.fixed_options:
            if len(self.label_words) != len(self.fixed_options):
                raise FlexpaftError(
                    f"{where}: {len(self.label_words)} label_words for "
                    f"{len(self.fixed_options)} fixed_options; give one word per option"
                )
        if not self.fixed_options and not self.options:
            raise FlexpaftError(
                f"{where} has no options: set fixed_options (the same choices for every example, "
                "e.g. the labels) or options (the fields holding each example's choices)"
            )
        if self.gold_kind == "option_label" and not self.option_labels:
            raise FlexpaftError(
                f"{where}: gold_kind option_label needs option_labels, the field holding "
                "each option's label"
            )
        for r in self.required:
            if r not in self.fields and r != self.blank_field and r not in self.aliases:
                raise FlexpaftError(
                    f"{where}: required slot {r!r} is not in fields ({', '.join(self.fields)}); "
                    "add it to fields"
                )
        for key in self.templates:
            if key not in {f.value for f in AnswerFormat}:
                raise FlexpaftError(
                    f"{where}: templates key {key!r} is not an answer format "
                    f"({', '.join(f.value for f in AnswerFormat)})"
                )


def _check_types(data: dict[str, Any]) -> None:
    """Each key of a task YAML holds what it should; YAML's own readings (``fields: text`` is a
    string, ``[yes, no]`` are booleans) would otherwise surface much later as odd slots."""
    name = data.get("name")
    where = f"task {name}" if isinstance(name, str) else "task definition"
    for key in STRING_KEYS:
        if key in data and not isinstance(data[key], str):
            raise FlexpaftError(f"{where}: {key} must be a string, got {data[key]!r:.60}")
    for key in LIST_KEYS:
        if key not in data:
            continue
        value = data[key]
        if not isinstance(value, list):
            raise FlexpaftError(
                f"{where}: {key} must be a list (YAML: {key}: [a, b]), got {value!r:.60}"
            )
        for i, item in enumerate(value):
            if isinstance(item, bool):
                raise FlexpaftError(
                    f"{where}: {key}[{i}] is {str(item).lower()}: YAML reads yes/no/on/off as "
                    "true/false, so quote the word ('yes')"
                )
            if not isinstance(item, str):
                raise FlexpaftError(f"{where}: {key}[{i}] must be a string, got {item!r:.60}")
    options = data.get("options")
    if options is not None and not (
        isinstance(options, str)
        or (isinstance(options, list) and all(isinstance(o, str) for o in options))
    ):
        raise FlexpaftError(
            f"{where}: options must be a field name holding a list, or a list of field names, "
            f"got {options!r:.60}"
        )
    for key in ("templates", "aliases"):
        value = data.get(key)
        if value is not None and not (
            isinstance(value, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
        ):
            raise FlexpaftError(
                f"{where}: {key} must be a mapping of names to strings, got {value!r:.60}"
            )
