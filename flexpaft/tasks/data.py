"""Reading task data: a Hugging Face hub dataset by name, or a local jsonl/json/csv/parquet file.

Everything goes through ``datasets.load_dataset`` so hub and local data take one code path and
the user gets datasets' caching; records are then normalized by the task spec.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from flexpaft.errors import FlexpaftError
from flexpaft.tasks.builtin import get_task
from flexpaft.tasks.spec import Example, RecordError, TaskSpec
from flexpaft.yaml_input import load_yaml

LOCAL_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def load_task(name_or_path: str) -> TaskSpec:
    """A built-in task name, ``bigbench:<task>``, or a YAML file describing a custom task."""
    p = Path(name_or_path)
    if p.suffix.lower() in (".yaml", ".yml"):
        from flexpaft.validate import check_input_file

        check_input_file(p, "task file")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise FlexpaftError(f"task file {p} is not UTF-8 text (byte {e.start})") from None
        data = load_yaml(text, f"task file {p}")
        if not isinstance(data, dict):
            raise FlexpaftError(f"task file {p} must be a mapping")
        return TaskSpec.from_mapping(data)
    return get_task(name_or_path)


def read_records(
    source: str,
    split: str | None = None,
    name: str | None = None,
    revision: str | None = None,
    task: TaskSpec | None = None,
) -> list[dict[str, Any]]:
    """Raw records from a local file or a hub dataset id (``task``, when given, lets a file
    whose rows hold no fields say which fields it needs)."""
    import datasets

    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    path = Path(source)
    suffix = path.suffix.lower()
    if suffix in LOCAL_BUILDERS or path.exists():
        if path.is_dir():
            raise FlexpaftError(f"data file {source} is a directory, not a file")
        if not path.is_file():
            raise FlexpaftError(f"data file not found: {source}")
        if suffix not in LOCAL_BUILDERS:
            raise FlexpaftError(
                f"{source}: unsupported data file type (use jsonl, json, csv or parquet)"
            )
        _check_text_file(path, suffix, task)
        try:
            ds = datasets.load_dataset(LOCAL_BUILDERS[suffix], data_files=str(path), split="train")
        except Exception as e:
            if "corresponds to no data" in str(e):
                # datasets' wording for a file whose rows have no columns at all.
                raise FlexpaftError(
                    f"data file {source} has no rows with fields{_needs(task)}"
                ) from None
            raise FlexpaftError(f"cannot read {source}: {_first_line(e)}") from None
    else:
        from flexpaft.hub_reach import hub_lookup

        with hub_lookup(f"dataset {source!r}", "set data.source to a local data file"):
            ds = datasets.load_dataset(
                source, name or None, split=split or "validation", revision=revision or None
            )
    return [dict(r) for r in ds]


def _needs(task: TaskSpec | None) -> str:
    if task is None:
        return ""
    from flexpaft.tasks.records import record_keys

    return f": task {task.name} reads the fields {', '.join(record_keys(task))}"


def _check_text_file(path: Path, suffix: str, task: TaskSpec | None = None) -> None:
    """Empty and non-UTF-8 text files get their own message (datasets says StopIteration), and
    so do rows of empty objects and JSON lines in a .csv (datasets and pandas say neither)."""
    if suffix == ".parquet":
        return
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise FlexpaftError(f"cannot read data file {path}: {e.strerror or e}") from None
    if not raw.strip():
        raise FlexpaftError(f"data file {path} is empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise FlexpaftError(f"data file {path} is not UTF-8 text (line {line})") from None
    import json

    if suffix == ".csv":
        first = next((line.strip() for line in text.splitlines() if line.strip()), "")
        if first.startswith(("{", "[")):
            try:
                json.loads(first)
            except json.JSONDecodeError:
                return
            # pandas would split the JSON at its commas: garbage columns or a tokenizer error.
            raise FlexpaftError(
                f"data file {path} holds JSON lines, not CSV: rename it to "
                f"{path.with_suffix('.jsonl').name}"
            )
        return
    if suffix == ".jsonl" or (suffix == ".json" and not text.lstrip().startswith(("[", "{"))):
        rows = 0
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise FlexpaftError(f"{path} line {n}: invalid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise FlexpaftError(f"{path} line {n}: expected a JSON object, got {row!r:.40}")
            rows += 1 if row else 0
        if not rows:
            raise FlexpaftError(
                f"data file {path}: every row is an empty JSON object {{}}, with no fields"
                + _needs(task)
            )


def row_places(source: str, n: int) -> list[str]:
    """Where each of the ``n`` records read from ``source`` sits, as an editor shows it:
    ``line N`` of a jsonl file (blank lines hold no row) or of a CSV file (the header is line
    1, a quoted cell may span lines), ``row N`` (from 1) where lines say nothing (a JSON
    array, parquet, a hub dataset) or do not match the records one to one."""
    rows = [f"row {i + 1}" for i in range(n)]
    path = Path(source)
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json", ".csv") or not path.is_file():
        return rows
    try:
        text = path.read_text(encoding="utf-8")  # read_records has checked it is UTF-8
    except (OSError, UnicodeDecodeError):
        return rows
    if suffix == ".csv":
        import csv
        import io

        reader = csv.reader(io.StringIO(text, newline=""))
        starts, end = [], 0
        for cells in reader:
            start, end = end + 1, reader.line_num
            if cells:  # pandas skips blank lines, as this does
                starts.append(start)
        lines = starts[1:]
    elif suffix == ".json" and text.lstrip().startswith("["):
        return rows
    else:
        lines = [k for k, line in enumerate(text.splitlines(), 1) if line.strip()]
    return [f"line {k}" for k in lines] if len(lines) == n else rows


def row_error(where: str, place: str, e: RecordError, record: Any, task: TaskSpec) -> FlexpaftError:
    """The one-line error for a bad record: its place, what is wrong, and, for a field the
    record lacks, the columns it has (datasets gives every row of a file the same columns,
    so a missing field is a missing or misspelt column)."""
    message = f"{where} {place}: {e.reason} (task {task.name})"
    if e.missing and isinstance(record, dict):
        columns = ", ".join(map(str, record)) or "none"
        what = "file" if Path(where).is_file() else "dataset"
        message += f"; the {what}'s columns are: {columns}"
    return FlexpaftError(message)


def _first_line(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def load_examples(
    task: TaskSpec,
    source: str | None = None,
    split: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    shuffle: bool = False,
    config_name: str | None = None,
    revision: str | None = None,
) -> list[Example]:
    """Normalized examples of ``task`` from ``source`` (default: the task's hub dataset)."""
    if source:
        records = read_records(source, split, config_name, revision, task=task)
    elif task.name.startswith("bigbench:"):
        from flexpaft.tasks.bigbench import bigbench_records_path

        records = read_records(str(bigbench_records_path(task.name)), task=task)
    elif task.packaged_data:
        records = read_records(str(packaged_path(task, split or task.hf_split)), task=task)
    elif task.hf_path:
        records = read_records(
            task.hf_path, split or task.hf_split, config_name or task.hf_name or None, revision
        )
    else:
        raise FlexpaftError(f"task {task.name} has no default dataset: give a data source")
    where = source or (
        task.name if task.name.startswith("bigbench:") or task.packaged_data else task.hf_path
    )
    examples = []
    for i, r in enumerate(records):
        try:
            examples.append(task.normalize(r, uid=str(i)))
        except RecordError as e:
            # A local file's row is named by its line, as an editor shows it; a hub dataset's
            # by its number from 1.
            place = row_places(source, len(records))[i] if source else f"row {i + 1}"
            raise row_error(where, place, e, r, task) from None
    if not examples:
        raise FlexpaftError(f"no examples in {where}")
    if shuffle:
        random.Random(seed).shuffle(examples)
    if limit is not None and limit > 0:
        examples = examples[:limit]
    return examples


def packaged_path(task: TaskSpec, split: str) -> Path:
    """The file of ``split`` among the data shipped with the package for ``task``."""
    from importlib import resources

    if split not in task.packaged_data:
        raise FlexpaftError(
            f"task {task.name} ships the splits {', '.join(sorted(task.packaged_data))}, "
            f"not {split!r}: set data.split to one of them, or data.source to your own file"
        )
    path = Path(str(resources.files("flexpaft").joinpath("data", task.packaged_data[split])))
    if not path.is_file():
        raise FlexpaftError(f"the packaged data file {path} is missing: reinstall flexpaft")
    return path


def split_examples(
    examples: list[Example], n_heldout: int, seed: int = 0
) -> tuple[list[Example], list[Example]]:
    """Disjoint (rest, held-out) example lists, held-out drawn at random with ``seed``."""
    if n_heldout <= 0:
        return list(examples), []
    if n_heldout >= len(examples):
        raise FlexpaftError(
            f"cannot hold out {n_heldout} of {len(examples)} examples: nothing would be left"
        )
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    held = set(order[:n_heldout])
    return (
        [e for i, e in enumerate(examples) if i not in held],
        [e for i, e in enumerate(examples) if i in held],
    )
