"""``flexpaft prompts export-lm-eval``: a prompt set as lm-evaluation-harness tasks.

One task YAML per template plus a group YAML over all of them, so the unseen-template evaluation
of ``flexpaft eval`` can be cross-checked with::

    lm_eval --model hf --model_args pretrained=<base>,peft=<adapter> \\
        --include_path <out> --tasks <group>

Prompts and answers are rendered by flexpaft itself (``utils.py`` beside the YAMLs calls
``flexpaft.render.render``), so both harnesses see the same text, including whitespace: each
choice carries its own separator and ``target_delimiter`` is empty. lm-eval then scores each
choice's log-likelihood, as ``flexpaft eval --set mode=continuation`` does.
"""

from __future__ import annotations

import json
from pathlib import Path

from flexpaft.errors import FlexpaftError
from flexpaft.io import atomic_write_text
from flexpaft.prompts import PromptSet
from flexpaft.tasks import AnswerFormat, TaskSpec
from flexpaft.tasks.spec import OPTION_SLOT

UTILS = '''"""Written by `flexpaft prompts export-lm-eval`: renders each template with flexpaft."""

from flexpaft.prompts import Template
from flexpaft.render import render
from flexpaft.tasks import AnswerFormat, load_task

TASK = load_task({task!r})
FORMAT = AnswerFormat({fmt!r})
TEMPLATES = {templates}


def _rendered(doc, tid):
    return render(TASK, Template(TEMPLATES[tid], tid), TASK.normalize(doc), FORMAT)


def _functions(tid):
    return (
        lambda doc: _rendered(doc, tid).prompt,
        lambda doc: _rendered(doc, tid).answers,
        lambda doc: _rendered(doc, tid).gold,
    )


for _tid in TEMPLATES:
    (
        globals()["text_" + _tid],
        globals()["choices_" + _tid],
        globals()["target_" + _tid],
    ) = _functions(_tid)
'''


def _q(value: str) -> str:
    # JSON strings are YAML strings: quotes and newlines escaped, nothing for YAML to reinterpret.
    return json.dumps(value, ensure_ascii=False)


def export_lm_eval(
    templates: PromptSet,
    task: TaskSpec,
    fmt: AnswerFormat,
    out: str | Path,
    prefix: str = "flexpaft",
    source: str = "",
    split: str = "",
    task_ref: str = "",
) -> list[Path]:
    """Write ``<prefix>_<task>_<id>.yaml`` per template, ``<prefix>_<task>.yaml`` (the group)
    and ``utils.py`` into ``out``; the paths written, group first."""
    if fmt is AnswerFormat.GENERATION:
        raise FlexpaftError(
            "export-lm-eval supports scored formats (letter, label_words, option_text)"
        )
    good, bad = templates.deduplicate().validated(task, fmt)
    if bad:
        t, reasons = bad[0]
        raise FlexpaftError(f"template {t.id} is not valid for {task.name}: {'; '.join(reasons)}")
    if any(OPTION_SLOT in t.slots for t in good):
        raise FlexpaftError(
            "templates with an {option} slot (partial scoring) have no lm-eval equivalent"
        )
    out = Path(out)
    base = f"{prefix}_{task.name.replace(':', '_')}"
    if not source and task.packaged_data:
        from flexpaft.tasks.data import packaged_path

        source = str(packaged_path(task, split or task.hf_split))
    if source:
        dataset = [
            "dataset_path: json",
            "dataset_kwargs:",
            f"  data_files: {{test: {_q(str(Path(source).resolve()))}}}",
            "test_split: test",
        ]
    elif task.hf_path:
        dataset = [f"dataset_path: {_q(task.hf_path)}"]
        if task.hf_name:
            dataset.append(f"dataset_name: {_q(task.hf_name)}")
        dataset.append(f"test_split: {_q(split or task.hf_split)}")
    else:
        raise FlexpaftError(f"task {task.name} has no hub dataset: give --source")
    written = []
    names = []
    for t in good:
        name = f"{base}_{t.id}"
        names.append(name)
        lines = [
            f"# flexpaft template {t.id}: {_q(t.text)}",
            f"task: {name}",
            *dataset,
            "output_type: multiple_choice",
            f"doc_to_text: !function utils.text_{t.id}",
            f"doc_to_choice: !function utils.choices_{t.id}",
            f"doc_to_target: !function utils.target_{t.id}",
            'target_delimiter: ""',
            "metric_list:",
            "  - metric: acc",
            "    aggregation: mean",
            "    higher_is_better: true",
            "metadata:",
            "  version: 1.0",
        ]
        written.append(atomic_write_text(out / f"{name}.yaml", "\n".join(lines) + "\n"))
    group = [
        f"group: {base}",
        "task:",
        *[f"  - {n}" for n in names],
        "aggregate_metric_list:",
        "  - metric: acc",
        "    aggregation: mean",
        "    weight_by_size: false",
        "metadata:",
        "  version: 1.0",
    ]
    group_path = atomic_write_text(out / f"{base}.yaml", "\n".join(group) + "\n")
    templates_py = json.dumps({t.id: t.text for t in good}, indent=4, ensure_ascii=False)
    # A task YAML file is referred to by its absolute path: lm-eval runs from anywhere.
    ref = task_ref or task.name
    if Path(ref).is_file():
        ref = str(Path(ref).resolve())
    utils = UTILS.format(task=ref, fmt=fmt.value, templates=templates_py)
    atomic_write_text(out / "utils.py", utils)
    return [group_path, *written]
