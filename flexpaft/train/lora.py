"""LoRA through PEFT: settings -> LoraConfig -> PeftModel."""

from __future__ import annotations

from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model

from ..errors import FlexpaftError
from .config import LoraSettings


def lora_config(settings: LoraSettings, layers: list[int] | None = None) -> LoraConfig:
    """A standard PEFT LoraConfig; ``layers`` overrides settings.layers_to_transform."""
    targets: Any = settings.target_modules
    if targets == ["all-linear"]:
        targets = "all-linear"
    layers = layers if layers is not None else settings.layers_to_transform
    kwargs: dict[str, Any] = {}
    if layers is not None:
        kwargs["layers_to_transform"] = sorted(int(i) for i in layers)
        if settings.layers_pattern:
            kwargs["layers_pattern"] = settings.layers_pattern
    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        use_dora=settings.use_dora,
        use_rslora=settings.use_rslora,
        bias="none",
        task_type="CAUSAL_LM",
        **kwargs,
    )


def add_lora(
    model: torch.nn.Module, settings: LoraSettings, layers: list[int] | None = None
) -> PeftModel:
    try:
        peft_model = get_peft_model(model, lora_config(settings, layers))
    except ValueError as e:
        raise FlexpaftError(f"cannot add LoRA: {str(e).splitlines()[0]}") from None
    return peft_model


def adapted_layers(model: torch.nn.Module) -> list[int]:
    """Block indices that hold LoRA weights (parsed from parameter names)."""
    import re

    found = set()
    for name, _ in model.named_parameters():
        if "lora_" in name:
            m = re.search(r"\.(\d+)\.", name)
            if m:
                found.add(int(m.group(1)))
    return sorted(found)
