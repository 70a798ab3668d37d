"""The search's resumable checkpoint: LoRA weights, alpha, optimizer states and the position.

Written atomically as one directory, ``<output_dir>/flexora/checkpoint``; a checkpoint of a
different search configuration (``config_hash``) is refused rather than silently continued.
(The official code kept alpha on the CPU and never saved it.)
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from flexpaft.errors import FlexpaftError
from flexpaft.io import atomic_directory
from flexpaft.methods.flexora.outcome import CHECKPOINT
from flexpaft.training.checkpoint import (
    load_lora_state,
    load_states,
    read_state_json,
    save_lora_state,
    save_states,
)

STATE_FILE = "search_state.json"
ALPHA_FILE = "alpha.safetensors"
log = logging.getLogger(__name__)


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


def save_search(search: Any) -> None:
    """Checkpoint a running ``LayerSearch``: its position, optimizers, alpha and LoRA."""
    position = {
        "step": search.step,
        "inner_steps": search.inner_steps,
        "train_position": [search.train.epoch, search.train.batch],
        "val_position": search.val.position,
        "stable": [list(search.stability.last or ()), search.stability.unchanged],
        "stopped_early": search.stopped_early,
        "seconds": search.seconds,
        "config_hash": search.config_hash,
    }
    states = {
        "optimizer": search.optimizer.state_dict(),
        "scheduler": search.scheduler.state_dict(),
        "alpha_optimizer": search.alpha_optimizer.state_dict(),
        "rng": torch.get_rng_state(),
    }
    save_search_checkpoint(
        search.out / CHECKPOINT,
        search.acc.unwrap_model(search.wrapped),
        search.gates.alpha,
        states,
        position,
    )


def resume_search(search: Any) -> bool:
    """Put a ``LayerSearch`` back where its checkpoint left it; False when there is none."""
    ckpt = search.out / CHECKPOINT
    if not (search.cfg.resume and read_search_position(ckpt) is not None):
        return False
    state, opt = load_search_checkpoint(
        ckpt, search.acc.unwrap_model(search.wrapped), search.gates.alpha, search.config_hash
    )
    search.optimizer.load_state_dict(opt["optimizer"])
    search.scheduler.load_state_dict(opt["scheduler"])
    search.alpha_optimizer.load_state_dict(opt["alpha_optimizer"])
    torch.set_rng_state(opt["rng"])
    search.step, search.inner_steps = state["step"], state["inner_steps"]
    search.train.seek(*state["train_position"])
    search.val.position = state["val_position"]
    last, search.stability.unchanged = state["stable"]
    search.stopped_early = state["stopped_early"]
    search.stability.last = tuple(last) if search.step else None
    search.seconds = state["seconds"]
    log.info("resuming the layer search at step %d of %d", search.step, search.total)
    return True


def read_alpha_log(path: Path, step: int) -> list[dict[str, Any]]:
    """alpha.jsonl's rows up to ``step`` (lines written after the last checkpoint belong to
    steps that a resumed search redoes)."""
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["step"] <= step]
