"""The training DataLoader: (example, template) pairs drawn per epoch, rendered on demand in the
layout the loss needs (answer tokens, every option, or two renderings), sharded by rank."""

from __future__ import annotations

from typing import Any

import torch

from flexpaft.chat import resolve_chat
from flexpaft.prompts.task_templates import own_index
from flexpaft.prompts.template import Template
from flexpaft.tasks.spec import AnswerFormat, Example, TaskSpec
from flexpaft.training.consistency import PairedCollator, PairedOptionsDataset
from flexpaft.training.data import PadCollator, RenderedDataset
from flexpaft.training.options import OptionsCollator, OptionsDataset, packs_options
from flexpaft.training.sampling import PromptBatchSampler


def make_loader(
    cfg: Any,
    task: TaskSpec,
    fmt: AnswerFormat,
    examples: list[Example],
    templates: list[Template],
    tokenizer: Any,
    seed: int,
    acc: Any,
    options: bool = False,
    pairs: bool = False,
    own: Template | None = None,
    attn_implementation: str | None = None,
) -> tuple[torch.utils.data.DataLoader, PromptBatchSampler]:
    """The training pipeline: templates drawn per example, length grouping, rank shards.

    The loader is prepared by ``acc`` (an ``Accelerator``): accelerate shards the global batch
    stream by rank (see ``GlobalStream``) and moves batches to the device. The returned sampler
    sets the epoch and the resume position.

    ``pairs``: every item rendered under two templates, both scored over the options
    (consistency.py); implies ``options``. ``own``: the user's own template, drawn for a
    ``prompts.own_rate`` share of the examples where ``templates`` holds it (the template
    policy says whether a method has such a share: ``methods.templates.drawn_own_template``).
    ``attn_implementation``: the model's (``config._attn_implementation``); where it takes a 4D
    mask, multi-token options are packed after one shared prompt (options.py); None keeps one
    row per option.
    """
    from torch.utils.data import DataLoader

    o = cfg.optim
    # options=True: items carry every option's answer, for the loss over options (options.py).
    collator_kwargs: dict[str, Any] = {}
    if pairs or options:
        collator_kwargs["packed"] = packs_options(attn_implementation)
    if pairs:
        dataset_cls, collator_cls = PairedOptionsDataset, PairedCollator
    elif options:
        dataset_cls, collator_cls = OptionsDataset, OptionsCollator
    else:
        dataset_cls, collator_cls = RenderedDataset, PadCollator
    dataset = dataset_cls(
        task,
        examples,
        templates,
        fmt,
        tokenizer,
        cfg.data.max_length,
        append_eos=cfg.data.appends_eos(fmt),
        chat=resolve_chat(cfg.model.chat_template, tokenizer),
    )
    sampler = PromptBatchSampler(
        len(examples),
        len(templates),
        o.batch_size,
        seed,
        cfg.prompts.mode,
        cfg.prompts.k_steps,
        o.grad_accum,
        acc.process_index,
        acc.num_processes,
        lengths=dataset.length_estimates() if o.group_by_length else None,
        own=own_index(own, templates) if own is not None else None,
        own_rate=cfg.prompts.own_rate,
        second=pairs,
    )
    # On CPU a worker process would fight the training threads for the cores; on GPU, workers
    # render and tokenize the next batches while the current one runs.
    workers = o.num_workers if o.num_workers >= 0 else (2 if acc.device.type == "cuda" else 0)
    loader = DataLoader(
        dataset,
        batch_sampler=sampler.stream(),
        # Multiples of 8 help GPU tensor cores; on CPU they are only extra padding.
        collate_fn=collator_cls(
            tokenizer.pad_token_id, 8 if acc.device.type == "cuda" else 1, **collator_kwargs
        ),
        num_workers=workers,
        pin_memory=acc.device.type == "cuda",
        prefetch_factor=4 if workers else None,
    )
    return acc.prepare_data_loader(loader), sampler
