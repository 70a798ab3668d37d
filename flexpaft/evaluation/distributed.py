"""``flexpaft eval`` under ``accelerate launch`` or torchrun: the templates are split by rank.

Every process loads the model and scores every example under its share of the templates
(template ``i`` goes to rank ``i % W``); the per-template results are gathered so that every rank
holds the whole EvalResult and the main process writes it. Per-template results are what the
metrics need, so nothing is averaged across ranks.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from flexpaft.evaluation import metrics
from flexpaft.evaluation.evaluator import EvalResult
from flexpaft.prompts import Template


def process_state() -> Any:
    """accelerate's PartialState when a launcher started several processes, else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    from accelerate import PartialState

    # Without GPUs accelerate only forms a process group (gloo) when told cpu=True.
    return PartialState(cpu=not torch.cuda.is_available())


def evaluate_sharded(
    state: Any,
    evaluate: Callable[[list[Template]], EvalResult],
    templates: list[Template],
    thresholds: tuple[float, ...],
) -> EvalResult:
    """``evaluate`` on this rank's templates, then every rank's results in template order."""
    from accelerate.utils import gather_object

    mine = templates[state.process_index :: state.num_processes]
    part = evaluate(mine).to_dict() if mine else None
    parts = [EvalResult.from_dict(p) for p in gather_object([part]) if p is not None]
    by_id = {t.id: t for p in parts for t in p.per_template}
    first = parts[0]
    res = EvalResult(
        first.task,
        first.format,
        first.mode,
        [by_id[t.id] for t in templates],
        max(p.seconds for p in parts),
    )
    res.summary = metrics.summarize(res.accuracies, thresholds)
    return res
