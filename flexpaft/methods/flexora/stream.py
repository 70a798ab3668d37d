"""The search's data: an endless, resumable stream of training (or validation) batches."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader

from flexpaft.errors import FlexpaftError
from flexpaft.training.sampling import PromptBatchSampler

Batch = dict[str, torch.Tensor]


class BatchStream:
    """Endless batches over epochs with a resumable position (epoch, batches consumed)."""

    def __init__(self, loader: DataLoader, sampler: PromptBatchSampler, device: torch.device):
        self.loader, self.sampler, self.device = loader, sampler, device
        self.epoch, self.batch = 0, 0
        self._it: Any = None

    def seek(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch, self._it = epoch, batch, None

    def __next__(self) -> Batch:
        for _ in range(3):
            if self._it is None:
                self.sampler.set_epoch(self.epoch, skip=self.batch)
                self._it = iter(self.loader)
            try:
                batch = next(self._it)
            except StopIteration:
                self.epoch, self.batch, self._it = self.epoch + 1, 0, None
                continue
            self.batch += 1
            return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        raise FlexpaftError("the data loader yields no batches")


class FixedBatches:
    """Batches rendered, tokenized and collated once, then served in a cycle (the validation set).

    The validation split is small and seen many times over a search; rendering it again every
    pass would cost tokenizer time and, with PAFT, draw new templates each pass. One pass of the
    loader (epoch 0: its template draws and rank shard) is kept on the device instead.
    """

    def __init__(self, loader: DataLoader, sampler: PromptBatchSampler, device: torch.device):
        self.loader = loader  # kept so the search can hand it back to the accelerator's list
        sampler.set_epoch(0)
        self.batches = [{k: v.to(device) for k, v in b.items()} for b in loader]
        if not self.batches:
            raise FlexpaftError("the validation split yields no batches")
        self.position = 0

    def take(self, n: int) -> list[Batch]:
        """The next ``n`` batches of the cycle."""
        out = [self.batches[(self.position + i) % len(self.batches)] for i in range(n)]
        self.position = (self.position + n) % len(self.batches)
        return out


def search_streams(
    cfg: Any,
    task: Any,
    fmt: Any,
    examples: tuple[list[Any], list[Any]],
    templates: tuple[list[Any], list[Any]],
    tokenizer: Any,
    acc: Any,
    own: Any = None,
    options: tuple[bool, bool] = (False, False),
    attn_implementation: str | None = None,
) -> tuple[BatchStream, FixedBatches]:
    """The search's training stream and its validation batches, from (train, validation) pairs
    of ``examples`` and ``templates``; ``options``: whether each holds every option's answer
    (the options loss, ``training/options.py``).

    ``own`` (the user's own template, drawn at ``prompts.own_rate``) enters the training stream
    only: validation batches are rendered under the validation wordings and nothing else.
    ``attn_implementation``: the model's; where it takes a 4D mask, multi-token options are
    packed after one shared prompt in both streams (``training/options.py``).
    """
    from flexpaft.training.loader import make_loader

    train_loader, train_sampler = make_loader(
        cfg,
        task,
        fmt,
        examples[0],
        templates[0],
        tokenizer,
        cfg.seed,
        acc,
        options=options[0],
        own=own,
        attn_implementation=attn_implementation,
    )
    # Validation batches are rendered and tokenized once, and reused every pass.
    return (
        BatchStream(train_loader, train_sampler, acc.device),
        validation_batches(
            cfg, task, fmt, examples[1], templates[1], tokenizer, acc, options[1],
            attn_implementation,
        ),
    )  # fmt: skip


def validation_batches(
    cfg: Any,
    task: Any,
    fmt: Any,
    examples: list[Any],
    templates: list[Any],
    tokenizer: Any,
    acc: Any,
    options: bool = False,
    attn_implementation: str | None = None,
) -> FixedBatches:
    """``examples`` rendered under ``templates`` once, with no own-template share: the search's
    validation batches, and (templates = the user's own one alone) the validated rule's
    own-prompt check (ladder.py); never a batch the inner loop learns from."""
    from flexpaft.training.loader import make_loader

    # A different seed: validation batches are not drawn in lockstep with training batches.
    loader, sampler = make_loader(
        cfg,
        task,
        fmt,
        examples,
        templates,
        tokenizer,
        cfg.seed + 1,
        acc,
        options=options,
        own=None,
        attn_implementation=attn_implementation,
    )
    return FixedBatches(loader, sampler, acc.device)
