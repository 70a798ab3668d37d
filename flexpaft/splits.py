"""Keeping training and evaluation data apart, by content rather than by trust.

A trained adapter carries the content hashes of its training examples (``train_hashes.txt``:
one 64-bit hex hash per line, sorted); ``flexpaft eval`` hashes its own examples the same way and
refuses to score an adapter on examples it was trained on, unless told the overlap is intended.
Hashes cover an example's text (fields and options), not its label or position, so the same
question read from another file, split or shuffle is still recognised.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from pathlib import Path

from flexpaft.errors import FlexpaftError, short_repr
from flexpaft.io import atomic_write_text
from flexpaft.stored import damaged
from flexpaft.tasks.spec import Example, TaskSpec

TRAIN_HASHES = "train_hashes.txt"
_HASH = re.compile(r"[0-9a-f]{16}")


def example_hash(example: Example) -> str:
    text = json.dumps([example.fields, example.options], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_hashes(path: str | Path, examples: Iterable[Example]) -> int:
    hashes = sorted({example_hash(e) for e in examples})
    atomic_write_text(path, "".join(h + "\n" for h in hashes))
    return len(hashes)


def read_hashes(path: str | Path) -> set[str]:
    p = Path(path)
    if not p.is_file():
        return set()
    # Checked, not trusted: a damaged file would otherwise turn the overlap check off quietly
    # (no hash matches) or end in a UnicodeDecodeError traceback.
    remedy = (
        "restore it from the training run, or delete it (which turns the overlap check off "
        "for this adapter)"
    )
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise damaged(p, f"not text (byte {e.start})", remedy) from None
    hashes = set()
    for n, line in enumerate(lines, 1):
        h = line.strip()
        if h and not _HASH.fullmatch(h):
            raise damaged(p, f"line {n} is not a 16-digit hex hash ({short_repr(h, 40)})", remedy)
        if h:
            hashes.add(h)
    return hashes


def check_disjoint(adapter_dir: str | Path, examples: list[Example], allow: bool) -> int:
    """Number of ``examples`` the adapter was trained on; an error unless ``allow``."""
    trained = read_hashes(Path(adapter_dir) / TRAIN_HASHES)
    if not trained:
        return 0
    shared = sum(example_hash(e) in trained for e in examples)
    if shared and not allow:
        raise FlexpaftError(
            f"{shared} of {len(examples)} evaluation examples were in the training data of "
            f"{adapter_dir} (same content hash): evaluate on other examples (data.split, "
            "data.skip) or pass --allow-overlap"
        )
    return shared


def check_training_split(task: TaskSpec, source: str, split: str, allow: bool) -> None:
    """Refuse to train on the split that evaluation scores (lm-eval's and ``flexpaft eval``'s
    default), where a trained adapter would be scored on its own training examples."""
    if source or not (task.hf_path or task.packaged_data) or allow:
        return
    if split and split == task.hf_split:
        raise FlexpaftError(
            f"data.split={split} is the split {task.name} is evaluated on: train on "
            f"{task.hf_train_split!r} (the default), or pass --allow-overlap"
        )
