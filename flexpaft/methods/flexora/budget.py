"""How long the search runs: a budget of outer steps, and an early stop once the selection settles.

Budget. ``flexora.search_steps`` (outer steps) or ``flexora.search_examples`` (training examples)
when given; otherwise the auto budget: ``flexora.search_budget`` times stage 2's compute, with
compute counted in forward+backward passes. Stage 2 runs ``epochs x steps_per_epoch`` optimizer
steps (or ``max_steps``) of ``grad_accum`` micro-batches each, one pass per micro-batch. One
first-order outer step is ``grad_accum`` training micro-batches plus ``val_batches`` validation
micro-batches (a forward and a backward each: alpha's gradient needs the backward down to block
0). With ``unroll = K``, an outer step differentiates K inner steps and then commits them: about 3
micro-batches' work per training micro-batch. The budget never exceeds one pass over the training
split (the paper's search length).

The unit (``flexora.budget_unit``). The first-order search runs each micro-batch as row chunks
(``flexora.micro_batch``, for memory). Where time follows rows (a CPU: the chunks of a micro-batch
cost what the whole would) a micro-batch is one unit however it is split (``rows``). Where a pass
costs the same for 2 rows as for 8 (a GPU at LoRA batch sizes: launch- and weight-read-bound;
measured on an H200 at the 1B and 8B shapes, docs/RESULTS.md) every chunk is a pass of its own
(``pass``). ``auto`` takes ``pass`` on an accelerator and ``rows`` on a CPU, so the same settings
can give a different length on each: set ``flexora.search_steps`` to pin it.

Early stop. After every outer step the selection (``flexora.selection`` applied to alpha; for the
default rule, the sign pattern of alpha) is compared with the previous one; once it has not changed
for ``flexora.stable_steps`` consecutive outer steps the search stops.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from flexpaft.errors import FlexpaftError
from flexpaft.methods.flexora.gates import gate_values
from flexpaft.methods.flexora.select import select_layers
from flexpaft.settings.train import FlexoraSettings, OptimSettings

# Forward+backward micro-batches of work per training micro-batch of an unrolled outer step: the
# differentiable inner step (a backward with create_graph), the backward through it, the commit.
UNROLLED_COST = 3


def passes_per_micro_batch(f: FlexoraSettings, batch_size: int, rows: int, device: str) -> int:
    """Budget units one first-order micro-batch of ``batch_size`` rows costs when it runs as
    chunks of ``rows`` rows (0: whole) on ``device`` (a torch device type such as 'cuda')."""
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
    f: FlexoraSettings,
    o: OptimSettings,
    steps_per_epoch: int,
    global_batch: int,
    passes: int = 1,
) -> int:
    """Outer steps the search may take (before any early stop).

    ``steps_per_epoch`` counts optimizer steps over the training split (stage 2 trains on the same
    split with the same batch); ``global_batch`` is examples per optimizer step over all ranks;
    ``passes`` is what one first-order micro-batch costs (``passes_per_micro_batch``).
    """
    if f.search_steps < 0 or f.search_examples < 0:
        raise FlexpaftError("flexora.search_steps and flexora.search_examples must be >= 0")
    per_outer = max(1, f.unroll)
    one_pass = max(1, math.ceil(steps_per_epoch / per_outer))
    if f.search_steps > 0:
        return f.search_steps
    if f.search_examples > 0:
        return max(1, math.ceil(math.ceil(f.search_examples / global_batch) / per_outer))
    if not 0 < f.search_budget <= 1:
        raise FlexpaftError(
            f"flexora.search_budget must be in (0, 1] (a share of stage 2), got {f.search_budget}"
        )
    stage2_steps = o.max_steps or max(1, math.ceil(o.epochs * steps_per_epoch))
    work = f.search_budget * stage2_steps * o.grad_accum
    return max(1, min(one_pass, math.floor(work / outer_step_cost(f, o.grad_accum, passes))))


@dataclass
class StableSelection:
    """Counts the consecutive outer steps over which the selection has not changed.

    ``update`` takes alpha after a step and returns True when the search should stop
    (``stable_steps`` unchanged steps in a row; never when ``stable_steps`` is 0).
    """

    rule: str = "positive"
    k: int = 0
    fraction: float = 0.5
    stable_steps: int = 0
    last: tuple[int, ...] | None = None
    unchanged: int = 0

    def selection(self, alpha: Sequence[float]) -> tuple[int, ...]:
        # positive: the sign pattern itself; gate: gates above the uniform share. Computed here, as
        # an empty set is a pattern too (select_layers would fall back to the best layer, and
        # warn, at every early step).
        if self.rule == "positive":
            return tuple(i for i, a in enumerate(alpha) if a > 0)
        if self.rule == "gate":
            gates = gate_values(torch.tensor(list(alpha), dtype=torch.float64)).tolist()
            return tuple(i for i, g in enumerate(gates) if g > 1)
        return tuple(select_layers(alpha, self.rule, self.k, self.fraction))

    def update(self, alpha: Sequence[float]) -> bool:
        current = self.selection(alpha)
        self.unchanged = self.unchanged + 1 if current == self.last else 0
        self.last = current
        return self.stable_steps > 0 and self.unchanged >= self.stable_steps
