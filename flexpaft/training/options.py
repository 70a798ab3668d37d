"""Cross-entropy over a task's answer options: the loss that accuracy reads.

The evaluator ranks the options of an example by the summed log-probability of each option's
answer tokens after the prompt (evaluate/scoring.py). ``options_loss`` is the cross-entropy of
that ranking against the gold option, differentiable: a model lowers it only by moving
probability *between* the options, where the usual full-vocabulary loss on the gold answer is
also lowered by moving probability onto the option words from the rest of the vocabulary
(on a label-word task most of it: docs/RESULTS.md). Flexora's search tunes alpha on it
(``flexora.val_loss=options``).

Batches come in three layouts, chosen per batch by ``OptionsCollator``:

* every answer one token (letters, one-token label words): the prompts alone, one row each, with
  ``option_ids`` (B, K): one forward pass per example, the logits of the last position gathered;
* otherwise, packed (``packed=True``, the default where the model's attention takes a 4D mask:
  ``make_loader`` decides from the model's attention implementation): one row per example, its
  prompt followed by every option's answer tokens (``flexpaft.packing``, the evaluator's layout),
  so the prompt is computed once however many options there are; ``segment_ids`` give the
  mask, ``target_*`` the scored tokens;
* or one row per (example, option), prompt + answer, with ``row_example``/``row_option`` saying
  where each row's summed score goes: the fallback for attention kernels that take no 4D mask
  (flash attention), where the prompt is computed once per option.

Packed and per-option rows give the same scores, loss and gradients (tests/test_options_packed.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from flexpaft.packing import Packed, packed_mask, packed_rows, packed_targets, packs_with_mask
from flexpaft.render import encode_answer, encode_prompt, render
from flexpaft.training.data import PadCollator, RenderedDataset, answer_targets

log = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]
# Keys with one column per sequence position: cut together when all-padding columns are dropped.
PROMPT_KEYS = ("input_ids", "attention_mask", "position_ids", "labels", "segment_ids")
# Keys of the packed layout with one entry per scored token (see ``packing.Targets``).
TARGET_KEYS = ("target_row", "target_back", "target_id", "target_option")


@dataclass
class OptionsDataset(RenderedDataset):
    """Like ``RenderedDataset``, but an item holds the prompt and every option's answer tokens."""

    def __getitem__(self, key: tuple[int, int]) -> dict[str, object]:
        ex_idx, tpl_idx = key
        rendered = render(
            self.task, self.templates[tpl_idx], self.examples[ex_idx], self.fmt, self.chat
        )
        answers = [encode_answer(self.tokenizer, a) for a in rendered.answers]
        longest = max(len(a) for a in answers)
        room = max(1, self.max_length - longest)
        prompt = encode_prompt(self.tokenizer, rendered.prompt)
        # Cut from the left, as encode_for_training cuts a training sequence.
        return {"prompt": prompt[-room:], "answers": answers, "gold": rendered.gold}


class OptionsCollator:
    """Left-pads an options batch in the layout its answers allow (see the module doc).

    ``packed``: multi-token options after one shared prompt, one row per example; otherwise one
    row per option (the layout before packing, right for every attention kernel).
    """

    def __init__(
        self, pad_token_id: int, pad_to_multiple_of: int = 1, packed: bool = False
    ) -> None:
        self.pad_id = pad_token_id
        self.multiple = pad_to_multiple_of
        self.packed = packed

    def __call__(self, items: list[dict[str, object]]) -> Batch:
        gold = torch.tensor([it["gold"] for it in items], dtype=torch.long)
        k = max(len(it["answers"]) for it in items)
        if all(len(a) == 1 for it in items for a in it["answers"]):
            batch = self._pad([it["prompt"] for it in items], [[] for _ in items])
            option_ids = torch.zeros((len(items), k), dtype=torch.long)
            mask = torch.zeros((len(items), k), dtype=torch.bool)
            for i, it in enumerate(items):
                for j, a in enumerate(it["answers"]):
                    option_ids[i, j], mask[i, j] = a[0], True
            return {**batch, "option_ids": option_ids, "option_mask": mask, "gold": gold}
        if self.packed:
            return self._packed(items, gold, k)
        seqs, answers, row_example, row_option = [], [], [], []
        for i, it in enumerate(items):
            for j, a in enumerate(it["answers"]):
                seqs.append(it["prompt"])
                answers.append(a)
                row_example.append(i)
                row_option.append(j)
        batch = self._pad(seqs, answers)
        return {
            **batch,
            "row_example": torch.tensor(row_example, dtype=torch.long),
            "row_option": torch.tensor(row_option, dtype=torch.long),
            "n_options": torch.full((len(items),), k, dtype=torch.long),
            "gold": gold,
        }

    def _packed(self, items: list[dict[str, Any]], gold: torch.Tensor, k: int) -> Batch:
        seqs = [Packed(it["prompt"], it["answers"]) for it in items]
        ids, seg, pos = packed_rows(seqs, self.pad_id, self.multiple)
        t = packed_targets(seqs)
        mask = torch.zeros((len(items), k), dtype=torch.bool)
        for i, it in enumerate(items):
            mask[i, : len(it["answers"])] = True
        return {
            "input_ids": ids,
            # Real tokens, as in the other layouts: what ``batch_tokens`` counts and chunks trim;
            # the model gets the 4D mask built from ``segment_ids`` (``option_scores``).
            "attention_mask": (seg >= 0).long(),
            "position_ids": pos,
            "segment_ids": seg,
            "target_row": torch.tensor(t.row, dtype=torch.long),
            "target_back": torch.tensor(t.back, dtype=torch.long),
            "target_id": torch.tensor(t.token, dtype=torch.long),
            "target_option": torch.tensor(t.option, dtype=torch.long),
            "option_mask": mask,
            "gold": gold,
        }

    def _pad(self, prompts: list[list[int]], answers: list[list[int]]) -> Batch:
        # The training collator's left padding; labels mark each row's answer tokens.
        items = [
            {"input_ids": p + a, "labels": [-100] * len(p) + a} for p, a in zip(prompts, answers)
        ]
        return PadCollator(self.pad_id, self.multiple)(items)


def is_options_batch(batch: Batch) -> bool:
    return "gold" in batch


def option_scores(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """(B, K) summed log-probabilities of each option's answer; -inf where an example has fewer."""
    if "option_ids" in batch:
        logits = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
            logits_to_keep=1,
        ).logits[:, -1]
        logp = torch.log_softmax(_at_least_float32(logits), dim=-1)
        scores = logp.gather(1, batch["option_ids"])
        return scores.masked_fill(~batch["option_mask"], float("-inf"))
    if "segment_ids" in batch:
        return _packed_scores(model, batch)
    target = answer_targets(batch["labels"])
    logits = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        logits_to_keep=target.shape[1] + 1,
    ).logits[:, :-1]
    logp = torch.log_softmax(_at_least_float32(logits), dim=-1)
    real = target != -100
    token = logp.gather(2, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    row = (token * real).sum(dim=1)
    b, k = batch["gold"].shape[0], int(batch["n_options"].max())
    scores = torch.full((b, k), float("-inf"), dtype=row.dtype, device=row.device)
    return scores.index_put((batch["row_example"], batch["row_option"]), row)


def _packed_scores(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """(B, K) option scores of a packed batch: one sequence per example, the LM head on its last
    ``keep`` positions only (the prompt's last and the options'), and the log-softmax only at
    the positions that predict a scored token, gathered first: over a 49k vocabulary it is not
    free, and kept positions of shorter rows predict nothing."""
    back = batch["target_back"]
    keep = int(back.max()) if back.numel() else 1
    logits = model(
        input_ids=batch["input_ids"],
        attention_mask=packed_mask(batch["segment_ids"], _mask_dtype(model)),
        position_ids=batch["position_ids"],
        logits_to_keep=keep,
    ).logits
    picked = _at_least_float32(logits[batch["target_row"], keep - back])
    target = batch["target_id"]
    token = picked.gather(1, target[:, None])[:, 0] - torch.logsumexp(picked, dim=-1)
    mask = batch["option_mask"]
    b, k = mask.shape
    slot = batch["target_row"] * k + batch["target_option"]
    totals = torch.zeros(b * k, dtype=token.dtype, device=token.device).index_add(0, slot, token)
    return totals.view(b, k).masked_fill(~mask, float("-inf"))


def _mask_dtype(model: Any) -> torch.dtype:
    """The dtype of the model's embeddings (the evaluator's choice for its mask), through
    wrappers that keep the model as ``.module``; float32 for a model without embeddings.
    SDPA takes a float32 mask with any query dtype, and eager adds it to the scores."""
    for _ in range(8):
        get = getattr(model, "get_input_embeddings", None)
        if get is not None:
            return get().weight.dtype
        model = getattr(model, "module", None)
        if model is None:
            break
    return torch.float32


def _at_least_float32(logits: torch.Tensor) -> torch.Tensor:
    # bf16/fp16 logits are too coarse for a log-softmax; float64 (finite-difference tests) stays.
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def options_loss(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Mean cross-entropy of the option ranking against the gold option."""
    return torch.nn.functional.cross_entropy(option_scores(model, batch), batch["gold"])


def option_chunks(batch: Batch, rows: int) -> Iterator[tuple[Batch, float]]:
    """The batch as chunks of at most ``rows`` examples, each with its share of the examples.

    An example's option rows (or its packed row) stay in one chunk, so every chunk's loss is a
    mean over whole examples and the weighted sum is the batch's loss.
    """
    n = batch["gold"].shape[0]
    if rows <= 0 or rows >= n:
        yield batch, 1.0
        return
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        if "option_ids" in batch:
            part = {k: v[start:stop] for k, v in batch.items()}
        elif "segment_ids" in batch:
            # One packed row per example: rows are sliced, scored tokens kept with their row.
            keep = (batch["target_row"] >= start) & (batch["target_row"] < stop)
            part = {k: v[keep] for k, v in batch.items() if k in TARGET_KEYS}
            part["target_row"] = part["target_row"] - start
            part.update({k: v[start:stop] for k, v in batch.items() if k not in TARGET_KEYS})
        else:
            keep = (batch["row_example"] >= start) & (batch["row_example"] < stop)
            part = {k: v[keep] for k, v in batch.items() if k in PROMPT_KEYS}
            part["row_example"] = batch["row_example"][keep] - start
            part["row_option"] = batch["row_option"][keep]
            part["n_options"] = batch["n_options"][start:stop]
            part["gold"] = batch["gold"][start:stop]
        yield _drop_padding(part), (stop - start) / n


def _drop_padding(part: Batch) -> Batch:
    """Columns that are padding in every row of the chunk removed (batches are left-padded)."""
    real = part["attention_mask"].bool().any(dim=0)
    first = int(real.to(torch.int8).argmax()) if bool(real.any()) else 0
    return (
        {k: (v[:, first:] if k in PROMPT_KEYS else v) for k, v in part.items()} if first else part
    )


_warned_rows = False


def packs_options(attn_implementation: str | None) -> bool:
    """Whether training batches of multi-token options are packed after one shared prompt, for a
    model under ``attn_implementation`` (None: not told, the per-option rows that every kernel
    runs). A kernel that takes no 4D mask (flash attention, packing.py) gets per-option rows,
    and the first such loader of the process says so."""
    global _warned_rows
    if attn_implementation is None or packs_with_mask(attn_implementation):
        return attn_implementation is not None
    if not _warned_rows:
        _warned_rows = True
        log.warning(
            "attention %s takes no 4D mask: multi-token answer options are scored one (prompt + "
            "option) row per option, the prompt computed once per option (slower than sdpa or "
            "eager, which pack the options after one shared prompt)",
            attn_implementation,
        )
    return False
