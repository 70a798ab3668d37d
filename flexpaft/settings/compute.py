"""``compute``: a training run's memory and speed options (precision, 4/8-bit weights,
activation checkpointing, attention kernel, compilation), checked and applied in
``flexpaft.training.compute``."""

from __future__ import annotations

from dataclasses import dataclass

from flexpaft.settings.schema import opt

MIXED_PRECISION = ("auto", "no", "bf16", "fp16")
ATTENTION = ("", "sdpa", "eager", "flash_attention_2")


@dataclass
class ComputeSettings:
    mixed_precision: str = opt(
        "auto",
        "Autocast through accelerate: no, bf16, fp16 (with loss scaling; needs a CUDA GPU), or "
        "auto (what `accelerate launch` was told, else no). Weights keep model.dtype; LoRA "
        "weights stay fp32.",
    )
    gradient_checkpointing: bool = opt(
        False,
        "Recompute each block's activations in the backward pass (non-reentrant): less memory, "
        "about a third more compute.",
    )
    load_in_4bit: bool = opt(
        False,
        "QLoRA: base weights in 4-bit NF4 with double quantization and bf16 compute "
        "(bitsandbytes, CUDA only).",
    )
    load_in_8bit: bool = opt(False, "Base weights in 8-bit (bitsandbytes LLM.int8, CUDA only).")
    attn_implementation: str = opt(
        "",
        "Attention kernel: sdpa, eager, flash_attention_2 (needs the flash-attn package and a "
        "CUDA GPU), or '' (transformers' default).",
    )
    torch_compile: bool = opt(
        False,
        "Compile the model with torch.compile (through accelerate; dynamic shapes, since "
        "batches vary in length). Pays off on long GPU runs; the first steps are slow.",
    )
    torch_compile_backend: str = opt(
        "inductor", "torch.compile backend when torch_compile is on (inductor, eager, ...)."
    )

    def __post_init__(self) -> None:
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(
                f"mixed_precision must be one of {', '.join(MIXED_PRECISION)}, "
                f"got {self.mixed_precision!r}"
            )
        if self.attn_implementation not in ATTENTION:
            raise ValueError(
                "attn_implementation must be sdpa, eager, flash_attention_2 or '', "
                f"got {self.attn_implementation!r}"
            )
        if self.load_in_4bit and self.load_in_8bit:
            raise ValueError("choose one of load_in_4bit and load_in_8bit")

    @property
    def quantized(self) -> bool:
        return self.load_in_4bit or self.load_in_8bit
