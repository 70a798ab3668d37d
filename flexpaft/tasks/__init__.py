"""Tasks: specs (fields, choices, gold answer, answer format) and their data."""

from flexpaft.tasks.builtin import BUILTIN_TASKS, get_task
from flexpaft.tasks.data import load_examples, load_task, read_records, split_examples
from flexpaft.tasks.spec import AnswerFormat, Example, TaskSpec

__all__ = [
    "BUILTIN_TASKS",
    "AnswerFormat",
    "Example",
    "TaskSpec",
    "get_task",
    "load_examples",
    "load_task",
    "read_records",
    "split_examples",
]
