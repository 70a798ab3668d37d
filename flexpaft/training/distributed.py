"""Scale-out through accelerate: one Accelerator for plain runs, ``accelerate launch`` and torchrun.

DDP, DeepSpeed and FSDP come from an ``accelerate config`` file (examples in configs/accelerate/);
flexpaft only adds what its own data pipeline needs: the batch size that DeepSpeed's
``auto`` cannot read from a DataLoader driven by a batch sampler, a CPU fallback for DDP, and
one-line errors for combinations that cannot work.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import GradientAccumulationPlugin

from flexpaft.errors import FlexpaftError
from flexpaft.training.compute import ComputeSettings, accelerator_kwargs


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def launched_backend() -> str:
    """'deepspeed', 'fsdp' or '' as ``accelerate launch`` announced it in the environment."""
    if _env_true("ACCELERATE_USE_DEEPSPEED"):
        return "deepspeed"
    if _env_true("ACCELERATE_USE_FSDP"):
        return "fsdp"
    return ""


def build_accelerator(grad_accum: int, compute: ComputeSettings, **trackers: Any) -> Accelerator:
    """The run's Accelerator.

    Without GPUs, accelerate only runs several processes (gloo) when told ``cpu=True``; with one
    process that flag changes nothing, so it is set whenever no CUDA device exists and a
    launcher started several processes. A step is exactly ``grad_accum`` micro-batches of the
    global stream, also across an epoch boundary (``sync_with_dataloader=False``): the resume
    position and the Flexora search's endless batch stream count steps that way.
    """
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    cuda = torch.cuda.is_available()
    backend = launched_backend()
    if backend == "deepspeed":
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            raise FlexpaftError("the accelerate config asks for DeepSpeed, which is not installed")
    if backend and not cuda:
        raise FlexpaftError(
            f"the accelerate config asks for {backend}, which needs CUDA GPUs (none found); "
            "use configs/accelerate/ddp.yaml to run several CPU processes"
        )
    if not several:
        # accelerate keeps one global state per process; a second run in the same process
        # (experiments, tests) may ask for another precision.
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(True)
    plugin = GradientAccumulationPlugin(num_steps=grad_accum, sync_with_dataloader=False)
    return Accelerator(
        gradient_accumulation_plugin=plugin,
        cpu=several and not cuda,
        **accelerator_kwargs(compute),
        **trackers,  # log_with / project_dir for report_to
    )


def fill_deepspeed_batch_size(acc: Accelerator, batch_size: int) -> None:
    """Resolve DeepSpeed's ``train_micro_batch_size_per_gpu: auto`` from ``optim.batch_size``.

    accelerate resolves ``auto`` from ``DataLoader.batch_size``, which is None for a loader
    driven by a batch sampler (ours, which draws the templates); its own error message says to
    set the value on the plugin, which is what this does.
    """
    plugin = getattr(acc.state, "deepspeed_plugin", None)
    if plugin is not None and plugin.is_auto("train_micro_batch_size_per_gpu"):
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = batch_size


def weights_sharded(acc: Any) -> bool:
    """True under FSDP and DeepSpeed ZeRO-3, where no rank holds the full weights."""
    from accelerate.utils import DistributedType

    kind = getattr(acc, "distributed_type", None)
    if kind == DistributedType.FSDP:
        return True
    plugin = getattr(getattr(acc, "state", None), "deepspeed_plugin", None)
    return kind == DistributedType.DEEPSPEED and plugin is not None and plugin.zero_stage == 3


def adapter_state_dict(acc: Any, prepared: torch.nn.Module) -> dict[str, Any] | None:
    """The full state dict to save an adapter from, where weights are sharded (a collective:
    every rank must call it); None elsewhere, where ``save_pretrained`` reads the model."""
    return acc.get_state_dict(prepared) if weights_sharded(acc) else None


def check_search_backend(acc: Any) -> None:
    """The Flexora search runs validation forwards on the unwrapped model, so every rank must
    hold the full weights: DDP and ZeRO-1/2 do, ZeRO-3 and FSDP shard them."""
    if weights_sharded(acc):
        raise FlexpaftError(
            "the Flexora search needs full weights on every rank, which FSDP and ZeRO-3 shard: "
            "run `flexpaft search` under DDP or ZeRO-2, then train its layers "
            "(lora.layers_to_transform) under FSDP or ZeRO-3"
        )
