"""Turning searched alphas into a layer list, plus the baselines (LoRA-drop ranking, random, top half).

Rules: ``positive`` keeps alpha_i > 0 (the paper); ``gate`` keeps gate_i > 1, i.e. layers whose
gate is above the uniform share (alpha_i above the log-mean-exp of alpha, not above 0);
``topk`` keeps the k largest; ``fraction`` keeps the top ceil(fraction * N). ``validated`` (the
default) ranks by alpha as topk does and lets validation losses decide k (ladder.py); alpha alone
cannot apply it, so mid-search, and for the early stop, it stands for its anchor, the positive
rule (``provisional_rule``).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from flexpaft.errors import FlexpaftError
from flexpaft.methods.flexora.blocks import (
    BlockLayout,
    adapted_modules,
    find_blocks,
    modules_by_block,
)
from flexpaft.methods.flexora.gates import gate_values
from flexpaft.settings.flexora import SELECTION_RULES

log = logging.getLogger(__name__)

RULES = SELECTION_RULES  # the rule names, defined with the config that checks them


def _ranking(alpha: Sequence[float]) -> list[int]:
    # Largest first; equal alphas keep index order so the result is deterministic.
    return sorted(range(len(alpha)), key=lambda i: (-alpha[i], i))


def provisional_rule(rule: str) -> str:
    """The rule that alpha alone can apply in place of ``rule``: validated needs validation
    losses (ladder.py), so mid-search it is represented by the positive rule, its anchor."""
    return "positive" if rule == "validated" else rule


def select_layers(
    alpha: Sequence[float],
    rule: str = "positive",
    k: int = 0,
    fraction: float = 0.5,
    quiet: bool = False,
) -> list[int]:
    """Sorted block indices chosen from ``alpha`` by ``rule``; never empty (``quiet``: the
    fallback to the best block is not warned about, for a selection logged mid-search)."""
    alpha = [float(a) for a in alpha]
    n = len(alpha)
    if n == 0:
        raise FlexpaftError("no layer logits to select from")
    if rule == "positive":
        chosen = [i for i, a in enumerate(alpha) if a > 0]
    elif rule == "gate":
        gates = gate_values(torch.tensor(alpha, dtype=torch.float64)).tolist()
        chosen = [i for i, g in enumerate(gates) if g > 1]
    elif rule == "topk":
        if not 1 <= k <= n:
            raise FlexpaftError(f"flexora.k must be between 1 and {n} for the topk rule, got {k}")
        chosen = _ranking(alpha)[:k]
    elif rule == "fraction":
        if not 0 < fraction <= 1:
            raise FlexpaftError(f"flexora.fraction must be in (0, 1], got {fraction}")
        chosen = _ranking(alpha)[: math.ceil(fraction * n)]
    elif rule == "validated":
        raise FlexpaftError(
            "the validated rule chooses on validation losses, not on alpha alone: "
            "ladder.validated_selection applies it (provisional_rule names its stand-in)"
        )
    else:
        raise FlexpaftError(f"unknown selection rule {rule!r} (choose from {', '.join(RULES)})")
    if not chosen and quiet:
        return [_ranking(alpha)[0]]
    if not chosen:
        best = _ranking(alpha)[0]
        msg = f"selection rule {rule!r} kept no layer; falling back to the best layer {best}"
        log.warning(msg)
        warnings.warn(msg, stacklevel=2)
        chosen = [best]
    return sorted(chosen)


def gate_ranks(
    alpha: Sequence[float], layers: Sequence[int], r: int, lora_alpha: float, rslora: bool = False
) -> dict[int, tuple[int, float]]:
    """(rank, LoRA alpha) per selected block, the rank proportional to the block's gate.

    r_i = round(r * gate_i / mean of the selected gates), at least 1: the selected blocks share
    about r * len(layers) ranks, as with a uniform r. alpha_i keeps each block's scaling at the
    configured one: lora_alpha * r_i / r (rsLoRA, scaling alpha / sqrt(r): lora_alpha *
    sqrt(r_i / r)).
    """
    if not layers:
        raise FlexpaftError("no selected layers to give ranks to")
    gates = gate_values(torch.tensor([float(a) for a in alpha], dtype=torch.float64)).tolist()
    mean = sum(gates[i] for i in layers) / len(layers)
    out = {}
    for i in sorted(layers):
        rank = max(1, math.floor(r * gates[i] / mean + 0.5))  # half up, not to even
        factor = math.sqrt(rank / r) if rslora else rank / r
        out[i] = (rank, lora_alpha * factor)
    return out


def random_layers(n_blocks: int, count: int, seed: int = 0) -> list[int]:
    """``count`` distinct block indices drawn uniformly with ``seed`` (the random baseline)."""
    if not 1 <= count <= n_blocks:
        raise FlexpaftError(f"cannot draw {count} of {n_blocks} layers")
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(n_blocks, size=count, replace=False))


def random_selections(n_blocks: int, count: int, draws: int, seed: int = 0) -> list[list[int]]:
    """``draws`` random selections of ``count`` blocks for one seed (the random baseline's draws).

    Draw 0 is ``random_layers(n_blocks, count, seed)``; later draws come from the same generator
    and repeat no earlier draw while unused combinations remain (so three draws of 2 of 4 blocks
    are three different pairs). Draw d never depends on how many draws follow it.
    """
    if draws < 1:
        raise FlexpaftError(f"need at least one random draw, not {draws}")
    if not 1 <= count <= n_blocks:
        raise FlexpaftError(f"cannot draw {count} of {n_blocks} layers")
    rng = np.random.default_rng(seed)
    combinations = math.comb(n_blocks, count)
    out: list[list[int]] = []
    while len(out) < draws:
        pick = sorted(int(i) for i in rng.choice(n_blocks, size=count, replace=False))
        # Once every combination has been drawn, repeats are all that is left.
        if pick in out and len(out) < combinations:
            continue
        out.append(pick)
    return out


def top_half_layers(n_blocks: int) -> list[int]:
    """The upper half of the blocks (those nearest the output): the last n_blocks // 2, at least 1."""
    if n_blocks < 1:
        raise FlexpaftError("no blocks to take the top half of")
    return list(range(n_blocks - max(1, n_blocks // 2), n_blocks))


def bottom_half_layers(n_blocks: int) -> list[int]:
    """The lower half of the blocks (those nearest the input): the first n_blocks // 2, at least 1."""
    if n_blocks < 1:
        raise FlexpaftError("no blocks to take the bottom half of")
    return list(range(max(1, n_blocks // 2)))


def gradient_probe_ranking(
    model: nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    loss_fn: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor],
    layout: BlockLayout | None = None,
) -> list[float]:
    """Per block, the norm of the training loss's gradient on its LoRA weights, at LoRA's start.

    The gradient-probe layer selectors: a block whose fresh LoRA gets a large gradient is one
    where a step of LoRA would lower the loss most. At LoRA's initialisation B = 0, so only B
    gets a gradient (dL/dB = dL/dh (A x)^T); the norm is over every adapted module of the
    block, averaged over ``batches``. Nothing is updated.
    """
    layout = layout or find_blocks(model)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]
    block_of = {}
    for n, _ in params:
        i = layout.index_of(n)
        if i is not None:
            block_of[n] = i
    totals = np.zeros(layout.count)
    count = 0
    model.eval()  # no dropout: the probe is deterministic
    for batch in batches:
        named = [(n, p) for n, p in params if n in block_of]
        grads = torch.autograd.grad(loss_fn(model, batch), [p for _, p in named], allow_unused=True)
        sq = np.zeros(layout.count)
        for (n, _), g in zip(named, grads):
            if g is not None:
                sq[block_of[n]] += float(g.float().pow(2).sum())
        totals += np.sqrt(sq)
        count += 1
    if not count:
        raise FlexpaftError("the gradient probe got no batches")
    return (totals / count).tolist()


@torch.no_grad()
def lora_drop_ranking(
    model: nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    layout: BlockLayout | None = None,
    adapter: str = "default",
) -> list[float]:
    """LoRA-drop's importance per block: sum over its adapted modules of ||scaling * B A x||^2.

    The squared norm is summed over real tokens (padding masked out when the batch has an
    attention mask), divided by the batch's real token count, and averaged over batches.
    Needs a trained LoRA: a fresh one has B = 0 and ranks every block 0. Plain LoRA only: the
    2-D calls DoRA makes on an identity matrix to build its weight are skipped.
    """
    layout = layout or find_blocks(model)
    blocks = modules_by_block(model, layout, adapter)
    modules = adapted_modules(model, adapter)
    totals = np.zeros(layout.count)
    current = np.zeros(layout.count)
    mask_holder: list[torch.Tensor | None] = [None]

    def make_hook(block: int, scaling: float):
        def record(_m: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
            if out.dim() < 3:
                return
            sq = (scaling * out.float()).pow(2).sum(-1)
            mask = mask_holder[0]
            if mask is not None and mask.shape == sq.shape:
                sq = sq * mask
            current[block] += float(sq.sum())

        return record

    handles = [
        modules[name]
        .lora_B[adapter]
        .register_forward_hook(make_hook(block, float(modules[name].scaling[adapter])))
        for name, block in blocks.items()
    ]
    was_training = model.training
    model.eval()
    n = 0
    try:
        device = next(model.parameters()).device
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            mask = batch.get("attention_mask")
            mask_holder[0] = mask.float() if mask is not None else None
            current[:] = 0
            model(**{k: v for k, v in batch.items() if k != "labels"})
            tokens = float(mask.sum()) if mask is not None else batch["input_ids"].numel()
            totals += current / max(tokens, 1.0)
            n += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if n == 0:
        raise FlexpaftError("lora_drop_ranking needs at least one batch")
    return (totals / n).tolist()


def overlap(a: Iterable[int], b: Iterable[int]) -> float:
    """Jaccard overlap of two block selections: 1 the same blocks, 0 none in common."""
    a, b = set(a), set(b)
    return len(a & b) / len(a | b) if a | b else 1.0
