"""Where a model's transformer blocks are, and which block each LoRA-adapted module belongs to.

Flexora gives every block one gate, so it must know the blocks. Architectures name the list
differently (Llama/Mistral/Qwen2/Gemma ``model.layers``, GPT-2 ``transformer.h``, GPT-NeoX
``gpt_neox.layers``, OPT ``decoder.layers``), so it is found by shape rather than by name: the
largest ``nn.ModuleList`` of same-class children that hold linear layers. A user regex overrides it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from flexpaft.errors import FlexpaftError


@dataclass(frozen=True)
class BlockLayout:
    """The block list of a model: a name, a count, and a regex whose one group is the index."""

    prefix: str
    count: int
    pattern: str

    def index_of(self, module_name: str) -> int | None:
        """The block index of ``module_name`` or None when it lies outside the blocks."""
        m = re.search(self.pattern, module_name)
        return int(m.group(1)) if m else None

    @property
    def list_name(self) -> str:
        """Last name component of the block list ('layers', 'h'): PEFT's ``layers_pattern``."""
        return self.prefix.rsplit(".", 1)[-1]


def _has_linear(module: nn.Module) -> bool:
    # GPT-2 and a few others use transformers' Conv1D, a linear layer with a transposed weight.
    return any(isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D" for m in module.modules())


def _is_block_list(module: nn.Module) -> bool:
    if not isinstance(module, nn.ModuleList) or len(module) == 0:
        return False
    first = type(module[0])
    return all(type(child) is first for child in module) and _has_linear(module[0])


def _pattern_for(prefix: str) -> str:
    # Anchored at a name boundary so it also matches under wrappers ("base_model.model.",
    # DDP's "module.").
    return rf"(?:^|\.){re.escape(prefix)}\.(\d+)(?:\.|$)"


def find_blocks(model: nn.Module, blocks_pattern: str = "") -> BlockLayout:
    """Locate the transformer blocks of ``model`` (or use ``blocks_pattern``, one index group).

    Candidate lists nested inside another candidate (a mixture-of-experts block's ``experts``)
    are skipped: the blocks are the outermost list, even when a block has more experts than the
    model has blocks.
    """
    names = [name for name, _ in model.named_modules()]
    if blocks_pattern:
        try:
            rx = re.compile(blocks_pattern)
        except re.error as e:
            raise FlexpaftError(f"flexora.blocks_pattern {blocks_pattern!r}: {e}") from None
        if rx.groups != 1:
            raise FlexpaftError(
                f"flexora.blocks_pattern {blocks_pattern!r} must have exactly one group "
                "capturing the block index"
            )
        indices = set()
        for name in names:
            m = rx.search(name)
            if m and m.group(1).isdigit():
                indices.add(int(m.group(1)))
        if not indices:
            raise FlexpaftError(
                f"flexora.blocks_pattern {blocks_pattern!r} matches no module of the model"
            )
        return BlockLayout(blocks_pattern, max(indices) + 1, blocks_pattern)

    candidates = [(n, m) for n, m in model.named_modules() if _is_block_list(m)]
    outer = [
        (n, m)
        for n, m in candidates
        if not any(o != n and n.startswith(o + ".") for o, _ in candidates)
    ]
    if not outer:
        raise FlexpaftError(
            "cannot find the transformer blocks of this model: set flexora.blocks_pattern "
            r"(a regex like 'model\.layers\.(\d+)')"
        )
    # max() keeps the first of equal lengths, i.e. the one named first (pre-order).
    prefix, blocks = max(outer, key=lambda nm: len(nm[1]))
    return BlockLayout(prefix, len(blocks), _pattern_for(prefix))


def adapted_modules(model: nn.Module, adapter: str = "default") -> dict[str, nn.Module]:
    """Modules holding LoRA weights of ``adapter`` (PEFT LoRA layers), by module name."""
    found = {}
    for name, module in model.named_modules():
        lora_b = getattr(module, "lora_B", None)
        if isinstance(lora_b, nn.ModuleDict) and adapter in lora_b:
            found[name] = module
    return found


def modules_by_block(
    model: nn.Module, layout: BlockLayout, adapter: str = "default"
) -> dict[str, int]:
    """Block index of every LoRA-adapted module; adapted modules outside the blocks are an error."""
    mapping = {}
    for name in adapted_modules(model, adapter):
        idx = layout.index_of(name)
        if idx is None or idx >= layout.count:
            raise FlexpaftError(
                f"LoRA module {name} is not inside a transformer block ({layout.prefix}): "
                "narrow lora.target_modules or set flexora.blocks_pattern"
            )
        mapping[name] = idx
    if not mapping:
        raise FlexpaftError("the model holds no LoRA modules to gate")
    return mapping


def count_blocks(
    name_or_path: str,
    blocks_pattern: str = "",
    trust_remote_code: bool = False,
    gguf_dtype: str = "bfloat16",
) -> int:
    """How many transformer blocks the model ``name_or_path`` has, without loading its weights.

    The model is built from its config on the meta device (no memory, no weights read), so an 8B
    model is counted as cheaply as a tiny one, and its blocks are found as ``find_blocks`` finds
    them for the search.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from flexpaft.models import resolve_model

    path = resolve_model(name_or_path, gguf_dtype)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise FlexpaftError(
            f"cannot read model {name_or_path!r}: {str(e).splitlines()[0]}"
        ) from None
    return find_blocks(model, blocks_pattern).count
