"""Resumable checkpoints: LoRA weights (safetensors), optimizer and scheduler state, position.

Only the trainable adapter is saved, never the base model, so a checkpoint of an 8B run is a few
tens of MB. The directory is replaced atomically: a crash mid-save leaves the previous checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from ..errors import FlexpaftError
from ..io import atomic_directory

STATE_FILE = "trainer_state.json"
ADAPTER_FILE = "adapter.safetensors"
STATES_FILE = "optim.pt"


@dataclass
class Position:
    step: int = 0  # optimizer steps done
    epoch: int = 0  # epoch in progress
    batch: int = 0  # micro-batches of that epoch already consumed (this rank)
    config_hash: str = ""
    tokens: int = 0
    seconds: float = 0.0


def save_lora_state(directory: Path, model: Any) -> None:
    """The trainable adapter weights only (never the base model), as safetensors."""
    state = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}
    save_file(state, str(directory / ADAPTER_FILE))


def load_lora_state(directory: Path, model: Any) -> None:
    set_peft_model_state_dict(model, load_file(str(directory / ADAPTER_FILE)))


def save_states(directory: Path, states: dict[str, Any]) -> None:
    """Optimizer, scheduler and RNG states (tensors and plain containers)."""
    torch.save(states, directory / STATES_FILE)


def load_states(directory: Path) -> dict[str, Any]:
    # weights_only=True: these are tensors and plain containers, never arbitrary objects.
    return torch.load(directory / STATES_FILE, map_location="cpu", weights_only=True)


def save_checkpoint(path: Path, model: Any, optimizer: Any, scheduler: Any, pos: Position) -> None:
    with atomic_directory(path) as tmp:
        save_lora_state(tmp, model)
        save_states(tmp, {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()})
        (tmp / STATE_FILE).write_text(json.dumps(asdict(pos), indent=2))


def read_position(path: Path) -> Position | None:
    f = path / STATE_FILE
    if not f.is_file():
        return None
    return Position(**json.loads(f.read_text()))


def load_checkpoint(path: Path, model: Any, optimizer: Any, scheduler: Any) -> Position:
    pos = read_position(path)
    if pos is None:
        raise FlexpaftError(f"no checkpoint in {path}")
    load_lora_state(path, model)
    states = load_states(path)
    optimizer.load_state_dict(states["optimizer"])
    scheduler.load_state_dict(states["scheduler"])
    return pos
