"""Checks for state flexpaft reads back from disk: its own files, torn, foreign or hand-edited.

A file flexpaft wrote earlier is still input: a crash, a full disk or an editor can leave
anything in it. Each reader here checks types and ranges before the values are used, and a
mismatch is one line, ``<path> is damaged: <what>: <what to do>``, never a traceback and never
a value taken on trust (a resume at step -5, an accuracy of "high").
"""

from __future__ import annotations

import json
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
