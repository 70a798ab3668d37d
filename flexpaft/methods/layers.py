"""Layer policies: which transformer blocks get the LoRA that stage 2 trains.

``all``: the blocks the LoRA settings name (every block, or ``lora.layers_to_transform``);
``search``: Flexora's bilevel search picks them (``flexpaft.methods.flexora``), and stage 2
trains a fresh LoRA on those blocks only. ``flexpaft.settings.methods`` says which policy each
method uses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flexpaft.prompts import Template
from flexpaft.settings.train import LoraSettings, TrainConfig
from flexpaft.tasks.spec import AnswerFormat, Example, TaskSpec


@dataclass
class LayerChoice:
    """What stage 2 trains: ``layers`` (None = as ``lora`` says), with ``lora`` settings (a
    search names the block list and may set per-block ranks), on ``examples`` (a search keeps
    its validation examples out unless ``flexora.stage2_examples=all``); ``summary`` goes into
    the manifest."""

    layers: list[int] | None
    lora: LoraSettings
    examples: list[Example]
    summary: dict[str, Any] = field(default_factory=dict)


def configured_blocks(
    cfg: TrainConfig, model: Any, tokenizer: Any, task: TaskSpec, fmt: AnswerFormat,
    examples: list[Example], templates: list[Template], accelerator: Any,
    progress: bool = True, own: Template | None = None,
) -> LayerChoice:  # fmt: skip
    return LayerChoice(cfg.lora.layers_to_transform, cfg.lora, examples)


def searched_blocks(
    cfg: TrainConfig, model: Any, tokenizer: Any, task: TaskSpec, fmt: AnswerFormat,
    examples: list[Example], templates: list[Template], accelerator: Any,
    progress: bool = True, own: Template | None = None,
) -> LayerChoice:  # fmt: skip
    """Flexora's search on ``model`` (which it hands back without LoRA)."""
    from accelerate.utils import set_seed

    from flexpaft.memory import release_memory
    from flexpaft.methods.flexora.search import search_layers

    outcome = search_layers(
        cfg, model, tokenizer, task, fmt, examples, templates, accelerator, progress, own=own
    )
    kept = outcome.train_examples if cfg.flexora.stage2_examples == "train" else examples
    # Stage 2 starts from the seed, as a LoRA without a search does; the search's freed heap goes
    # back before stage 2 adds its own peak.
    set_seed(cfg.seed)
    release_memory()
    # A fresh LoRA on the selected blocks only (no zero adapters left elsewhere), named as the
    # search found them, with the ranks it chose (flexora.ranks).
    return LayerChoice(outcome.layers, outcome.stage2_lora(cfg.lora), kept, outcome.summary())


LAYER_POLICIES: dict[str, Callable[..., LayerChoice]] = {
    "all": configured_blocks,
    "search": searched_blocks,
}
