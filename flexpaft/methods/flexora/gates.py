"""Flexora's layer gates: one logit alpha_i per block, gate_i = N * softmax(alpha)_i.

The gate multiplies the LoRA branch of every adapted module in block i exactly once:
``h = W0 x + gate_i * scaling * B A x``. It is applied by a forward hook on ``lora_B[adapter]``
that scales its output, before PEFT multiplies by ``scaling`` and adds it to the base output.
(The official code put pre-hooks on dropout, lora_A and lora_B, so the gate acted cubed.)

Variants: rsLoRA only changes ``scaling``, so the hook is unaffected. DoRA calls ``lora_B`` as a
module twice per forward, once for the low-rank weight B A that enters the column norm and once
for the LoRA output; gating both means the block computes DoRA with ``gate_i * B A`` as its
directional update, exactly as if B were scaled by the gate. The DoRA magnitude vector is not
gated, so a gate of 0 does not switch a DoRA block back to the base weights.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
from torch import nn

from flexpaft.methods.flexora.blocks import BlockLayout, adapted_modules, modules_by_block

log = logging.getLogger(__name__)


def gate_values(alpha: torch.Tensor) -> torch.Tensor:
    """N * softmax(alpha), written so that alpha = 0 gives gates of exactly 1.0.

    exp(a_i - max) / mean_j exp(a_j - max) is N * softmax(a)_i; at a = 0 every term is
    exp(0) = 1 and the mean of ones is 1, so plain LoRA is reproduced bit for bit.
    """
    e = torch.exp(alpha - alpha.max().detach())
    return e / e.mean()


class LayerGates:
    """The logits alpha (an fp32 ``nn.Parameter``) and the hooks that gate a PEFT model."""

    def __init__(
        self,
        n_blocks: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.alpha = nn.Parameter(torch.zeros(n_blocks, dtype=dtype, device=device))
        self.detach = False  # True while LoRA weights train: their loss must not move alpha
        self.fixed: torch.Tensor | None = None  # gates set by hand (``held``), alpha ignored
        self.calls = 0  # hook invocations, for tests and sanity checks

    @property
    def n_blocks(self) -> int:
        return self.alpha.numel()

    def values(self) -> torch.Tensor:
        if self.fixed is not None:
            return self.fixed
        gates = gate_values(self.alpha)
        return gates.detach() if self.detach else gates

    @contextlib.contextmanager
    def detached(self) -> Iterator[None]:
        """Gates act as constants inside (the inner LoRA step: no gradient reaches alpha)."""
        before, self.detach = self.detach, True
        try:
            yield
        finally:
            self.detach = before

    @contextlib.contextmanager
    def held(self, values: torch.Tensor) -> Iterator[None]:
        """The gates are ``values`` inside, whatever alpha is (the validated rule scores a
        candidate selection with the other blocks' gates at 0: ladder.py)."""
        before = self.fixed
        self.fixed = values.detach().to(self.alpha.device, self.alpha.dtype)
        try:
            yield
        finally:
            self.fixed = before

    def attach(self, model: nn.Module, layout: BlockLayout, adapter: str = "default") -> GateHooks:
        """Hook every ``lora_B[adapter]`` of ``model``; remove with the handle (or ``with``)."""
        blocks = modules_by_block(model, layout, adapter)
        modules = adapted_modules(model, adapter)
        handles = []
        for name, block in blocks.items():
            handles.append(modules[name].lora_B[adapter].register_forward_hook(self._hook(block)))
        bare = sorted(set(range(layout.count)) - set(blocks.values()))
        if bare:
            log.warning("blocks %s hold no LoRA module: their alpha cannot move", bare)
        return GateHooks(handles, blocks)

    def _hook(self, block: int):
        def scale_output(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            return output * self.values()[block].to(output.dtype)

        return scale_output


class GateHooks:
    """Handles of the gate hooks; ``blocks`` maps each gated module name to its block."""

    def __init__(self, handles: list, blocks: dict[str, int]) -> None:
        self.handles = handles
        self.blocks = blocks

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def __enter__(self) -> GateHooks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
