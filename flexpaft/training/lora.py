"""LoRA through PEFT: settings -> LoraConfig -> PeftModel."""

from __future__ import annotations

import re
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model

from flexpaft.errors import FlexpaftError
from flexpaft.settings.train import LoraSettings


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
    if settings.rank_pattern:
        kwargs["rank_pattern"] = dict(settings.rank_pattern)
    if settings.alpha_pattern:
        kwargs["alpha_pattern"] = dict(settings.alpha_pattern)
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
    """``model`` wrapped with a fresh LoRA, checked: each of ``layers`` adapts some module, and
    every rank/alpha pattern entry reached a module (PEFT ignores those that match nothing)."""
    check_layers_exist(layers or settings.layers_to_transform, model.config)
    try:
        peft_model = get_peft_model(model, lora_config(settings, layers))
    except ValueError as e:
        raise FlexpaftError(f"cannot add LoRA: {str(e).splitlines()[0]}") from None
    check_adapted(peft_model.get_base_model(), settings, layers)
    return peft_model


def layer_index(name: str, layers_pattern: str = "") -> int | None:
    """The layer index PEFT reads from a module name (its ``layers_to_transform`` rule)."""
    if layers_pattern:
        m = re.match(rf"(?:^|.*?\.){layers_pattern}\.(?P<idx>\d+)\.", name)
    else:
        m = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", name)
    return int(m.group("idx")) if m else None


def lora_ranks(model: torch.nn.Module, adapter: str = "default") -> dict[str, int]:
    """Rank of every module holding LoRA weights of ``adapter``, by name."""
    return {
        name: int(module.r[adapter])
        for name, module in model.named_modules()
        if isinstance(getattr(module, "lora_B", None), torch.nn.ModuleDict)
        and adapter in module.lora_B
    }


def check_adapted(
    model: torch.nn.Module, settings: LoraSettings, layers: list[int] | None = None
) -> dict[int, int]:
    """Adapted modules per requested layer; a one-line error where PEFT silently did less.

    ``model`` is the base model after LoRA injection (names as PEFT matched them). Fails when a
    layer of ``layers`` holds no LoRA module, when a rank_pattern/alpha_pattern entry matches
    no adapted module, or when a module's rank is not the one its pattern asks for.
    """
    ranks = lora_ranks(model)
    layers = layers if layers is not None else settings.layers_to_transform
    counts: dict[int, int] = {}
    if layers is not None:
        for name in ranks:
            idx = layer_index(name, settings.layers_pattern)
            if idx is not None:
                counts[idx] = counts.get(idx, 0) + 1
        empty = [i for i in sorted(set(layers)) if not counts.get(i)]
        if empty:
            raise FlexpaftError(
                f"LoRA adapts no module in layer(s) {', '.join(map(str, empty))}: "
                f"lora.target_modules {settings.target_modules} match nothing there "
                "(or lora.layers_pattern names another list)"
            )
    for kind, pattern in (
        ("rank_pattern", settings.rank_pattern),
        ("alpha_pattern", settings.alpha_pattern),
    ):
        for key, value in pattern.items():
            matched = [n for n in ranks if re.match(rf"(.*\.)?({key})$", n)]
            if not matched:
                raise FlexpaftError(f"lora.{kind} entry {key!r} matches no adapted module")
            wrong = [n for n in matched if kind == "rank_pattern" and ranks[n] != value]
            if wrong:
                raise FlexpaftError(
                    f"lora.rank_pattern asks r={value} for {wrong[0]} but PEFT built "
                    f"r={ranks[wrong[0]]} (another pattern entry matched it first)"
                )
    return {i: counts.get(i, 0) for i in sorted(set(layers))} if layers is not None else {}


def adapted_layers(model: torch.nn.Module) -> list[int]:
    """Block indices that hold LoRA weights (parsed from parameter names)."""
    found = set()
    for name, _ in model.named_parameters():
        if "lora_" in name:
            m = re.search(r"\.(\d+)\.", name)
            if m:
                found.add(int(m.group(1)))
    return sorted(found)


def adapted_module_names(model: torch.nn.Module) -> list[str]:
    """The leaf names of the modules that hold a LoRA (``q_proj``, ``v_proj``...): an explicit
    ``target_modules`` list, which ``layers_to_transform`` needs ("all-linear" cannot carry it)."""
    return sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if isinstance(getattr(module, "lora_A", None), torch.nn.ModuleDict)
        }
    )


def check_layers_exist(layers: list[int] | None, config: Any) -> None:
    """Every block index in ``layers`` exists in a model of ``config`` (PEFT would answer a
    missing one with "target modules not found", which does not say which block)."""
    n = getattr(config, "num_hidden_layers", None)
    if not layers or not isinstance(n, int):
        return
    missing = sorted(i for i in layers if i >= n)
    if missing:
        raise FlexpaftError(
            f"lora.layers_to_transform: block {missing[0]} does not exist, the model has {n} "
            f"blocks (0-{n - 1})"
        )
