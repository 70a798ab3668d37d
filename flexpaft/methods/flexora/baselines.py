"""LoRA-drop's block scores for a trained all-block adapter, on the batches its training saw.

LoRA-drop (the prior art Flexora is compared against) trains LoRA on every block for a short
while, runs some training data through it, and keeps the blocks whose LoRA branch moves the
hidden states most (``select.lora_drop_ranking``). This module feeds that ranking the same
examples, templates and batches as the training run that produced the adapter.
"""

from __future__ import annotations

from itertools import islice
from pathlib import Path
from typing import Any

from flexpaft.errors import FlexpaftError
from flexpaft.methods.flexora.blocks import find_blocks
from flexpaft.methods.flexora.select import lora_drop_ranking
from flexpaft.settings.train import TrainConfig


def _training_batches(cfg: TrainConfig, batches: int, what: str) -> tuple[Any, list]:
    """(base model, the first ``batches`` training batches of a run of ``cfg``), drawn as that
    run draws them: the same data slice, templates and seed."""
    from accelerate import Accelerator

    from flexpaft.methods.templates import drawn_own_template, training_templates
    from flexpaft.tasks.data import split_examples
    from flexpaft.training.loader import make_loader

    if batches < 1:
        raise FlexpaftError(f"{what} needs at least one batch, not {batches}")
    task, fmt, examples = cfg.data.load("train")
    if cfg.validation.enabled:
        # The trainer holds these out before training; they are not training batches.
        examples, _ = split_examples(examples, cfg.validation.eval_examples, cfg.seed + 2)
    model, tok = cfg.model.load()
    templates, _ = training_templates(cfg, task, fmt, examples, model, tok)
    own = drawn_own_template(cfg, task, fmt)
    loader, _ = make_loader(
        cfg, task, fmt, examples, templates, tok, cfg.seed, Accelerator(), own=own
    )
    return model, list(islice(loader, batches))


def lora_drop_scores(cfg: TrainConfig, adapter: str | Path, batches: int = 8) -> list[float]:
    """LoRA-drop importance per block of ``adapter`` (trained with ``cfg``), over ``batches``
    training batches drawn as that run drew them (same data slice, templates and seed)."""
    from flexpaft.evaluation.evaluator import load_adapter

    model, drawn = _training_batches(cfg, batches, "LoRA-drop")
    return lora_drop_ranking(load_adapter(model, adapter).eval(), drawn)


def gradient_probe_scores(cfg: TrainConfig, batches: int = 8) -> list[float]:
    """Per-block LoRA gradient norms at the start of a run of ``cfg`` (``gradient_probe_ranking``),
    over its first ``batches`` training batches, with LoRA on every block and no step taken."""
    import dataclasses

    from flexpaft.methods.flexora.select import gradient_probe_ranking
    from flexpaft.training.data import answer_loss
    from flexpaft.training.lora import add_lora

    model, drawn = _training_batches(cfg, batches, "the gradient probe")
    layout = find_blocks(model)
    model = add_lora(model, dataclasses.replace(cfg.lora, layers_to_transform=None))
    return gradient_probe_ranking(model, drawn, answer_loss, layout)
