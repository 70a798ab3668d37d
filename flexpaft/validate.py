"""Checks that run before the first expensive step (model load, download, training).

A mistake found after an hour of training costs the hour; every check here is cheap and raises a
one-line ``FlexpaftError`` naming the value, file or directory at fault.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from flexpaft.errors import FlexpaftError, short_repr

# The longest sequence a config may ask for (a million tokens): past it a value is a typo, and
# 2**70 would overflow the tensors built from it.
MAX_TOKENS = 1 << 20

# Allowed ranges of numeric config values, by dotted key; they apply to every config class that
# has the key (train, eval and search share ``data.*`` and ``model.*``). (low, high, low_open):
# None = unbounded; low_open means the value must be strictly greater than ``low``.
RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    "seed": (0, 2**32 - 1, False),
    "checkpoint_every": (0, None, False),
    "log_every": (0, None, False),
    "data.limit": (0, None, False),
    "data.skip": (0, None, False),
    "data.max_field_chars": (0, None, False),
    "data.max_length": (1, MAX_TOKENS, False),
    "optim.lr": (0, None, True),
    "optim.weight_decay": (0, None, False),
    "optim.epochs": (0, None, True),
    "optim.max_steps": (0, None, False),
    "optim.batch_size": (1, None, False),
    "optim.grad_accum": (1, None, False),
    "optim.warmup_ratio": (0, 1, False),
    "optim.max_grad_norm": (0, None, False),
    "optim.num_workers": (-1, None, False),
    "lora.r": (1, None, False),
    "lora.alpha": (0, None, True),
    "lora.dropout": (0, 0.999, False),
    "prompts.k_steps": (1, None, False),
    "prompts.topaccuracy_examples": (1, None, False),
    "flexora.val_examples": (0, None, False),
    "flexora.search_steps": (0, None, False),
    "flexora.search_examples": (0, None, False),
    "flexora.alpha_lr": (0, None, True),
    "flexora.val_batches": (1, None, False),
    "flexora.micro_batch": (0, None, False),
    "flexora.unroll": (0, None, False),
    "flexora.k": (0, None, False),
    "flexora.fraction": (0, 1, True),
    "flexora.search_budget": (0, 1, True),
    "flexora.stable_steps": (0, None, False),
    # flexpaft eval
    "batch_size": (1, None, False),
    "max_batch_tokens": (1, None, False),
    "max_length": (1, MAX_TOKENS, False),
    "max_new_tokens": (1, None, False),
    "prompts.max_templates": (1, None, False),
    "thresholds[]": (0, 1, False),
}


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _describe(low: float | None, high: float | None, low_open: bool) -> str:
    if low is not None and high is not None:
        return (
            f"between {_num(low)} and {_num(high)}"
            if not low_open
            else f"in ({_num(low)}, {_num(high)}]"
        )
    if low is not None:
        if low_open:
            return "positive" if low == 0 else f"greater than {_num(low)}"
        return "0 or more" if low == 0 else f"at least {_num(low)}"
    return f"at most {_num(high)}"


def check_ranges(cfg: Any, prefix: str = "") -> None:
    """Raise on the first numeric config value outside its range in ``RANGES``."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            check_ranges(value, key + ".")
            continue
        if isinstance(value, list) and f"{key}[]" in RANGES:
            for i, v in enumerate(value):
                _check_one(f"{key}[{i}]", v, RANGES[f"{key}[]"])
            continue
        if key in RANGES:
            _check_one(key, value, RANGES[key])


def _check_one(key: str, value: Any, rule: tuple[float | None, float | None, bool]) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    low, high, low_open = rule
    bad = (
        not math.isfinite(value)
        or (low is not None and (value <= low if low_open else value < low))
        or (high is not None and value > high)
    )
    if bad:
        raise FlexpaftError(f"{key} must be {_describe(low, high, low_open)}, got {value!r}")


# ---- files we read ---------------------------------------------------------------------------
def check_input_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` exists, is a file (not a directory) and can be opened."""
    p = Path(path)
    if p.is_dir():
        raise FlexpaftError(f"{what} {p} is a directory, not a file")
    if p.exists() and not p.is_file():
        # /dev/null, a FIFO, a socket: it exists, so "not found" would mislead.
        raise FlexpaftError(f"{what} {p} is not a regular file (a device, pipe or socket)")
    if not p.is_file():
        raise FlexpaftError(f"{what} not found: {p}")
    try:
        with open(p, "rb"):
            pass
    except OSError as e:
        raise FlexpaftError(f"cannot read {what} {p}: {e.strerror or e}") from None
    return p


# ---- places we write -------------------------------------------------------------------------
def _existing_ancestor(p: Path) -> Path:
    p = p.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable_dir(path: str | os.PathLike, what: str = "output directory") -> Path:
    """``path`` is (or can become) a directory we can write into; nothing is created."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise FlexpaftError(f"{what} {p} is a file, not a directory")
    base = _existing_ancestor(p)
    if not base.is_dir():
        raise FlexpaftError(f"{what} {p} cannot be created: {base} is a file")
    if not os.access(base, os.W_OK | os.X_OK):
        raise FlexpaftError(f"{what} {p} is not writable (no write permission on {base})")
    try:
        # os.access says yes for root and on read-only mounts; one real write settles it.
        with tempfile.TemporaryFile(dir=base):
            pass
    except OSError as e:
        raise FlexpaftError(f"{what} {p} is not writable: {e.strerror or e}") from None
    return p


def check_writable_file(path: str | os.PathLike, what: str = "output file") -> Path:
    """``path`` is a file we may (over)write: not a directory, its directory writable."""
    p = Path(path)
    if p.is_dir():
        raise FlexpaftError(f"{what} {p} is a directory, not a file")
    check_writable_dir(p.parent, f"directory of {what} {p}")
    return p


def check_eval_output(out: Path) -> None:
    """An eval output directory whose results.json (replaced at the end) is ours, or absent."""
    f = Path(out) / "results.json"
    if not f.exists():
        return
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        data = None
    if not isinstance(data, dict) or "per_template" not in data:
        raise FlexpaftError(
            f"{f} was not written by flexpaft eval and would be replaced: move it away or "
            "choose another output_dir"
        )


# ---- adapters --------------------------------------------------------------------------------
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def check_adapter_dir(path: str | os.PathLike, check_values: bool = True) -> Path:
    """A PEFT adapter directory flexpaft can load safely: a readable adapter_config.json, a
    safetensors weights file (pickled ``.bin`` weights are refused: loading one runs code), and,
    with ``check_values``, only finite weights (a diverged run's NaN adapter scores like a model)."""
    p = Path(path)
    if not p.exists():
        raise FlexpaftError(f"adapter not found: {p}")
    if not p.is_dir():
        raise FlexpaftError(f"adapter {p} is a file; give the adapter directory")
    conf = p / "adapter_config.json"
    if not conf.is_file():
        raise FlexpaftError(f"not a PEFT adapter directory (no adapter_config.json): {p}")
    try:
        data = json.loads(conf.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FlexpaftError(f"adapter {p}: adapter_config.json is unreadable ({e})") from None
    if not isinstance(data, dict) or "peft_type" not in data:
        raise FlexpaftError(f"adapter {p}: adapter_config.json is not a PEFT config (no peft_type)")
    if data["peft_type"] != "LORA":
        # flexpaft writes LoRA adapters; another type (or an edited field) would fail deep in
        # PEFT with an unrelated tensor error.
        raise FlexpaftError(
            f"adapter {p}: adapter_config.json has peft_type {short_repr(data['peft_type'], 40)}; "
            "flexpaft loads LoRA adapters (peft_type LORA)"
        )
    weights = p / ADAPTER_WEIGHTS
    if not weights.is_file():
        if any(p.glob("adapter_model*.bin")) or any(p.glob("*.pt")):
            raise FlexpaftError(
                f"adapter {p} holds only pickled weights (.bin/.pt); flexpaft loads safetensors "
                "only, because unpickling runs arbitrary code"
            )
        raise FlexpaftError(f"adapter {p} has no weights ({ADAPTER_WEIGHTS} is missing)")
    tensors = read_safetensors(weights, f"adapter {p}")
    if check_values:
        check_finite_tensors(tensors, f"adapter {p}")
    return p


def read_safetensors(path: Path, what: str) -> dict[str, Any]:
    """All tensors of a safetensors file; a damaged file is one line, not a traceback."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise FlexpaftError(
            f"{what}: {path.name} is damaged ({str(e).splitlines()[0][:120]})"
        ) from None


def check_finite_tensors(tensors: dict[str, Any], what: str) -> None:
    import torch

    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise FlexpaftError(
                f"{what} has non-finite weights (NaN or inf in {name}): the run that made it "
                "diverged; retrain with a lower optim.lr or model.dtype=float32/bfloat16"
            )
