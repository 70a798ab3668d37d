"""Flexora: choose which transformer blocks get LoRA by a bilevel search over per-block gates.

blocks.py finds the blocks, gates.py gates each block's LoRA output by N * softmax(alpha),
search.py learns alpha on held-out data while LoRA trains (its gradients in hypergrad.py, its
length in budget.py, its data in stream.py and wordings.py, its checkpoint in checkpoint.py), and
conclude.py turns alpha into layers: select.py's rules, or ladder.py's validated rule (the
default: validation decides how many of the blocks ranked by alpha are kept); outcome.py and
plots.py hold what it writes.
The trainer then fits a fresh LoRA on the chosen layers only (``layers_to_transform``).
"""

from importlib import import_module
from typing import Any

# Names load on first use (PEP 562): `flexpaft search --help` imports this package for its
# command module, and importing them eagerly would load torch for a help text.
_LAZY = {
    "BlockLayout": "blocks",
    "adapted_modules": "blocks",
    "find_blocks": "blocks",
    "modules_by_block": "blocks",
    "GateHooks": "gates",
    "LayerGates": "gates",
    "gate_values": "gates",
    "LayerSearch": "search",
    "SearchOutcome": "search",
    "search_layers": "search",
    "RULES": "select",
    "lora_drop_ranking": "select",
    "random_layers": "select",
    "select_layers": "select",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "RULES",
    "BlockLayout",
    "GateHooks",
    "LayerGates",
    "LayerSearch",
    "SearchOutcome",
    "adapted_modules",
    "find_blocks",
    "gate_values",
    "lora_drop_ranking",
    "modules_by_block",
    "random_layers",
    "search_layers",
    "select_layers",
]
