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

from flexpaft.errors import FlexpaftError

MODES = ("example", "steps")


@dataclass
class EpochPlan:
    """Global order of one epoch: ``examples[p]`` is rendered with template ``templates[p]``.

    ``second[p]``, when present, is the second template of ``examples[p]`` (consistency training
    renders every example twice).
    """

    examples: np.ndarray
    templates: np.ndarray
    second: np.ndarray | None = None

    def items(self) -> list[tuple[int, ...]]:
        """The stream as dataset keys: (example, template) or (example, template, second)."""
        cols = [self.examples, self.templates] + ([self.second] if self.second is not None else [])
        return list(zip(*(c.tolist() for c in cols)))


def plan_epoch(
    n_examples: int,
    n_templates: int,
    epoch: int,
    seed: int,
    mode: str = "example",
    k_steps: int = 1,
    global_batch: int = 1,
    shuffle: bool = True,
    own: int | None = None,
    own_rate: float = 0.0,
    second: bool = False,
) -> EpochPlan:
    """Draw the epoch's example order and template assignment.

    ``mode="example"``: a fresh template for every example. ``mode="steps"``: one template for
    ``k_steps`` consecutive optimizer steps of ``global_batch`` examples (the paper's K).

    ``own``/``own_rate``: each draw is template ``own`` with probability ``own_rate``, else
    uniform over the other templates, so the own template's share is exactly the rate in
    expectation. ``second``: also draw, per example, a second template different from its
    first (when there are two or more).
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
    with_own = own is not None and own_rate > 0 and n_templates > 1
    if with_own and not 0 <= own < n_templates:
        raise FlexpaftError(f"own template index {own} is not among {n_templates} templates")
    n_draws = n_examples if mode == "example" else math.ceil(n_examples / (k_steps * global_batch))
    # Without an own template the draw is exactly the original one, so existing runs replay.
    draws = rng.integers(0, n_templates - 1 if with_own else n_templates, size=n_draws)
    if with_own:
        # Its own stream (seed, epoch, 2): group_by_length uses (seed, epoch, 1).
        pick_own = np.random.default_rng([seed, epoch, 2]).random(n_draws) < own_rate
        draws = np.where(draws >= own, draws + 1, draws)  # uniform over the others
        draws = np.where(pick_own, own, draws)
    if mode == "example":
        templates = draws
    else:
        templates = draws[np.arange(n_examples) // (k_steps * global_batch)]
    plan = EpochPlan(order.astype(np.int64), templates.astype(np.int64))
    if second:
        plan.second = second_templates(plan.examples, plan.templates, n_templates, seed, epoch)
    return plan


def example_templates(
    n_examples: int,
    n_templates: int,
    epoch: int,
    seed: int,
    own: int | None = None,
    own_rate: float = 0.0,
) -> np.ndarray:
    """``out[i]``: the template example ``i`` is rendered with in ``epoch``.

    The same draw as ``plan_epoch``'s ``mode="example"`` plan (which ``flexpaft train`` uses),
    indexed by example instead of by stream position. For pipelines where someone else orders
    the examples (a transformers ``Trainer``'s sampler): the (example, template) pairs of an
    epoch are exactly those ``flexpaft train`` trains on with the same seed, only the order
    differs.
    """
    plan = plan_epoch(n_examples, n_templates, epoch, seed, own=own, own_rate=own_rate)
    out = np.empty(n_examples, dtype=np.int64)
    out[plan.examples] = plan.templates
    return out


def second_templates(
    examples: np.ndarray, first: np.ndarray, n_templates: int, seed: int, epoch: int
) -> np.ndarray:
    """Per position, a template other than ``first`` (the same one when there is only one).

    Drawn from (seed, epoch, 3) and indexed by example, so an example's second draw depends on
    (seed, epoch, example) only, not on where the example lands in the order.
    """
    if n_templates < 2:
        return first.copy()
    n = int(examples.max()) + 1 if len(examples) else 0
    offsets = np.random.default_rng([seed, epoch, 3]).integers(1, n_templates, size=n)
    return ((first + offsets[examples]) % n_templates).astype(np.int64)


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
    ex_out, tp_out, sc_out = [], [], []
    for start in range(0, len(plan.examples), window):
        ex = plan.examples[start : start + window]
        tp = plan.templates[start : start + window]
        sc = plan.second[start : start + window] if plan.second is not None else None
        idx = np.argsort(-lengths[ex], kind="stable")
        batches = [idx[i : i + batch_size] for i in range(0, len(idx), batch_size)]
        for b in rng.permutation(len(batches)):
            ex_out.append(ex[batches[b]])
            tp_out.append(tp[batches[b]])
            if sc is not None:
                sc_out.append(sc[batches[b]])
    second = np.concatenate(sc_out) if plan.second is not None else None
    return EpochPlan(np.concatenate(ex_out), np.concatenate(tp_out), second)


def global_batches(
    plan: EpochPlan, world_size: int, batch_size: int
) -> list[list[tuple[int, ...]]]:
    """The epoch's batches of every rank, in stream order.

    The tail is padded by wrapping around so the count is a multiple of ``world_size`` and
    every batch is full (DDP needs every rank to run the same number of batches); no example
    is dropped.
    """
    pairs = plan.items()
    per_round = batch_size * world_size
    if len(pairs) % per_round:
        short = per_round - len(pairs) % per_round
        pairs += [pairs[i % len(pairs)] for i in range(short)]
    return [pairs[i : i + batch_size] for i in range(0, len(pairs), batch_size)]


def shard(
    plan: EpochPlan, rank: int, world_size: int, batch_size: int
) -> list[list[tuple[int, ...]]]:
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
        own: int | None = None,
        own_rate: float = 0.0,
        second: bool = False,
    ) -> None:
        self.n_examples, self.n_templates = n_examples, n_templates
        self.own, self.own_rate, self.second = own, own_rate, second
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
            own=self.own,
            own_rate=self.own_rate,
            second=self.second,
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

    def batches(self, epoch: int) -> list[list[tuple[int, ...]]]:
        return shard(self.plan(epoch), self.rank, self.world_size, self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, ...]]]:
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

    def __iter__(self) -> Iterator[list[tuple[int, ...]]]:
        s = self._source
        batches = global_batches(s.plan(s.epoch), s.world_size, s.batch_size)
        yield from batches[s.skip * s.world_size :]

    def __len__(self) -> int:
        return len(self._source) * self._source.world_size
