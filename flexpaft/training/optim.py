"""Optimizers and learning-rate schedules by transformers' own names (TrainingArguments ``optim``
and ``lr_scheduler_type``), so a recipe written for the HF Trainer ports as it is."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from flexpaft.settings.train import OPTIMIZERS, SCHEDULERS  # noqa: F401  (the names it builds)

if TYPE_CHECKING:  # torch loads only to build an optimizer, not for the config's name lists
    import torch


def make_optimizer(
    name: str, params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    import torch

    params = list(params)
    if name in ("adamw_torch", "adamw_torch_fused"):
        fused = name == "adamw_torch_fused" and any(p.is_cuda for p in params)
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        # The HF Trainer's settings: an external learning rate and schedule, no relative steps.
        return Adafactor(
            params, lr=lr, weight_decay=weight_decay, scale_parameter=False, relative_step=False
        )
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}")  # OptimSettings validates the name first


def make_scheduler(name: str, optimizer: Any, warmup_steps: int, total_steps: int) -> Any:
    from transformers import get_scheduler

    return get_scheduler(
        name, optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps
    )
