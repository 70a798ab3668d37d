"""BIG-bench JSON tasks as a data source, fetched through PyPI.

BIG-bench's task files ship inside the ``bigbench==1.0.0`` source archive on PyPI, which pip can
reach where the Hugging Face hub cannot. The archive is large (~360 MB), so it is read as a
stream, only the requested ``task.json`` is kept, and the archive is deleted afterwards. Set
``FLEXPAFT_BIGBENCH_ARCHIVE`` to an already-downloaded ``bigbench-1.0.0.tar.gz`` to skip pip.

Multiple-choice examples (``{"input": ..., "target_scores": {option: score}}``) are normalized to
records ``{"input": ..., "choices": [...], "label": gold_index}``. ``input`` is the example's own
text, stripped of surrounding whitespace; BIG-bench's ``task_prefix`` / ``example_input_prefix``
are prompt wording, not data, so they go into the task's default templates instead, where a
prompt set can replace them. When every example has the same option set (plausible/implausible,
True/False), the task gets ``fixed_options`` and lowercase ``label_words``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from flexpaft.errors import FlexpaftError
from flexpaft.io import atomic_write_text
from flexpaft.tasks.spec import AnswerFormat, TaskSpec

PACKAGE = "bigbench==1.0.0"
ARCHIVE_ENV = "FLEXPAFT_BIGBENCH_ARCHIVE"
PREFIX = "bigbench:"
# Task names are directory names under benchmark_tasks/ (subtasks as ``task/subtask``); the
# pattern also keeps a name from escaping the cache directory.
_NAME = re.compile(r"[A-Za-z0-9_\-]+(/[A-Za-z0-9_\-]+)*\Z")


def _task_name(name: str) -> str:
    name = name.removeprefix(PREFIX).strip().strip("/")
    if not _NAME.match(name):
        raise FlexpaftError(
            f"invalid BIG-bench task name {name!r} (use a directory name such as "
            "sports_understanding, or task/subtask)"
        )
    return name


def _cache_root(cache_dir: Path | None) -> Path:
    if cache_dir is None:
        from flexpaft.paths import cache_dir as default_cache_dir

        cache_dir = default_cache_dir()
    return Path(cache_dir) / "bigbench"


def fetch_bigbench_task(task: str, cache_dir: Path | None = None) -> Path:
    """Path of the cached ``<cache>/bigbench/<task>.json``, fetching it from PyPI if missing."""
    task = _task_name(task)
    target = _cache_root(cache_dir) / f"{task}.json"
    if target.is_file():
        return target
    archive = os.environ.get(ARCHIVE_ENV)
    if not archive:
        check_known_task(task)
    if archive:
        path = Path(archive).expanduser()
        if not path.is_file():
            raise FlexpaftError(f"{ARCHIVE_ENV} points to {path}, which is not a file")
        text = _read_task_json(path, task)
    else:
        # The download goes next to the cache so that a small /tmp does not have to hold it.
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".download-", dir=target.parent) as tmp:
            text = _read_task_json(_download_archive(Path(tmp)), task)
        # Leaving the block deletes the archive.
    atomic_write_text(target, text)
    return target


def check_known_task(task: str) -> None:
    """Refuse a name that is not a BIG-bench JSON task before the archive is downloaded."""
    import difflib

    from flexpaft.tasks.bigbench_names import JSON_TASKS

    top = task.split("/", 1)[0]
    if top in JSON_TASKS:
        return
    close = difflib.get_close_matches(top, sorted(JSON_TASKS), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise FlexpaftError(
        f"unknown BIG-bench task {top!r} ({hint}the JSON tasks are directory names such as "
        f"sports_understanding; for a task of another BIG-bench version, set {ARCHIVE_ENV} "
        "to its archive)"
    )


def _download_archive(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
    cmd += ["--disable-pip-version-check", "-d", str(dest), PACKAGE]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        raise FlexpaftError(f"cannot run pip to download {PACKAGE}: {e}") from None
    archives = sorted(dest.glob("bigbench-*.tar.gz"))
    if proc.returncode != 0 or not archives:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("ERROR")]
        why = (errors or lines or ["no archive was downloaded"])[-1]
        # PyPI stopped serving the 1.0.0 source archive in 2026; the demo no longer needs it.
        raise FlexpaftError(
            f"pip could not download {PACKAGE} ({why}): BIG-bench tasks need that source "
            f"archive; set {ARCHIVE_ENV} to a local bigbench-1.0.0.tar.gz, or use a task that "
            "ships with flexpaft (snips, the demo's default) or your own task file"
        )
    return archives[0]


def _read_task_json(archive: Path, task: str) -> str:
    """The text of ``*/bigbench/benchmark_tasks/<task>/task.json`` in ``archive``."""
    wanted = f"bigbench/benchmark_tasks/{task}/task.json"
    try:
        # "r|gz" reads the archive as one forward stream: nothing else is extracted or held,
        # and the scan stops at the wanted member.
        with tarfile.open(archive, "r|gz") as tf:
            for member in tf:
                # Members are "bigbench-1.0.0/bigbench/benchmark_tasks/...": drop the top dir.
                if member.isfile() and member.name.partition("/")[2] == wanted:
                    f = tf.extractfile(member)
                    if f is None:
                        break
                    return f.read().decode("utf-8")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise FlexpaftError(f"cannot read BIG-bench archive {archive}: {e}") from None
    except UnicodeDecodeError:
        raise FlexpaftError(f"BIG-bench task {task}: task.json is not UTF-8 text") from None
    raise FlexpaftError(
        f"BIG-bench task {task!r} has no task.json in {archive.name} "
        "(only JSON tasks are supported; subtasks are named task/subtask)"
    )


# ---- task.json -> records and spec -----------------------------------------------------------
def _load_task_json(name: str) -> dict[str, Any]:
    path = fetch_bigbench_task(name)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FlexpaftError(f"cannot read cached BIG-bench task {path}: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("examples"), list):
        raise FlexpaftError(f"BIG-bench task {name}: {path} has no examples list")
    return data


def _raw_examples(name: str, data: dict[str, Any]) -> list[tuple[str, dict[str, float]]]:
    """(input, target_scores) of every multiple-choice example with a best option."""
    out = []
    for ex in data["examples"]:
        scores = ex.get("target_scores") if isinstance(ex, dict) else None
        if not isinstance(scores, dict) or not scores or not isinstance(ex.get("input"), str):
            continue  # generative-only examples have "target" but nothing to choose from
        try:
            numeric = {str(k): float(v) for k, v in scores.items()}
        except (TypeError, ValueError):
            continue
        if max(numeric.values()) <= 0:
            continue  # no option is marked right
        out.append((ex["input"], numeric))
    if not out:
        raise FlexpaftError(
            f"BIG-bench task {name} has no multiple-choice examples (target_scores); "
            "generative tasks are not supported"
        )
    return out


def _fixed_options(examples: list[tuple[str, dict[str, float]]]) -> tuple[str, ...]:
    """The shared option set in the first example's order, or () when examples differ."""
    first = tuple(examples[0][1])
    keys = set(first)
    if len(first) < 2 or any(set(s) != keys for _, s in examples):
        return ()
    # Label words must tell the options apart after lowercasing and cannot be empty.
    words = [o.strip().lower() for o in first]
    if "" in words or len(set(words)) != len(words):
        return ()
    return first


def _records(name: str, data: dict[str, Any]) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
    examples = _raw_examples(name, data)
    fixed = _fixed_options(examples)
    records = []
    for text, scores in examples:
        choices = list(fixed) if fixed else list(scores)
        best = max(scores.values())
        # The first option with the top score is gold, as BIG-bench's multiple_choice_grade
        # counts any top-scored option right.
        label = next(i for i, c in enumerate(choices) if scores[c] == best)
        records.append({"input": text.strip(), "choices": choices, "label": label})
    return records, fixed


def load_bigbench_records(name: str) -> list[dict[str, Any]]:
    """Records ``{"input", "choices", "label"}`` of BIG-bench task ``name``, in file order."""
    name = _task_name(name)
    return _records(name, _load_task_json(name))[0]


def bigbench_records_path(name: str) -> Path:
    """A cached jsonl of ``load_bigbench_records(name)``, for readers that take a data file."""
    name = _task_name(name)
    task_json = fetch_bigbench_task(name)
    path = task_json.with_name(f"{task_json.name.removesuffix('.json')}.records.jsonl")
    if path.is_file():
        return path
    records = load_bigbench_records(name)
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _escape(text: str) -> str:
    """Literal text for a template: braces doubled so they are not read as slots."""
    return text.replace("{", "{{").replace("}", "}}")


def bigbench_task(name: str) -> TaskSpec:
    """The TaskSpec of BIG-bench JSON task ``name`` (fetched and cached on first use)."""
    name = _task_name(name)
    data = _load_task_json(name)
    _, fixed = _records(name, data)
    # BIG-bench's own instruction and input label start the default prompts; its output prefix
    # ("Plausible/implausible? ") is replaced by "Answer:" so every format ends the same way.
    head = _one_line(data.get("task_prefix") or "")
    label = _one_line(data.get("example_input_prefix") or "")
    lead = (_escape(head) + "\n" if head else "") + (_escape(label) + " " if label else "")
    question = lead + "{input}"
    description = head or _one_line(data.get("description") or "") or f"BIG-bench task {name}."
    if fixed:
        words = tuple(o.strip().lower() for o in fixed)
        formats = (
            AnswerFormat.LABEL_WORDS,
            AnswerFormat.LETTER,
            AnswerFormat.OPTION_TEXT,
            AnswerFormat.GENERATION,
        )
        default = AnswerFormat.LABEL_WORDS
        templates = {
            "label_words": question + "\nAnswer:",
            "letter": question + "\n{options}\nAnswer:",
            "option_text": question + "\nAnswer:",
            "generation": question + "\nAnswer with {label_words}.\nAnswer:",
        }
    else:
        words = ()
        formats = (AnswerFormat.OPTION_TEXT, AnswerFormat.LETTER, AnswerFormat.GENERATION)
        default = AnswerFormat.OPTION_TEXT
        templates = {
            "option_text": question + "\nAnswer:",
            "letter": question + "\n{options}\nAnswer:",
            "generation": question + "\n{options}\nAnswer:",
        }
    return TaskSpec(
        name=PREFIX + name,
        description=description,
        fields=("input",),
        required=("input",),
        options="choices",
        gold="label",
        gold_kind="index",
        label_words=words,
        fixed_options=tuple(fixed),
        formats=formats,
        default_format=default,
        templates=templates,
        hf_path="",
    )
