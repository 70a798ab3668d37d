"""The search's resumable checkpoint: LoRA weights, alpha, optimizer states and the position.

Written atomically as one directory, ``<output_dir>/flexora/checkpoint``; a checkpoint of a
different search configuration (``config_hash``) is refused rather than silently continued.
(The official code kept alpha on the CPU and never saved it.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from flexpaft.errors import FlexpaftError
from flexpaft.io import atomic_directory
from flexpaft.training.checkpoint import (
    load_lora_state,
    load_states,
    read_state_json,
    save_lora_state,
    save_states,
)

STATE_FILE = "search_state.json"
ALPHA_FILE = "alpha.safetensors"


def save_search_checkpoint(
    directory: Path,
    model: nn.Module,
    alpha: torch.Tensor,
    states: dict[str, Any],
    position: dict[str, Any],
) -> None:
    """LoRA state of ``model``, ``alpha``, ``states`` (optimizers, rng) and ``position`` (json)."""
    with atomic_directory(directory) as tmp:
        save_lora_state(tmp, model)
        save_file({"alpha": alpha.detach().cpu()}, str(tmp / ALPHA_FILE))
        save_states(tmp, states)
        (tmp / STATE_FILE).write_text(json.dumps(position, indent=2))


def read_search_position(directory: Path) -> dict[str, Any] | None:
    """The saved position (step, data positions, seconds, config_hash) or None if none; a torn
    or foreign state file is a one-line error."""
    return read_state_json(directory, STATE_FILE) if (directory / STATE_FILE).is_file() else None


def load_search_checkpoint(
    directory: Path, model: nn.Module, alpha: torch.Tensor, config_hash: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load LoRA weights into ``model`` and alpha in place; return (position, states)."""
    position = read_search_position(directory)
    if position is None:
        raise FlexpaftError(f"{directory} holds no search checkpoint")
    if position.get("config_hash") != config_hash:
        raise FlexpaftError(
            f"{directory} holds a search of a different configuration: use another output_dir, "
            "or --set resume=false to start over"
        )
    load_lora_state(directory, model)
    with torch.no_grad():
        alpha.copy_(load_file(str(directory / ALPHA_FILE))["alpha"])
    return position, load_states(directory)
