"""Which template each training example is rendered with, and in which order examples come.

PAFT's point is that the template is drawn when the batch is built and drawn again every epoch
(the official code fixed it once at preprocessing). Here a whole epoch's plan is a pure function of
(seed, epoch): one global stream of (example, template) pairs that every rank computes identically
and then shards, so under DDP no two ranks draw the same stream and the result does not depend on
the number of processes. Drawing happens in the main process (cheap integers); rendering and
tokenizing happen in DataLoader workers, off the training step's critical path.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..errors import FlexpaftError

MODES = ("example", "steps")


@dataclass
class EpochPlan:
    """Global order of one epoch: ``examples[p]`` is rendered with template ``templates[p]``."""

    examples: np.ndarray
    templates: np.ndarray


def plan_epoch(
    n_examples: int,
    n_templates: int,
    epoch: int,
    seed: int,
    mode: str = "example",
    k_steps: int = 1,
    global_batch: int = 1,
    shuffle: bool = True,
) -> EpochPlan:
    """Draw the epoch's example order and template assignment.

    ``mode="example"``: a fresh template for every example. ``mode="steps"``: one template for
    ``k_steps`` consecutive optimizer steps of ``global_batch`` examples (the paper's K).
    """
    if n_examples <= 0:
        raise FlexpaftError("no training examples")
    if n_templates <= 0:
        raise FlexpaftError("no training templates")
    if mode not in MODES:
        raise FlexpaftError(f"unknown prompt sampling mode {mode!r} (use {' or '.join(MODES)})")
    if k_steps < 1 or global_batch < 1:
        raise FlexpaftError("k_steps and the batch size must be at least 1")
    # Seeding with (seed, epoch) gives independent, reproducible streams per epoch.
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n_examples) if shuffle else np.arange(n_examples)
    if mode == "example":
        templates = rng.integers(0, n_templates, size=n_examples)
    else:
        per_draw = k_steps * global_batch
        draws = rng.integers(0, n_templates, size=math.ceil(n_examples / per_draw))
        templates = draws[np.arange(n_examples) // per_draw]
    return EpochPlan(order.astype(np.int64), templates.astype(np.int64))


def group_by_length(
    plan: EpochPlan,
    lengths: np.ndarray,
    batch_size: int,
    window_batches: int,
    seed: int,
    epoch: int,
) -> EpochPlan:
    """Reorder inside windows so each batch holds examples of similar length (less padding).

    Templates travel with their examples, so the template draw is unchanged; only which examples
    share a batch changes. Batches are shuffled within the window so training does not see a
    long-to-short sweep.
    """
    window = batch_size * window_batches
    rng = np.random.default_rng([seed, epoch, 1])
    ex_out, tp_out = [], []
    for start in range(0, len(plan.examples), window):
        ex = plan.examples[start : start + window]
        tp = plan.templates[start : start + window]
        idx = np.argsort(-lengths[ex], kind="stable")
        batches = [idx[i : i + batch_size] for i in range(0, len(idx), batch_size)]
        for b in rng.permutation(len(batches)):
            ex_out.append(ex[batches[b]])
            tp_out.append(tp[batches[b]])
    return EpochPlan(np.concatenate(ex_out), np.concatenate(tp_out))


def global_batches(
    plan: EpochPlan, world_size: int, batch_size: int
) -> list[list[tuple[int, int]]]:
    """The epoch's batches of every rank, in stream order.

    The tail is padded by wrapping around so the count is a multiple of ``world_size`` and
    every batch is full (DDP needs every rank to run the same number of batches); no example
    is dropped.
    """
    pairs = list(zip(plan.examples.tolist(), plan.templates.tolist()))
    per_round = batch_size * world_size
    if len(pairs) % per_round:
        short = per_round - len(pairs) % per_round
        pairs += [pairs[i % len(pairs)] for i in range(short)]
    return [pairs[i : i + batch_size] for i in range(0, len(pairs), batch_size)]


def shard(
    plan: EpochPlan, rank: int, world_size: int, batch_size: int
) -> list[list[tuple[int, int]]]:
    """This rank's batches: global batch ``g`` goes, whole, to rank ``g % world_size``."""
    return global_batches(plan, world_size, batch_size)[rank::world_size]


class PromptBatchSampler:
    """A batch sampler over (example index, template index) pairs for one rank.

    ``set_epoch`` selects the epoch's plan; ``skip`` drops batches already consumed before a
    resume so the resumed run sees exactly what the uninterrupted run would have.
    """

    def __init__(
        self,
        n_examples: int,
        n_templates: int,
        batch_size: int,
        seed: int,
        mode: str = "example",
        k_steps: int = 1,
        grad_accum: int = 1,
        rank: int = 0,
        world_size: int = 1,
        lengths: np.ndarray | None = None,
        window_batches: int = 64,
    ) -> None:
        self.n_examples, self.n_templates = n_examples, n_templates
        self.batch_size, self.seed, self.mode, self.k_steps = batch_size, seed, mode, k_steps
        self.global_batch = batch_size * grad_accum * world_size
        self.rank, self.world_size = rank, world_size
        self.lengths, self.window_batches = lengths, window_batches
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def plan(self, epoch: int) -> EpochPlan:
        plan = plan_epoch(
            self.n_examples,
            self.n_templates,
            epoch,
            self.seed,
            self.mode,
            self.k_steps,
            self.global_batch,
        )
        if self.lengths is not None:
            # In "steps" mode a window must not straddle two template draws.
            window = (
                self.window_batches
                if self.mode == "example"
                else self.k_steps * self.global_batch // self.batch_size
            )
            plan = group_by_length(
                plan, self.lengths, self.batch_size, max(1, window), self.seed, epoch
            )
        return plan

    def batches(self, epoch: int) -> list[list[tuple[int, int]]]:
        return shard(self.plan(epoch), self.rank, self.world_size, self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        yield from self.batches(self.epoch)[self.skip :]

    def __len__(self) -> int:
        per_round = self.batch_size * self.world_size
        return math.ceil(self.n_examples / per_round) - self.skip

    def stream(self) -> GlobalStream:
        """The batch sampler to hand to a DataLoader that accelerate shards (see GlobalStream)."""
        return GlobalStream(self)


class GlobalStream:
    """Every rank's batches in stream order, for ``accelerator.prepare`` to shard.

    accelerate gives process ``r`` batches ``r, r + W, r + 2W, ...`` of a batch sampler, which is
    exactly ``shard``; so the DataLoader goes through accelerate (DeepSpeed and FSDP see it, the
    device placement is accelerate's) and each rank still trains on its own disjoint part of one
    global stream. Epoch and resume position are set on the PromptBatchSampler. This object
    deliberately has no ``set_epoch`` and no ``sampler`` attribute: accelerate calls those with
    its own iteration count, which would overwrite the resume position.
    """

    def __init__(self, source: PromptBatchSampler) -> None:
        self._source = source
        self.batch_size = source.batch_size  # all batches are full (see global_batches)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        s = self._source
        batches = global_batches(s.plan(s.epoch), s.world_size, s.batch_size)
        yield from batches[s.skip * s.world_size :]

    def __len__(self) -> int:
        return len(self._source) * self._source.world_size
