"""One prompt and all its answer options as ONE sequence: the shared-prefix layout.

Scoring (evaluate/scoring.py) and the options loss (train/options.py) both need, per example,
the summed log-probability of every option's answer tokens after the same prompt. Fed as one
(prompt + option) sequence per option, the prompt is computed once per option; packed, it is
computed once:

    tokens    p0 p1 ... pP-1 | a0 a1 (option 0 minus its last token) | b0 (option 1) | ...
    segment    0  0 ...  0   |  1  1                                 |  2            | ...
    position   0  1 ... P-1  |  P P+1                                |  P            | ...

Segment ids: -1 padding, 0 prompt, j + 1 option j. A query sees earlier keys of its own segment
and of the prompt (a 4D attention mask), and each option's positions continue from the prompt's
end, so every option is computed exactly as it would be alone after the prompt. An option's last
token is only a target (nothing after it is scored), so it is not fed in: one-token options add
no input at all, and every position after the prompt's last one predicts a scored token.

Rows are left-padded, so every packed sequence ends at the last position and the LM head can be
restricted to the last ``max option inputs + 1`` positions (``logits_to_keep``). Targets are
addressed by their distance from the end (``back``), which left padding and the removal of
all-padding columns leave unchanged.

Which attention kernels can run it: ``eager`` and ``sdpa`` take a custom 4D mask. Flash-attention
kernels take none; they run packed sequences only as independent segments (cumulative lengths
from position ids that restart at 0), where a segment sees itself alone, so an option could see
the prompt only by repeating it in its segment: that is the row-per-option layout again. Those
kernels get one (prompt + option) sequence per option (``packs_with_mask``).

This module sits low in the package: it imports torch and the standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

# Attention implementations that honour a custom 4D mask (transformers' ``_attn_implementation``).
PACKING_ATTENTION = ("eager", "sdpa")


def packs_with_mask(attn_implementation: str | None) -> bool:
    """True when a model under ``attn_implementation`` computes a packed sequence correctly."""
    return attn_implementation in PACKING_ATTENTION


def attention_implementation(model: Any) -> str | None:
    """The model's transformers attention implementation, through wrappers (DDP, functional
    calls) that keep the model as ``.module``; None when it has none (a stand-in model)."""
    seen = 0
    while model is not None and seen < 8:
        config = getattr(model, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            return config._attn_implementation
        model, seen = getattr(model, "module", None), seen + 1
    return None


def supports_packing(model: Any) -> bool:
    """True when ``model`` accepts the 4D attention mask that shared-prefix packing needs."""
    return packs_with_mask(attention_implementation(model))


@dataclass
class Packed:
    """One prompt followed by all its options (token ids), as one sequence; ``item`` is the
    caller's index of it."""

    prompt: list[int]
    options: list[list[int]]
    item: int = 0

    def __len__(self) -> int:
        return len(self.prompt) + self.option_inputs

    @property
    def option_inputs(self) -> int:
        """Input positions after the prompt: every option's tokens but its last."""
        return sum(max(0, len(o) - 1) for o in self.options)

    def layout(self) -> tuple[list[int], list[int], list[int]]:
        """(tokens, segment ids, position ids) of the sequence, unpadded."""
        n = len(self.prompt)
        toks, segs, poss = list(self.prompt), [0] * n, list(range(n))
        for j, o in enumerate(self.options):
            inputs = o[:-1]
            toks += inputs
            segs += [j + 1] * len(inputs)
            poss += range(n, n + len(inputs))
        return toks, segs, poss


def packed_rows(
    seqs: list[Packed], pad_id: int, pad_to_multiple_of: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded (input ids, segment ids, position ids), each (rows, L), on the CPU."""
    longest = max(len(p) for p in seqs)
    if pad_to_multiple_of > 1:
        longest = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    ids = torch.full((len(seqs), longest), pad_id, dtype=torch.long)
    seg = torch.full((len(seqs), longest), -1, dtype=torch.long)
    pos = torch.zeros((len(seqs), longest), dtype=torch.long)
    for r, p in enumerate(seqs):
        toks, segs, poss = p.layout()
        at = longest - len(toks)
        ids[r, at:] = torch.tensor(toks, dtype=torch.long)
        seg[r, at:] = torch.tensor(segs, dtype=torch.long)
        pos[r, at:] = torch.tensor(poss, dtype=torch.long)
    return ids, seg, pos


def packed_mask(segments: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The additive (rows, 1, L, L) attention mask of left-padded ``segments``, on their device.

    A query sees earlier keys of its own segment and of the prompt (segment 0). Pad queries see
    earlier pads only, so no row of the mask is empty (an all-masked row gives NaN in some
    kernels, and NaN times a zero weight is NaN). Built where it is used: on a GPU the
    (rows x L x L) mask would be large work for the CPU and a large copy.
    """
    length = segments.shape[1]
    idx = torch.arange(length, device=segments.device)
    causal = idx[:, None] >= idx[None, :]
    same = segments[:, :, None] == segments[:, None, :]
    to_prompt = (segments[:, :, None] >= 0) & (segments[:, None, :] == 0)
    allowed = causal[None] & (same | to_prompt)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segments.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


@dataclass
class Targets:
    """Every scored token of packed rows: its row, its distance from the row's end of the
    position that predicts it (1 = the last position), the token id, and which option of the
    row it belongs to."""

    row: list[int]
    back: list[int]
    token: list[int]
    option: list[int]

    @property
    def keep(self) -> int:
        """Positions from the end the LM head must cover (``logits_to_keep``)."""
        return max(self.back, default=1)


def packed_targets(seqs: list[Packed]) -> Targets:
    """The scored tokens of ``seqs`` (rows in order), ready to gather from the last positions.

    Option token t is predicted at the position of its token t - 1; token 0 by the prompt's last
    position, which every option shares.
    """
    out = Targets([], [], [], [])
    for r, p in enumerate(seqs):
        inputs = p.option_inputs
        last_prompt = inputs + 1  # its distance from the end
        offset = 0  # option inputs before this option's
        for j, o in enumerate(p.options):
            for t, tok in enumerate(o):
                out.row.append(r)
                out.back.append(last_prompt if t == 0 else inputs - offset - t + 1)
                out.token.append(tok)
                out.option.append(j)
            offset += max(0, len(o) - 1)
    return out
