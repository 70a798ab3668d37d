"""``flexpaft prompts validate --data``: every row of a data file checked against a task before
any training, so a task definition that cannot read its data fails in seconds, at its first bad
row, instead of after the model has loaded."""

from __future__ import annotations

from typing import Any

from flexpaft.errors import FlexpaftError
from flexpaft.tasks.data import read_records, row_error, row_places
from flexpaft.tasks.spec import AnswerFormat, RecordError, TaskSpec


def check_rows(task: TaskSpec, fmt: AnswerFormat, source: str) -> int:
    """The number of rows in ``source``; raise on the first row ``task`` cannot use in ``fmt``,
    naming the file and its line (jsonl) or row."""
    records = read_records(source, task=task)
    places = row_places(source, len(records))
    for i, record in enumerate(records):
        try:
            _check_row(task, fmt, record, str(i))
        except RecordError as e:
            raise row_error(source, places[i], e, record, task) from None
    if not records:
        raise FlexpaftError(f"no rows in {source}")
    return len(records)


def _check_row(task: TaskSpec, fmt: AnswerFormat, record: dict[str, Any], uid: str) -> None:
    # The reader training uses: the same errors (a list or a mapping where text belongs among
    # them), the same wording.
    ex = task.normalize(record, uid)
    if fmt is AnswerFormat.LABEL_WORDS and len(task.label_words) != len(ex.options):
        raise RecordError(
            task.name,
            uid,
            f"has {len(ex.options)} options but the task has {len(task.label_words)} "
            "label_words (one per option)",
        )
