"""Flexora: choose which transformer blocks get LoRA by a bilevel search over per-block gates.

blocks.py finds the blocks, gates.py gates each block's LoRA output by N * softmax(alpha),
search.py learns alpha on held-out data while LoRA trains (its gradients in hypergrad.py, its data
in stream.py, its checkpoint in checkpoint.py, its outputs in outcome.py and plots.py), and
select.py turns alpha into layers.
The trainer then fits a fresh LoRA on the chosen layers only (``layers_to_transform``).
"""

from .blocks import BlockLayout, adapted_modules, find_blocks, modules_by_block
from .gates import GateHooks, LayerGates, gate_values
from .search import LayerSearch, SearchOutcome, search_layers
from .select import RULES, lora_drop_ranking, random_layers, select_layers

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
