"""Memory and speed options of a training run: precision, quantization, checkpointing, attention.

Each option is a key of ``compute`` in the training config and is handled by the library that
owns it: mixed precision and ``torch.compile`` by accelerate (autocast, GradScaler for fp16,
TorchDynamoPlugin), 4/8-bit weights by transformers' ``BitsAndBytesConfig`` + PEFT's
``prepare_model_for_kbit_training``, activation checkpointing and the attention kernel by
transformers. ``check_compute`` runs before the model is loaded, so a missing package or GPU is
one line of error, not a traceback after minutes of loading.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from flexpaft.errors import FlexpaftError
from flexpaft.settings.compute import ComputeSettings

if TYPE_CHECKING:  # the config (and so `flexpaft --help`) must not import torch
    import torch


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def check_compute(settings: ComputeSettings, device: torch.device) -> None:
    """Refuse, in one line, an option this machine cannot run (called before loading the model)."""
    cuda = device.type == "cuda"
    if settings.quantized:
        key = "load_in_4bit" if settings.load_in_4bit else "load_in_8bit"
        if not _installed("bitsandbytes"):
            raise FlexpaftError(
                f"compute.{key} needs the bitsandbytes package (pip install bitsandbytes)"
            )
        if not cuda:
            raise FlexpaftError(f"compute.{key} needs a CUDA GPU (bitsandbytes), found {device}")
    if settings.attn_implementation == "flash_attention_2":
        if not _installed("flash_attn"):
            raise FlexpaftError(
                "compute.attn_implementation=flash_attention_2 needs the flash-attn package "
                "(pip install flash-attn); use sdpa"
            )
        if not cuda:
            raise FlexpaftError(
                f"compute.attn_implementation=flash_attention_2 needs a CUDA GPU, found {device}"
            )
    if resolved_mixed_precision(settings) == "fp16" and not cuda:
        raise FlexpaftError(
            f"mixed precision fp16 needs a CUDA GPU (found {device}); use bf16 on CPU"
        )


def resolved_mixed_precision(settings: ComputeSettings) -> str:
    """The precision accelerate will use: ours, or ``accelerate launch``'s when ours is auto."""
    import os

    if settings.mixed_precision != "auto":
        return settings.mixed_precision
    return os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()


def accelerator_kwargs(settings: ComputeSettings) -> dict[str, Any]:
    """Arguments for ``Accelerator``: precision and compilation are accelerate's business."""
    kwargs: dict[str, Any] = {}
    if settings.mixed_precision != "auto":
        kwargs["mixed_precision"] = settings.mixed_precision
    if settings.torch_compile:
        from accelerate.utils import TorchDynamoPlugin

        # Batches are grouped by length but still vary: dynamic shapes avoid one graph per length.
        kwargs["dynamo_plugin"] = TorchDynamoPlugin(
            backend=settings.torch_compile_backend, dynamic=True
        )
    return kwargs


def quantization_config(settings: ComputeSettings) -> Any:
    """The BitsAndBytesConfig of QLoRA (NF4, double quantization, bf16 compute) or 8-bit."""
    import torch
    from transformers import BitsAndBytesConfig

    if settings.load_in_4bit:
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    if settings.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def model_load_kwargs(settings: ComputeSettings, device: torch.device) -> dict[str, Any]:
    """Extra ``from_pretrained`` arguments for ``load_model``."""
    kwargs: dict[str, Any] = {}
    if settings.attn_implementation:
        kwargs["attn_implementation"] = settings.attn_implementation
    if settings.quantized:
        kwargs["quantization_config"] = quantization_config(settings)
        # Quantized weights cannot be moved with .to(); they are placed while loading.
        kwargs["device_map"] = {"": device.index if device.index is not None else 0}
    return kwargs


def prepare_for_training(model: torch.nn.Module, settings: ComputeSettings) -> torch.nn.Module:
    """Before LoRA is added: k-bit preparation and activation checkpointing on the base model."""
    ckpt_kwargs = {"use_reentrant": False}
    if settings.quantized:
        from peft import prepare_model_for_kbit_training

        # Casts norms and the head to fp32 and makes the embeddings' output require grad.
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=settings.gradient_checkpointing,
            gradient_checkpointing_kwargs=ckpt_kwargs,
        )
    elif settings.gradient_checkpointing:
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise FlexpaftError(
                f"{type(model).__name__} does not support compute.gradient_checkpointing"
            )
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=ckpt_kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ckpt_kwargs)
        # Non-reentrant checkpointing does not need inputs that require grad; the hook costs
        # nothing and keeps a frozen embedding from cutting the graph if a model falls back
        # to the reentrant variant.
        model.enable_input_require_grads()
    if settings.gradient_checkpointing:
        # The KV cache is useless in training and transformers warns for every step otherwise.
        model.config.use_cache = False
    return model


def load_for_training(model: Any, settings: ComputeSettings, device: torch.device) -> tuple:
    """(model, tokenizer) for ``ModelSettings`` ``model`` with the memory options applied."""
    from flexpaft.models import load_model

    check_compute(settings, device)
    base, tok = load_model(
        model.name,
        model.dtype,
        device,
        model.trust_remote_code,
        model.gguf_dtype,
        **model_load_kwargs(settings, device),
    )
    return prepare_for_training(base, settings), tok


def compute_summary(acc: Any, prepared: torch.nn.Module, settings: ComputeSettings) -> dict:
    """What the run actually used, for the manifest (not what was asked for)."""
    from accelerate.utils import is_compiled_module

    base = acc.unwrap_model(prepared)
    config = getattr(base, "config", None)
    quant = "4bit" if settings.load_in_4bit else "8bit" if settings.load_in_8bit else None
    return {
        "mixed_precision": str(acc.mixed_precision),
        "gradient_checkpointing": bool(getattr(base, "is_gradient_checkpointing", False)),
        "quantization": quant,
        "attn_implementation": getattr(config, "_attn_implementation", None),
        "torch_compile": settings.torch_compile_backend if is_compiled_module(prepared) else None,
        "distributed_type": str(acc.distributed_type.value),
        "num_processes": acc.num_processes,
    }


@contextlib.contextmanager
def checkpointing_paused(model: torch.nn.Module) -> Iterator[None]:
    """Activation checkpointing off inside (transformers' per-block flag), restored after.

    For ``torch.func.functional_call``: the backward pass recomputes a checkpointed block after
    functional_call has put the module's own parameters back, so gradients would be taken at the
    wrong weights (the unrolled Flexora hypergradient differentiates at substituted weights).
    """
    paused = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]
    for m in paused:
        m.gradient_checkpointing = False
    try:
        yield
    finally:
        for m in paused:
            m.gradient_checkpointing = True


class attention_without_cudnn(contextlib.ContextDecorator):
    """PyTorch's SDPA may pick any attention kernel but cuDNN's, inside (or for a decorated call).

    cuDNN's attention is SDPA's default on H100/H200 since torch 2.11, and its backward returns
    NaN query gradients when a mask is passed, the sequence length is 64 mod 128 and some row's
    logsumexp is very negative (pytorch/pytorch#196678): a left-padding row that sees no token is
    such a row. flexpaft left-pads every training batch to a multiple of 8, so lengths 64, 192, ...
    come up, and the first H200 runs diverged there (docs/RESULTS.md). The forward is right, so
    evaluation needs no guard; training does, backward and checkpointed recomputation included,
    hence a scope around each training loop (``train_lora``, ``search_layers``) rather than
    around each forward. Elsewhere the flag is ignored (CPUs, other GPUs, torch without the
    kernel).
    """

    _NOT_ALLOWED = ("ERROR", "CUDNN_ATTENTION")

    def __init__(self) -> None:
        self._scopes: list[Any] = []  # one per entry: a decorated call may nest in another

    def __enter__(self) -> attention_without_cudnn:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        allowed = [b for n, b in SDPBackend.__members__.items() if n not in self._NOT_ALLOWED]
        scope = sdpa_kernel(allowed)
        scope.__enter__()
        self._scopes.append(scope)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._scopes.pop().__exit__(*exc)
