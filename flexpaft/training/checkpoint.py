"""Resumable checkpoints: LoRA weights (safetensors), optimizer, scheduler and RNG states, position.

Only the trainable adapter is saved, never the base model, so a checkpoint of an 8B run is a few
tens of MB. The directory is replaced atomically: a crash mid-save leaves the previous checkpoint.
The RNG states (Python, NumPy, torch CPU and CUDA) make a resumed run draw the same LoRA dropout
masks as an uninterrupted one. A damaged file is reported in one line, never a traceback.
"""

from __future__ import annotations

import json
import math
import pickle
import random
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from flexpaft.errors import FlexpaftError, short_repr
from flexpaft.io import atomic_directory

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

    def check(self) -> None:
        """Raise ValueError naming the first field of the wrong type or range: a hand-edited or
        foreign state ("step": "3", 1e9 or -5) must not become a resume at a nonsense step."""
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "str":
                if not isinstance(value, str):
                    raise ValueError(f"{f.name} is {short_repr(value, 40)}, not text")
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{f.name} is {short_repr(value, 40)}, not a number")
            if f.type == "int" and not isinstance(value, int):
                raise ValueError(f"{f.name} is {short_repr(value, 40)}, not a whole number")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{f.name} is {short_repr(value, 40)}, not 0 or more")


def save_lora_state(directory: Path, model: Any) -> None:
    """The trainable adapter weights only (never the base model), as safetensors."""
    state = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}
    save_file(state, str(directory / ADAPTER_FILE))


def load_lora_state(directory: Path, model: Any) -> None:
    try:
        state = load_file(str(directory / ADAPTER_FILE))
    except Exception as e:  # safetensors raises its own error type for a torn file
        raise _damaged(directory, ADAPTER_FILE, e) from None
    # A checkpoint of another rank or target set would fail inside PEFT with a size-mismatch
    # traceback (or, for missing keys, resume with fresh weights): compare first.
    expected = get_peft_model_state_dict(model)
    for name, tensor in expected.items():
        if name not in state:
            raise _damaged(directory, ADAPTER_FILE, ValueError(f"{name} is missing"))
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise _damaged(
                directory,
                ADAPTER_FILE,
                ValueError(
                    f"{name} has shape {list(state[name].shape)}, the model's is "
                    f"{list(tensor.shape)} (another lora.r or model?)"
                ),
            )
    extra = sorted(set(state) - set(expected))
    if extra:
        raise _damaged(directory, ADAPTER_FILE, ValueError(f"{extra[0]} is not in the model"))
    set_peft_model_state_dict(model, state)


def check_optimizer_state(directory: Path, saved: Any, optimizer: Any) -> None:
    """Every per-parameter tensor in the saved optimizer state (Adam's moments) has its
    parameter's shape; ``load_state_dict`` does not check, and the first step would fail."""
    try:
        groups = saved["param_groups"]
        state = saved["state"]
        if len(groups) != len(optimizer.param_groups):
            raise ValueError(
                f"{len(groups)} parameter groups, the optimizer has {len(optimizer.param_groups)}"
            )
        for g_saved, g_now in zip(groups, optimizer.param_groups):
            if len(g_saved["params"]) != len(g_now["params"]):
                raise ValueError(
                    f"{len(g_saved['params'])} parameters in a group, the optimizer has "
                    f"{len(g_now['params'])}"
                )
            for idx, p in zip(g_saved["params"], g_now["params"]):
                for key, value in state.get(idx, {}).items():
                    if torch.is_tensor(value) and value.ndim > 0 and value.shape != p.shape:
                        raise ValueError(
                            f"{key} of parameter {idx} has shape {list(value.shape)}, the "
                            f"parameter's is {list(p.shape)}"
                        )
    except (KeyError, TypeError, AttributeError) as e:
        raise _damaged(
            directory, STATES_FILE, ValueError(f"malformed optimizer state ({e})")
        ) from None
    except ValueError as e:
        raise _damaged(directory, STATES_FILE, e) from None


def save_states(directory: Path, states: dict[str, Any]) -> None:
    """Optimizer, scheduler and RNG states (tensors and plain containers)."""
    torch.save(states, directory / STATES_FILE)


def load_states(directory: Path) -> dict[str, Any]:
    # weights_only=True: these are tensors and plain containers, never arbitrary objects; a
    # pickle with anything else in it is refused, and reported like a torn file.
    try:
        states = torch.load(directory / STATES_FILE, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as e:
        raise _damaged(directory, STATES_FILE, e) from None
    if not isinstance(states, dict) or "optimizer" not in states or "scheduler" not in states:
        raise _damaged(directory, STATES_FILE, ValueError("no optimizer or scheduler state"))
    return states


def rng_states() -> dict[str, Any]:
    """Every random stream training draws from, as tensors and plain containers only (so the
    file loads with ``weights_only=True``)."""
    version, mt, gauss = random.getstate()
    kind, keys, npos, has_gauss, cached = np.random.get_state()
    states = {
        "python": [version, list(mt), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), npos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def saved_rng_states(path: Path) -> dict[str, Any] | None:
    """The RNG states in checkpoint ``path`` (None in checkpoints written before they were
    saved). The trainer sets them once its data iterator exists: creating one draws a seed
    from the torch RNG, which the uninterrupted run did before it saved them."""
    return load_states(path).get("rng")


def set_rng_states(states: dict[str, Any]) -> None:
    version, mt, gauss = states["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, keys, npos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), npos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(path: Path, model: Any, optimizer: Any, scheduler: Any, pos: Position) -> None:
    with atomic_directory(path) as tmp:
        save_lora_state(tmp, model)
        save_states(
            tmp,
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rng_states(),
            },
        )
        (tmp / STATE_FILE).write_text(json.dumps(asdict(pos), indent=2))


def _damaged(path: Path, name: str, e: BaseException) -> FlexpaftError:
    why = (str(e).splitlines() or [type(e).__name__])[0][:120]
    return FlexpaftError(
        f"checkpoint {path} is damaged ({name}: {why}): --set resume=false to start over"
    )


def read_state_json(path: Path, name: str = STATE_FILE) -> dict[str, Any]:
    """A checkpoint's JSON state file as a dict; a torn or foreign one is a one-line error."""
    try:
        data = json.loads((path / name).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise _damaged(path, name, e) from None
    if not isinstance(data, dict):
        raise _damaged(path, name, ValueError("not a JSON object"))
    return data


def read_position(path: Path) -> Position | None:
    """The checkpoint's position, None when there is none; a torn file is a one-line error."""
    f = path / STATE_FILE
    if not f.is_file():
        return None
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
        known = {x.name for x in fields(Position)}
        if not isinstance(data, dict) or not set(data) <= known:
            raise ValueError("not a trainer state")
        pos = Position(**data)
        pos.check()
        return pos
    except (OSError, UnicodeDecodeError, ValueError, TypeError) as e:
        raise _damaged(path, STATE_FILE, e) from None


def load_checkpoint(path: Path, model: Any, optimizer: Any, scheduler: Any) -> Position:
    pos = read_position(path)
    if pos is None:
        raise FlexpaftError(f"no checkpoint in {path}")
    # Every file is read before anything is changed, so a damaged one leaves a fresh run intact.
    states = load_states(path)
    check_optimizer_state(path, states["optimizer"], optimizer)
    load_lora_state(path, model)
    try:
        optimizer.load_state_dict(states["optimizer"])
        scheduler.load_state_dict(states["scheduler"])
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as e:
        raise _damaged(path, STATES_FILE, e) from None
    return pos
