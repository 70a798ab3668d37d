"""Training data: (example, template) pairs rendered and tokenized on demand, then padded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..chat import ChatFormat, resolve_chat
from ..prompts.template import Template
from ..render import encode_for_training, render
from ..tasks.spec import AnswerFormat, Example, TaskSpec
from .sampling import PromptBatchSampler


@dataclass
class RenderedDataset:
    """Indexed by (example index, template index): rendering happens in the DataLoader worker."""

    task: TaskSpec
    examples: list[Example]
    templates: list[Template]
    fmt: AnswerFormat
    tokenizer: Any
    max_length: int
    append_eos: bool = True
    chat: ChatFormat | None = None

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, list[int]]:
        ex_idx, tpl_idx = key
        rendered = render(
            self.task, self.templates[tpl_idx], self.examples[ex_idx], self.fmt, self.chat
        )
        enc = encode_for_training(self.tokenizer, rendered, self.max_length, self.append_eos)
        return {"input_ids": enc.input_ids, "labels": enc.labels}

    def length_estimates(self) -> np.ndarray:
        """Cheap per-example length proxy (characters of the fields) for grouping by length."""
        return np.array(
            [
                sum(len(v) for k, v in ex.fields.items() if k not in ("options",))
                for ex in self.examples
            ],
            dtype=np.int64,
        )


class PadCollator:
    """Left-pads a batch so every answer ends at the last position (see ``answer_loss``).

    Padded label positions are -100; ``position_ids`` count real tokens only, so a padded
    sequence is computed exactly as it would be alone.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int = 8) -> None:
        self.pad_id = pad_token_id
        self.multiple = pad_to_multiple_of

    def __call__(self, items: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        longest = max(len(it["input_ids"]) for it in items)
        if self.multiple > 1:
            longest = -(-longest // self.multiple) * self.multiple
        n = len(items)
        ids = torch.full((n, longest), self.pad_id, dtype=torch.long)
        labels = torch.full((n, longest), -100, dtype=torch.long)
        mask = torch.zeros((n, longest), dtype=torch.long)
        for i, it in enumerate(items):
            k = len(it["input_ids"])
            ids[i, longest - k :] = torch.tensor(it["input_ids"])
            labels[i, longest - k :] = torch.tensor(it["labels"])
            mask[i, longest - k :] = 1
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        return {
            "input_ids": ids,
            "labels": labels,
            "attention_mask": mask,
            "position_ids": position_ids,
        }


def answer_targets(labels: torch.Tensor) -> torch.Tensor:
    """The label columns ``answer_loss`` scores: the last ``answer_len`` (left padding puts every
    answer there); -100 marks positions that are not scored."""
    # A label in the very first position has no prediction; at most L - 1 targets exist.
    answer_len = min(int((labels != -100).sum(dim=1).max()), labels.shape[1] - 1)
    return labels[:, labels.shape[1] - answer_len :]


def answer_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over answer tokens, with the LM head applied only where it is needed.

    Batches are left-padded, so all answers sit in the last positions; ``logits_to_keep`` makes
    the model project only those hidden states onto the vocabulary. On a small model with a large
    vocabulary (SmolLM2: 49k x 576) the head over every position is a fifth of the forward pass
    and most of its activation memory. The value equals the usual shifted-label loss.
    """
    labels = batch["labels"]
    target = answer_targets(labels)
    answer_len = target.shape[1]
    keep = answer_len + 1
    logits = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        logits_to_keep=keep,
    ).logits
    pred = logits[:, :-1].float()
    return torch.nn.functional.cross_entropy(
        pred.reshape(-1, pred.shape[-1]), target.reshape(-1), ignore_index=-100
    )


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
    attn_implementation: str | None = None,
) -> tuple[torch.utils.data.DataLoader, PromptBatchSampler]:
    """The training pipeline: templates drawn per example, length grouping, rank shards.

    The loader is prepared by ``acc`` (an ``Accelerator``): accelerate shards the global batch
    stream by rank (see ``GlobalStream``) and moves batches to the device. The returned sampler
    sets the epoch and the resume position.

    ``pairs``: every item rendered under two templates, both scored over the options
    (consistency.py); implies ``options``. ``prompts.own_rate`` is applied here, so every loader
    of a run (stage 2, Flexora's search) draws the user's own template at that rate.
    ``attn_implementation``: the model's (``config._attn_implementation``); where it takes a 4D
    mask, multi-token options are packed after one shared prompt (options.py); None keeps one
    row per option.
    """
    from torch.utils.data import DataLoader

    from .templates import sampled_own_index

    o = cfg.optim
    # options=True: items carry every option's answer, for the loss over options (options.py).
    collator_kwargs: dict[str, Any] = {}
    if pairs or options:
        from .options import packs_options

        collator_kwargs["packed"] = packs_options(attn_implementation)
    if pairs:
        from .consistency import PairedCollator, PairedOptionsDataset

        dataset_cls, collator_cls = PairedOptionsDataset, PairedCollator
    elif options:
        from .options import OptionsCollator, OptionsDataset

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
        own=sampled_own_index(cfg, task, fmt, templates),
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
