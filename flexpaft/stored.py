"""Checks for state flexpaft reads back from disk: its own files, torn, foreign or hand-edited.

A file flexpaft wrote earlier is still input: a crash, a full disk or an editor can leave
anything in it. Each reader here checks types and ranges before the values are used, and a
mismatch is one line, ``<path> is damaged: <what>: <what to do>``, never a traceback and never
a value taken on trust (a resume at step -5, an accuracy of "high").
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from flexpaft.errors import FlexpaftError, short_repr


def damaged(path: str | Path, what: str, remedy: str) -> FlexpaftError:
    return FlexpaftError(f"{path} is damaged: {what}: {remedy}")


def read_json_object(path: Path, remedy: str) -> dict[str, Any]:
    """The JSON object in ``path``; anything else (torn, binary, a list) is ``damaged``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise damaged(path, f"not UTF-8 text (byte {e.start})", remedy) from None
    except ValueError as e:
        raise damaged(path, f"invalid JSON ({e})", remedy) from None
    if not isinstance(data, dict):
        raise damaged(path, f"not a JSON object ({short_repr(data, 40)})", remedy)
    return data


def read_jsonl_objects(path: Path, remedy: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for every line of an append-only JSONL file. A line that is not
    JSON at all is skipped: a process killed mid-append leaves one, and the next append runs
    on. A line that is JSON but not an object was never written by flexpaft: ``damaged``."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise damaged(path, f"not UTF-8 text (byte {e.start})", remedy) from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if not isinstance(row, dict):
            raise damaged(path, f"line {n} is not a JSON object ({short_repr(row, 40)})", remedy)
        rows.append((n, row))
    return rows


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _is_count(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def check_template_result(d: Any) -> str | None:
    """What is wrong with one stored per-template result (results.json's ``per_template``
    entries, partial.jsonl's ``result``), or None when it can be trusted."""
    from flexpaft.evaluation.evaluator import TemplateResult

    if not isinstance(d, dict):
        return f"a result is {short_repr(d, 40)}, not an object"
    known = set(TemplateResult.__dataclass_fields__)
    required = {"id", "text", "accuracy", "n", "correct", "predictions"}
    if missing := sorted(required - set(d)):
        return f"a result has no {missing[0]}"
    if extra := sorted(set(d) - known):
        return f"a result has an unknown field {short_repr(extra[0], 40)}"
    if not isinstance(d["id"], str) or not isinstance(d["text"], str):
        return "a result's id or text is not text"
    if not _is_count(d["n"]):
        return f"n is {short_repr(d['n'], 40)}, not a count"
    if not _is_number(d["accuracy"]) or not 0 <= d["accuracy"] <= 1:
        return f"accuracy is {short_repr(d['accuracy'], 40)}, not between 0 and 1"
    correct, predictions = d["correct"], d["predictions"]
    if not isinstance(correct, list) or any(
        c not in (0, 1) or isinstance(c, float) for c in correct
    ):
        return "correct is not a list of 0 and 1"
    if not isinstance(predictions, list) or not all(
        isinstance(p, int) and not isinstance(p, bool) for p in predictions
    ):
        return "predictions is not a list of integers"
    if len(correct) != d["n"] or len(predictions) != d["n"]:
        return f"n is {d['n']} but {len(correct)} correct and {len(predictions)} predictions"
    for k in ("answered", "mean_generated_tokens", "seconds_per_example"):
        if d.get(k) is not None and not _is_number(d[k]):
            return f"{k} is {short_repr(d[k], 40)}, not a number"
    return None


ADAPTER_INFO = "flexpaft_adapter.json"


def read_adapter_info(adapter: str | Path) -> dict[str, Any] | None:
    """The ``flexpaft_adapter.json`` of a trained adapter (None for a plain PEFT adapter), with
    the fields evaluation relies on checked: ``base_fingerprint`` (which base model) and
    ``chat_template`` (which prompt format the adapter learned)."""
    path = Path(adapter) / ADAPTER_INFO
    if not path.is_file():
        return None
    remedy = "restore the adapter from its training run"
    info = read_json_object(path, remedy)
    fp = info.get("base_fingerprint")
    if fp is not None and not isinstance(fp, dict):
        raise damaged(path, f"base_fingerprint is {short_repr(fp, 40)}, not an object", remedy)
    chat = info.get("chat_template")
    if chat and not (
        isinstance(chat, dict)
        and isinstance(chat.get("setting"), str)
        and isinstance(chat.get("applied"), bool)
        and isinstance(chat.get("digest"), str)
    ):
        raise damaged(
            path, f"chat_template is {short_repr(chat, 60)}, not flexpaft's record", remedy
        )
    return info
