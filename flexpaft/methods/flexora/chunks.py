"""Row chunks of a batch, so the search holds the activations of fewer rows at a time.

The search trains LoRA on every block, so its backward reaches block 0 and stores activations
that stage 2 skips below its lowest selected block: at the same batch size the search's peak
memory is LoRA-on-all-blocks', above stage 2's. Running each micro-batch as row chunks cuts the
activations held at once, and weighting each chunk's mean loss by its share of the batch's
answer tokens makes the summed gradient the full batch's mean-loss gradient, so the trajectory
does not depend on the chunk size (up to float summation order).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from flexpaft.errors import FlexpaftError
from flexpaft.training.data import answer_targets
from flexpaft.training.options import is_options_batch, option_chunks

Batch = dict[str, torch.Tensor]


def search_rows(batch_size: int, micro_batch: int, deepspeed: bool = False) -> int:
    """Rows per chunk (0: never split): ``micro_batch`` if set, else half the micro-batch,
    rounded up. DeepSpeed counts every backward as a micro-step of its own gradient
    accumulation, so there a micro-batch is never split, and asking for it is an error."""
    if deepspeed:
        if 0 < micro_batch < batch_size:
            raise FlexpaftError(
                "flexora.micro_batch cannot split micro-batches under DeepSpeed: lower "
                "optim.batch_size (and raise optim.grad_accum) instead"
            )
        return 0
    return micro_batch if micro_batch > 0 else max(1, -(-batch_size // 2))


def split_rows(batch: Batch, rows: int, multiple: int = 8) -> list[Batch]:
    """``batch`` as chunks of at most ``rows`` rows, in order.

    Batches are left-padded; the columns that are padding in every row of a chunk are dropped
    (keeping the length a multiple of ``multiple``, as the collator pads). Position ids come
    from the mask, so the real tokens keep their positions.
    """
    n, length = batch["input_ids"].shape
    if rows <= 0 or rows >= n:
        return [batch]
    chunks = []
    for start in range(0, n, rows):
        part = {k: v[start : start + rows] for k, v in batch.items()}
        real = part["attention_mask"].bool().any(dim=0)
        first = int(real.to(torch.int8).argmax()) if bool(real.any()) else 0
        keep = length - first
        if multiple > 1:
            keep = min(length, -(-keep // multiple) * multiple)
        cut = length - keep
        chunks.append(
            {k: v[:, cut:] if v.dim() > 1 and v.shape[1] == length else v for k, v in part.items()}
        )
    return chunks


def weighted_chunks(batch: Batch, rows: int) -> Iterator[tuple[Batch, float]]:
    """Each chunk with its share of the batch's answer tokens (chunks without any are skipped);
    an options batch (train/options.py) is chunked by whole examples instead."""
    if is_options_batch(batch):
        yield from option_chunks(batch, rows)
        return
    chunks = split_rows(batch, rows)
    if len(chunks) == 1:
        yield batch, 1.0
        return
    counts = [int((answer_targets(c["labels"]) != -100).sum()) for c in chunks]
    total = sum(counts)
    for chunk, count in zip(chunks, counts):
        if count:
            yield chunk, count / total


def chunked_loss_backward(
    batch: Batch,
    rows: int,
    loss_fn: Callable[[Batch], torch.Tensor],
    backward: Callable[[torch.Tensor, bool], None],
) -> float:
    """Forward and backward ``batch`` chunk by chunk; returns the batch's mean loss.

    ``backward(weighted_loss, last)`` is told which chunk is the last, so a distributed caller
    can synchronise gradients once per batch.
    """
    parts = list(weighted_chunks(batch, rows))
    total = 0.0
    for i, (chunk, weight) in enumerate(parts):
        loss = loss_fn(chunk) * weight
        backward(loss, i == len(parts) - 1)
        total += float(loss.detach())
        del loss  # the next chunk's graph is built only after this one is gone
    return total
