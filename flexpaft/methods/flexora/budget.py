"""How long the search runs: a budget of outer steps, and an early stop once the selection settles.

Budget. ``flexora.search_steps`` (outer steps) or ``flexora.search_examples`` (training examples)
when given; otherwise the auto budget: ``flexora.search_budget`` times one pass over the search's
training split. An outer step is one optimizer step of the inner loop (``grad_accum``
micro-batches of ``batch_size`` rows on every rank) followed by one alpha step; with ``unroll = K``
it is K inner optimizer steps. So a pass is ``ceil(steps_per_epoch / K)`` outer steps, where
``steps_per_epoch = floor(ceil(train_examples / (batch_size x processes)) / grad_accum)`` (stage
2's count on the same split), and ``search_budget = 1`` (the default, the paper's length) is
exactly that many on a CPU and on a GPU alike: the same settings give the same search on every
machine. A share below 1 is rounded down, to at least one outer step.

Compute. What the search cost next to stage 2 is recorded (``compute_share`` in selection.json),
counted in forward+backward work: stage 2 runs ``epochs x steps_per_epoch`` optimizer steps (or
``max_steps``) of ``grad_accum`` micro-batches, one pass each; a first-order outer step is
``grad_accum`` training micro-batches plus ``val_batches`` validation micro-batches (alpha's
gradient needs the backward down to block 0); an unrolled one about 3 micro-batches' work per
training micro-batch plus the validation ones. ``flexora.budget_unit`` says how a micro-batch run
as row chunks (``flexora.micro_batch``, for memory) counts: one unit however it is split
(``rows``: time follows rows, as on a CPU) or one unit per chunk (``pass``: a pass costs the same
for 2 rows as for 8, as on a GPU at LoRA batch sizes; measured on an H200, docs/RESULTS.md);
``auto`` takes ``pass`` on an accelerator and ``rows`` on a CPU. Before 2026-12-07 the auto budget
was a share of that compute, so a GPU, counting two passes per chunked micro-batch, searched half
as long as a CPU (17 outer steps instead of 34 in the snips study): the unit now counts, it no
longer decides.

Early stop. After every outer step the selection (``flexora.selection`` applied to alpha; for the
positive and validated rules, the sign pattern of alpha) is compared with the previous one; once it
has not changed for ``flexora.stable_steps`` consecutive outer steps the search stops.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from flexpaft.errors import FlexpaftError
from flexpaft.methods.flexora.gates import gate_values
from flexpaft.methods.flexora.select import provisional_rule, select_layers
from flexpaft.settings.train import FlexoraSettings, OptimSettings

log = logging.getLogger(__name__)

# Forward+backward micro-batches of work per training micro-batch of an unrolled outer step: the
# differentiable inner step (a backward with create_graph), the backward through it, the commit.
UNROLLED_COST = 3


def passes_per_micro_batch(f: FlexoraSettings, batch_size: int, rows: int, device: str) -> int:
    """Compute units one first-order micro-batch of ``batch_size`` rows costs when it runs as
    chunks of ``rows`` rows (0: whole) on ``device`` (a torch device type such as 'cuda'), as
    ``flexora.budget_unit`` counts them. Enters ``compute_share``, never the search's length."""
    unit = f.budget_unit
    if unit == "auto":
        unit = "rows" if device == "cpu" else "pass"
    if unit == "rows" or rows <= 0:
        return 1
    return -(-batch_size // rows)


def outer_step_cost(f: FlexoraSettings, grad_accum: int, passes: int = 1) -> int:
    """Units of forward+backward work in one outer step; ``passes`` per first-order
    micro-batch (``passes_per_micro_batch``; the unrolled hypergradient runs whole batches)."""
    if f.unroll:
        return f.unroll * grad_accum * UNROLLED_COST + f.val_batches
    return (grad_accum + f.val_batches) * passes


def search_length(
    f: FlexoraSettings, o: OptimSettings, steps_per_epoch: int, global_batch: int
) -> int:
    """Outer steps the search may take (before any early stop).

    ``steps_per_epoch`` counts optimizer steps over the training split; ``global_batch`` is
    examples per optimizer step over all ranks. Nothing here depends on the machine.
    """
    if f.search_steps < 0 or f.search_examples < 0:
        raise FlexpaftError("flexora.search_steps and flexora.search_examples must be >= 0")
    per_outer = max(1, f.unroll)
    if f.search_steps > 0:
        return f.search_steps
    if f.search_examples > 0:
        return max(1, math.ceil(math.ceil(f.search_examples / global_batch) / per_outer))
    if not 0 < f.search_budget <= 1:
        raise FlexpaftError(
            f"flexora.search_budget must be in (0, 1] (a share of one pass), got {f.search_budget}"
        )
    one_pass = max(1, math.ceil(steps_per_epoch / per_outer))
    # Rounded down (to 9 places first, so that 0.29 of 100 steps is 29 and not 28): at 2 epochs and
    # one validation batch per step, the settings of every study config, a share gives the
    # same length it gave when it was a share of stage 2's compute counted in micro-batches.
    return max(1, min(one_pass, math.floor(round(f.search_budget * one_pass, 9))))


def compute_share(
    f: FlexoraSettings, o: OptimSettings, steps_per_epoch: int, outer_steps: int, passes: int = 1
) -> float:
    """The forward+backward work of ``outer_steps`` outer steps over stage 2's (both counted
    in the units ``passes_per_micro_batch`` gives; stage 2 runs whole micro-batches)."""
    stage2_steps = o.max_steps or max(1, math.ceil(o.epochs * steps_per_epoch))
    return outer_steps * outer_step_cost(f, o.grad_accum, passes) / (stage2_steps * o.grad_accum)


def inner_schedule(
    f: FlexoraSettings, o: OptimSettings, optimizer: Any, inner_total: int, steps_per_epoch: int
) -> Any:
    """The inner loop's learning-rate schedule over its ``inner_total`` optimizer steps.

    ``flexora.schedule``: search, the optim schedule squeezed into the search; stage2, the first
    ``inner_total`` steps of the schedule stage 2 will run, so LoRA learns in the search as it
    will there."""
    from transformers import get_cosine_schedule_with_warmup

    horizon = inner_total
    if f.schedule == "stage2":
        horizon = max(inner_total, o.max_steps or math.ceil(o.epochs * steps_per_epoch))
    return get_cosine_schedule_with_warmup(optimizer, int(o.warmup_ratio * horizon), horizon)


def warn_short_search(total: int, stable_steps: int) -> None:
    """A search no longer than the early stop's window can neither stop early nor settle."""
    if stable_steps and total <= stable_steps:
        log.warning(
            "the search is %d outer steps, no more than flexora.stable_steps=%d: it cannot stop "
            "early, and its selection may not have settled (raise flexora.search_budget or set "
            "flexora.search_steps)",
            total,
            stable_steps,
        )


@dataclass
class StableSelection:
    """Counts the consecutive outer steps over which the selection has not changed.

    ``update`` takes alpha after a step and returns True when the search should stop
    (``stable_steps`` unchanged steps in a row; never when ``stable_steps`` is 0).
    """

    rule: str = "positive"  # a final rule: validated counts as the positive rule here
    k: int = 0
    fraction: float = 0.5
    stable_steps: int = 0
    last: tuple[int, ...] | None = None
    unchanged: int = 0

    def selection(self, alpha: Sequence[float]) -> tuple[int, ...]:
        rule = provisional_rule(self.rule)
        # positive: the sign pattern itself; gate: gates above the uniform share. Computed here, as
        # an empty set is a pattern too (select_layers would fall back to the best layer, and
        # warn, at every early step).
        if rule == "positive":
            return tuple(i for i, a in enumerate(alpha) if a > 0)
        if rule == "gate":
            gates = gate_values(torch.tensor(list(alpha), dtype=torch.float64)).tolist()
            return tuple(i for i, g in enumerate(gates) if g > 1)
        return tuple(select_layers(alpha, rule, self.k, self.fraction))

    def update(self, alpha: Sequence[float]) -> bool:
        current = self.selection(alpha)
        self.unchanged = self.unchanged + 1 if current == self.last else 0
        self.last = current
        return self.stable_steps > 0 and self.unchanged >= self.stable_steps
