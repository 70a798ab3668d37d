"""``flexpaft.search_layers``: Flexora's search on a model and data you already have.

For a PEFT user with their own training script: give the base model, its tokenizer, training and
validation rows and (optionally) templates; get back which blocks to adapt, as a
``peft.LoraConfig`` that TRL's ``peft_config=`` or ``get_peft_model`` takes as it is::

    from flexpaft import search_layers

    selection = search_layers(model, tok, train_rows, val_rows, task="boolq")
    peft_config = selection.to_lora_config()       # layers_to_transform = selection.layers

It runs the same search as ``flexpaft search`` (same settings, ``flexora=`` and ``lora=``
override them), on a copy of nothing: LoRA is added to ``model`` for the search and removed after.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from flexpaft.errors import FlexpaftError
from flexpaft.methods.flexora.outcome import SearchOutcome
from flexpaft.prompts import Template
from flexpaft.prompts.promptset import template_id
from flexpaft.prompts.task_templates import load_valid_set
from flexpaft.prompts.task_templates import own_template as task_own_template
from flexpaft.settings.train import TrainConfig
from flexpaft.tasks import load_task
from flexpaft.tasks.spec import AnswerFormat, Example, TaskSpec

Rows = Iterable[Example | Mapping[str, Any]]


def _examples(rows: Rows, task: TaskSpec, what: str) -> list[Example]:
    out = []
    for i, row in enumerate(rows):
        out.append(row if isinstance(row, Example) else task.normalize(dict(row), f"{what}-{i}"))
    if not out:
        raise FlexpaftError(f"search_layers: no {what} rows")
    return out


def _templates(
    templates: str | Sequence[str | Template] | None, task: TaskSpec, fmt: AnswerFormat
) -> list[Template]:
    if templates is None:
        return []
    if isinstance(templates, str):  # a prompt-set file
        return list(load_valid_set(templates, task, fmt))
    out = []
    for t in templates:
        tpl = t if isinstance(t, Template) else Template(t, template_id(t))
        out.append(tpl.validate(task, fmt))
    return out


def search_layers(
    model: Any,
    tokenizer: Any,
    train_rows: Rows,
    val_rows: Rows,
    templates: str | Sequence[str | Template] | None = None,
    *,
    task: str | TaskSpec,
    format: str = "",
    own_template: str = "",
    output_dir: str | None = None,
    seed: int = 0,
    progress: bool = True,
    **settings: Any,
) -> SearchOutcome:
    """Search which blocks of ``model`` get LoRA, and return the selection.

    ``train_rows`` / ``val_rows``: flexpaft ``Example``s or dict rows in ``task``'s schema (a
    built-in task name, ``bigbench:<name>``, a task YAML, or a ``TaskSpec``). LoRA learns on the
    training rows; alpha, one gate per block, on the validation rows. ``templates``: a prompt-set
    file or a list of template texts: the search trains under them drawn per example (as
    flexora+paft) and, with 4 or more, holds a quarter out for the validation wordings; without
    templates it trains under ``own_template`` (default: the task's). ``settings``: TrainConfig
    sections as keyword arguments (``flexora={"search_budget": 0.5}``, ``lora={"r": 16,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}``, ``optim={"lr": 2e-4}``);
    ``output_dir`` keeps alpha.jsonl, alpha.png and selection.json (default: a temporary
    directory). The returned ``SearchOutcome`` has ``.layers``, ``.alpha``, ``.gates``,
    ``.ladder`` (under the default ``flexora.selection=validated``: every selection size scored on
    the validation rows, the chosen one marked) and ``.to_lora_config()``.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from flexpaft.methods.flexora.search import search_layers as run_search

    spec = task if isinstance(task, TaskSpec) else load_task(task)
    fmt = AnswerFormat.parse(format) if format else spec.default_format
    spec.check_format(fmt)
    chosen = _templates(templates, spec, fmt)
    method = "flexora+paft" if chosen else "flexora"
    values: dict[str, Any] = {
        "method": method,
        "seed": seed,
        "data": {"task": spec.name, "format": fmt.value},
        "prompts": {"template": own_template, "own_rate": 0.0},
        "checkpoint_every": 0,
    }
    for key, value in settings.items():
        merge = isinstance(value, Mapping) and isinstance(values.get(key), dict)
        values[key] = {**values[key], **value} if merge else value
    with tempfile.TemporaryDirectory(prefix="flexpaft-search-") as tmp:
        values["output_dir"] = output_dir or tmp
        cfg = TrainConfig.from_dict(values)
        train = _examples(train_rows, spec, "train")
        val = _examples(val_rows, spec, "validation")
        if not chosen:
            chosen = [task_own_template(cfg.prompts.template, spec, fmt)]
        set_seed(seed)
        return run_search(
            cfg,
            model,
            tokenizer,
            spec,
            fmt,
            train,
            chosen,
            Accelerator(cpu=not _on_gpu(model)),
            progress=progress,
            val_examples=val,
        )


def _on_gpu(model: Any) -> bool:
    try:
        return next(model.parameters()).device.type != "cpu"
    except StopIteration:
        return False
