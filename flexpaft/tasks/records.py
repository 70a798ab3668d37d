"""One raw dataset record -> ``Example``: the slot values a template sees, the option texts and
the index of the gold option, read as the task's ``gold_kind`` says.

Nothing is guessed: a malformed record is a ``RecordError`` whose ``reason`` the data reader puts
after the file and row. ``TaskSpec.normalize`` is the entry point; this module sits below the
spec and reads only the keys ``TaskKeys`` names.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any, Protocol

from flexpaft.errors import FlexpaftError, short_repr

LETTERS = string.ascii_uppercase
# How ``gold_kind`` reads the gold field (``_read_gold``); docs/TASKS.md explains each.
GOLD_KINDS = ("index", "one_based", "letter", "bool", "option_label", "text")


@dataclass
class Example:
    """One task instance: what templates can show, the options and which one is right."""

    fields: dict[str, str]
    options: list[str]
    gold: int
    uid: str = ""


class TaskKeys(Protocol):
    """What reading a record uses of a task (``TaskSpec``; docs/TASKS.md explains each key)."""

    name: str
    fields: tuple[str, ...]
    required: tuple[str, ...]
    options: tuple[str, ...] | str
    option_slots: tuple[str, ...]
    gold: str
    gold_kind: str
    option_labels: str
    label_words: tuple[str, ...]
    fixed_options: tuple[str, ...]
    aliases: dict[str, str]
    blank_field: str


class RecordError(FlexpaftError):
    """One malformed data record; ``reason`` says what is wrong, without the record's place,
    so the data reader can name the file and row. ``missing`` is the field a record lacks
    (a column the file does not have), so the reader can list the columns it does have."""

    def __init__(self, task: str, uid: str, reason: str, missing: str = ""):
        super().__init__(f"task {task}: record {uid or '?'} {reason}")
        self.reason = reason
        self.missing = missing


def normalize_record(task: TaskKeys, record: dict[str, Any], uid: str = "") -> Example:
    """Raw dataset record -> Example; a malformed record raises ``RecordError``.

    Nothing is coerced silently: a missing or null field, a gold label that is not one of
    the choices (BoolQ "maybe", label 1.7) is an error, never a guessed answer.
    """
    try:
        return _normalize(task, record, uid)
    except KeyError as e:
        raise RecordError(
            task.name, uid, f"has no field {e.args[0]!r}", missing=str(e.args[0])
        ) from None
    except RecordError as e:
        raise RecordError(task.name, uid, e.reason, missing=e.missing) from None


def record_keys(task: TaskKeys) -> list[str]:
    """The top-level keys ``task`` reads from a record (for messages about rows without them)."""
    options = [task.options] if isinstance(task.options, str) else list(task.options)
    if task.fixed_options:
        options = []
    keys = [*task.fields, *options, task.gold]
    if task.gold_kind == "option_label" and task.option_labels:
        keys.append(task.option_labels)
    return list(dict.fromkeys(k.split(".")[0] for k in keys if k))


def _normalize(task: TaskKeys, record: dict[str, Any], uid: str) -> Example:
    if not isinstance(record, dict):
        raise RecordError(task.name, uid, f"is not a mapping of fields ({short_repr(record, 40)})")
    options = _read_options(task, record)
    gold = _read_gold(task, record, options)
    values: dict[str, str] = {}
    for f in task.fields:
        v = _get(record, f)
        if v is None and f in task.required:
            raise RecordError(task.name, uid, f"has an empty (null) {f!r}")
        if isinstance(v, (list, dict)):
            # str() of it would put "['a', 'b']" into the prompt; text belongs here.
            raise RecordError(
                task.name,
                uid,
                f"has {_kind(v)} in {f!r} where text belongs ({short_repr(v, 40)})",
            )
        values[f] = v if isinstance(v, str) else _to_text(v)
    if not options:
        raise RecordError(task.name, uid, "has no options")
    if not 0 <= gold < len(options):
        raise RecordError(task.name, uid, f"has gold answer outside the {len(options)} choices")
    for i, slot in enumerate(task.option_slots):
        values[slot] = options[i] if i < len(options) else ""
    for alias, target in task.aliases.items():
        values[alias] = values.get(target, "")
    if task.blank_field:
        text = values.get(task.blank_field, "")
        before, _, after = text.partition("_")
        values["before_blank"], values["after_blank"] = before.rstrip(), after
    values["options"] = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))
    letters = [LETTERS[i] for i in range(len(options))]
    values["option_letters"] = _join_or(letters)
    values["label_words"] = _join_or(list(task.label_words or options))
    return Example(fields=values, options=options, gold=gold, uid=str(uid))


def _read_options(task: TaskKeys, record: dict[str, Any]) -> list[str]:
    if task.fixed_options:
        return list(task.fixed_options)
    if isinstance(task.options, str):
        value = _get(record, task.options)
        if not isinstance(value, list):
            raise RecordError(task.name, "", f"field {task.options!r} is not a list")
        return [_option_text(v, task.options) for v in value]
    return [_option_text(_get(record, f), f) for f in task.options]


def _read_gold(task: TaskKeys, record: dict[str, Any], options: list[str]) -> int:
    raw = _get(record, task.gold)
    kind = task.gold_kind
    bad = f"has gold {task.gold!r} = {raw!r:.40}, which is not "
    if kind in ("index", "one_based"):
        if isinstance(raw, str) and raw.strip().lstrip("-").isdigit():
            raw = int(raw.strip())
        elif isinstance(raw, float) and raw.is_integer():
            raw = int(raw)
        if isinstance(raw, bool) or not isinstance(raw, int):
            hint = ""
            if isinstance(raw, str):
                # The commonest custom-task mistake: labels written out as words.
                hint = "; a gold answer written as the option's text needs gold_kind: text"
            raise RecordError(
                task.name, "", bad + f"an integer choice index (gold_kind: {kind}){hint}"
            )
        return raw if kind == "index" else raw - 1
    if kind == "letter":
        s = str(raw).strip().upper() if isinstance(raw, str) else ""
        if len(s) != 1 or s not in LETTERS:
            raise RecordError(task.name, "", bad + "a choice letter (gold_kind: letter)")
        return LETTERS.index(s)
    if kind == "bool":
        word = raw.strip().lower() if isinstance(raw, str) else raw
        # bool, 0/1 (a CSV column) or the words; 5, "maybe" and null are not answers.
        if word in (True, "true", "yes", "1"):
            return 0
        if word in (False, "false", "no", "0"):
            return 1
        raise RecordError(task.name, "", bad + "true/false")
    if kind == "option_label":
        labels = [str(x).strip() for x in _get(record, task.option_labels)]
        if raw is None or str(raw).strip() not in labels:
            raise RecordError(task.name, "", bad + f"one of the labels {labels}")
        return labels.index(str(raw).strip())
    if kind == "text":
        if str(raw) not in options:
            shown = ", ".join(map(repr, options[:10])) + (", ..." if len(options) > 10 else "")
            raise RecordError(
                task.name,
                "",
                bad + f"one of the options [{shown}] (gold_kind: text matches exactly)",
            )
        return options.index(str(raw))
    raise FlexpaftError(
        f"task {task.name}: unknown gold_kind {kind!r} (accepted: {', '.join(GOLD_KINDS)})"
    )


def _get(record: dict[str, Any], path: str) -> Any:
    """Read ``a.b`` from nested dicts; a missing key raises KeyError with the full path."""
    node: Any = record
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(path)
        node = node[part]
    return node


def _option_text(v: Any, name: str) -> str:
    if v is None:
        # datasets fills a key missing from one row with null: an empty option is garbage.
        raise RecordError("", "", f"has no option {name!r} (missing or null)")
    if isinstance(v, (list, dict)):
        raise RecordError(
            "", "", f"has {_kind(v)} as option {name!r} where text belongs ({short_repr(v, 40)})"
        )
    return _to_text(v)


def _kind(v: Any) -> str:
    return "a list" if isinstance(v, list) else "an object"


def _to_text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return "" if v is None else str(v)


def _join_or(words: list[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " or " + words[-1]
