"""Stop a diverging run at the first non-finite loss or gradient, before it writes NaN weights.

A run at too high a learning rate (or in float16) turns its loss into NaN within a few steps;
without a check it trains on, saves an adapter of NaNs and exits 0, and the evaluation of that
adapter still prints an accuracy. The check sits before ``optimizer.step()``, so the weights and
the last checkpoint are still the last good ones when the run stops.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from flexpaft.errors import FlexpaftError


class DivergenceError(FlexpaftError):
    """The loss or the gradients stopped being finite numbers."""


class DivergenceGuard:
    """Tracks the last finite loss; ``check`` raises ``DivergenceError`` on a non-finite one.

    ``check`` is called once per optimizer step, with the loss of the step's last micro-batch
    and the total gradient norm (or None when it was not computed); with several processes the
    verdict is agreed on by all of them, so every rank stops at the same step.
    """

    def __init__(self, accelerator: Any = None, checkpoint: Path | None = None) -> None:
        self.acc = accelerator
        self.checkpoint = checkpoint
        self.last_finite: float | None = None
        self.last_step = 0

    def check(self, step: int, loss: float, grad_norm: float | None, scaled: bool = False) -> None:
        """``scaled``: fp16 loss scaling is on; overflowing gradients are then expected (the
        scaler skips that step and lowers its scale), so only the loss counts."""
        bad_loss = not math.isfinite(loss)
        bad_grad = grad_norm is not None and not scaled and not math.isfinite(grad_norm)
        bad = bad_loss or bad_grad
        if self.acc is not None and self.acc.num_processes > 1:
            flag = torch.tensor(float(bad), device=self.acc.device)
            bad = bool(self.acc.reduce(flag, reduction="sum") > 0)
        if not bad:
            self.last_finite, self.last_step = loss, step
            return
        what = f"loss is {loss}" if bad_loss else f"gradient norm is {grad_norm}"
        last = (
            f"last finite loss {self.last_finite:.4f} at step {self.last_step}"
            if self.last_finite is not None
            else "no finite loss before it"
        )
        kept = ""
        if self.checkpoint is not None and (self.checkpoint / "trainer_state.json").is_file():
            kept = f"; the last good checkpoint is kept in {self.checkpoint}"
        raise DivergenceError(
            f"training diverged at step {step}: {what} ({last}){kept}; "
            "try a lower optim.lr, or model.dtype=float32 or bfloat16 instead of float16"
        )


def grad_norm(params: list[torch.Tensor]) -> float:
    """Total L2 norm of the gradients (inf or NaN when any of them is)."""
    norms = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    if not norms:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack(norms)))
