"""Scoring rendered prompts: which option does the model pick?

Three ways, by answer format:
- ``score_first_token``: letter and label-word answers that are one token each. ONE forward pass
  per (template, example), left-padded so every prompt ends at the last position, and the LM head
  applied only there (``logits_to_keep=1``): a 49k-vocabulary head on every position would cost
  more than the rest of a small model's forward.
- ``score_continuations``: each option's text scored as the continuation (cloze), and letters or
  label words of several tokens. Shared prefix: each prompt is packed with all its options into
  ONE sequence, with a 4D attention mask (option j sees the prompt and its own earlier tokens
  only) and position ids that restart after the prompt for every option, so the prompt is
  computed once instead of once per option. An option's last token is only a target, so it is
  not fed in, and the head runs only on the prompt's last position and the options' inputs,
  each of which predicts a scored token. Packed sequences are batched by a token budget.
  Attention kernels that take no custom mask (flash attention) get one (prompt + option)
  sequence per option instead. The layout, the mask and the targets are ``flexpaft.packing``'s,
  shared with the options loss of training (train/options.py).
- ``generate_answers``: greedy generation, answer extracted from the text; records generated tokens
  and seconds per example (generation-based scoring is how the PAFT paper measured speed).

``score_naive`` is the lm-evaluation-harness way (one full forward per option) and serves as the
reference implementation in tests and benchmarks.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import torch

from flexpaft.packing import PACKING_ATTENTION as PACKING_ATTENTION  # re-exported
from flexpaft.packing import Packed, packed_mask, packed_rows, packed_targets
from flexpaft.packing import supports_packing as supports_packing
from flexpaft.render import Rendered, encode_answer, encode_prompt
from flexpaft.tasks.spec import LETTERS


@dataclass
class Scored:
    """Per item: chosen option (-1 when no answer could be extracted) and per-option scores."""

    prediction: int
    scores: list[float]
    generated_tokens: int = 0
    seconds: float = 0.0
    text: str = ""


def _left_pad(seqs: list[list[int]], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    longest = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), longest), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, longest - len(s) :] = torch.tensor(s)
            mask[i, longest - len(s) :] = 1
    # Positions count real tokens only, so a left-padded prompt sees the same positions as alone.
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return {
        "input_ids": ids.to(device),
        "attention_mask": mask.to(device),
        "position_ids": pos.to(device),
    }


def length_batches(lengths: list[int], batch_size: int, max_tokens: int) -> list[list[int]]:
    """Indices grouped longest-first into batches of at most ``batch_size`` sequences and about
    ``max_tokens`` padded tokens: short sequences travel in big batches, long ones in small ones,
    so padding stays low on variable-length data (one 1,300-token prompt no longer pads fifteen
    short ones to its length)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if (
            batches
            and len(batches[-1]) < batch_size
            and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= max_tokens
        ):
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


def _truncate(ids: list[int], max_length: int) -> list[int]:
    return ids[-max_length:] if len(ids) > max_length else ids


class TokenCache:
    """Tokenized answer strings, reused across templates and options (prompts differ every time)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tok = tokenizer
        self._answers: dict[str, list[int]] = {}

    def answer(self, text: str) -> list[int]:
        if text not in self._answers:
            self._answers[text] = encode_answer(self.tok, text)
        return self._answers[text]


def single_token_answers(items: list[Rendered], cache: TokenCache) -> bool:
    """True when every answer of every item is exactly one token and options differ."""
    for it in items:
        ids = [cache.answer(a) for a in it.answers]
        if any(len(x) != 1 for x in ids) or len({x[0] for x in ids}) != len(ids):
            return False
    return True


@torch.inference_mode()
def score_first_token(
    model: Any,
    tokenizer: Any,
    items: list[Rendered],
    batch_size: int = 16,
    max_length: int = 2048,
    max_batch_tokens: int = 8192,
) -> list[Scored]:
    cache = TokenCache(tokenizer)
    device = _device(model)
    prompts = [_truncate(encode_prompt(tokenizer, it.prompt), max_length) for it in items]
    out: list[Scored | None] = [None] * len(items)
    for idx in length_batches([len(p) for p in prompts], batch_size, max_batch_tokens):
        batch = _left_pad([prompts[i] for i in idx], tokenizer.pad_token_id, device)
        logits = model(**batch, logits_to_keep=1).logits[:, -1].float()
        logp = torch.log_softmax(logits, dim=-1).cpu()
        for row, i in enumerate(idx):
            choice_ids = [cache.answer(a)[0] for a in items[i].answers]
            scores = logp[row, choice_ids].tolist()
            out[i] = Scored(int(max(range(len(scores)), key=scores.__getitem__)), scores)
    return out  # type: ignore[return-value]


def _packed_batch(
    chunk: list[Packed], pad_id: int, dtype: torch.dtype, device: torch.device
) -> dict[str, torch.Tensor]:
    """Left-padded ids, position ids and the additive 4D mask of packed sequences (packing.py)."""
    ids, seg, pos = packed_rows(chunk, pad_id)
    return {
        "input_ids": ids.to(device),
        "attention_mask": packed_mask(seg.to(device), dtype),
        "position_ids": pos.to(device),
    }


def _model_dtype(model: Any) -> torch.dtype:
    return model.get_input_embeddings().weight.dtype


@torch.inference_mode()
def score_continuations(
    model: Any,
    tokenizer: Any,
    items: list[Rendered],
    batch_size: int = 16,
    max_length: int = 2048,
    length_normalize: bool = False,
    max_batch_tokens: int = 8192,
    shared_prefix: bool | None = None,
) -> list[Scored]:
    """Sum (or per-token mean) log-probability of each option's continuation.

    ``shared_prefix`` (default: whenever the attention implementation allows it) packs each
    prompt with all its options into one sequence, so the prompt is computed once however many
    options there are; ``False`` scores one (prompt + option) sequence per option. Both give the
    log-likelihoods ``score_naive`` gives. An item whose prompt plus longest option exceeds
    ``max_length`` is scored per option, where each option cuts the prompt as ``score_naive`` does.
    """
    if shared_prefix is None:
        shared_prefix = supports_packing(model)
    cache = TokenCache(tokenizer)
    prompts = [encode_prompt(tokenizer, it.prompt) for it in items]
    conts = [[cache.answer(a) or [tokenizer.eos_token_id] for a in it.answers] for it in items]
    scores = [[0.0] * len(it.answers) for it in items]
    lengths = [[len(c) for c in cs] for cs in conts]
    packed = [
        Packed(prompts[i], conts[i], item=i)
        for i in range(len(items))
        if shared_prefix and 0 < len(prompts[i]) <= max_length - max(lengths[i])
    ]
    rest = sorted(set(range(len(items))) - {p.item for p in packed})
    if packed:
        _score_packed(model, tokenizer, packed, scores, batch_size, max_batch_tokens)
    if rest:
        seqs = [
            (i, j, _truncate(prompts[i] + c, max_length))
            for i in rest
            for j, c in enumerate(conts[i])
        ]
        _score_per_option(model, tokenizer, seqs, lengths, scores, batch_size, max_batch_tokens)
    if length_normalize:
        scores = [[x / n for x, n in zip(s, ns)] for s, ns in zip(scores, lengths)]
    return [Scored(int(max(range(len(s)), key=s.__getitem__)), s) for s in scores]


def _score_packed(
    model: Any,
    tokenizer: Any,
    packed: list[Packed],
    scores: list[list[float]],
    batch_size: int,
    max_batch_tokens: int,
) -> None:
    device, dtype = _device(model), _model_dtype(model)
    for idx in length_batches([len(p) for p in packed], batch_size, max_batch_tokens):
        chunk = [packed[k] for k in idx]
        batch = _packed_batch(chunk, tokenizer.pad_token_id, dtype, device)
        # The head runs on the options and the prompt's last position only: every row ends with
        # its options, so the last (most option inputs + 1) positions hold all that is scored.
        targets = packed_targets(chunk)
        keep = targets.keep
        logits = model(**batch, logits_to_keep=keep).logits
        rows = torch.tensor(targets.row, device=device)
        cols = keep - torch.tensor(targets.back, device=device)
        picked = logits[rows, cols].float()
        target = torch.tensor(targets.token, device=device)
        logp = picked.gather(-1, target[:, None])[:, 0] - torch.logsumexp(picked, dim=-1)
        # One slot per (row, option), in row order.
        slots = [(p.item, j) for p in chunk for j in range(len(p.options))]
        first_slot = torch.tensor([0] + [len(p.options) for p in chunk[:-1]]).cumsum(0)
        owner = first_slot.to(device)[rows] + torch.tensor(targets.option, device=device)
        totals = torch.zeros(len(slots), device=device, dtype=logp.dtype)
        totals.index_add_(0, owner, logp)
        for (i, j), v in zip(slots, totals.tolist()):
            scores[i][j] = v


def _score_per_option(
    model: Any,
    tokenizer: Any,
    seqs: list[tuple[int, int, list[int]]],
    lengths: list[list[int]],
    scores: list[list[float]],
    batch_size: int,
    max_batch_tokens: int,
) -> None:
    """One left-padded (prompt + option) sequence per option, batched by length."""
    device = _device(model)
    for idx in length_batches([len(s[2]) for s in seqs], batch_size, max_batch_tokens):
        chunk = [seqs[k] for k in idx]
        batch = _left_pad([s[2] for s in chunk], tokenizer.pad_token_id, device)
        cs = [min(lengths[i][j], len(toks) - 1) for i, j, toks in chunk]
        keep = max(cs) + 1
        logits = model(**batch, logits_to_keep=keep).logits.float()
        logp = torch.log_softmax(logits, dim=-1)
        for row, ((i, j, toks), c) in enumerate(zip(chunk, cs)):
            target = torch.tensor(toks[-c:], device=device)
            # Position -c-1 predicts the first continuation token; -2 predicts the last.
            pred = logp[row, keep - c - 1 : keep - 1]
            scores[i][j] = float(pred.gather(-1, target[:, None]).sum())


@torch.inference_mode()
def score_naive(
    model: Any, tokenizer: Any, items: list[Rendered], max_length: int = 2048
) -> list[Scored]:
    """Reference: one unbatched forward per (item, option), full log-likelihood of the answer."""
    device = _device(model)
    out = []
    for it in items:
        ctx = encode_prompt(tokenizer, it.prompt)
        scores = []
        for a in it.answers:
            cont = encode_answer(tokenizer, a)
            ids = torch.tensor([_truncate(ctx + cont, max_length)], device=device)
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
            c = len(cont)
            positions = torch.arange(ids.shape[1] - c - 1, ids.shape[1] - 1, device=device)
            scores.append(float(logp[positions, ids[0, -c:]].sum()))
        out.append(Scored(int(max(range(len(scores)), key=scores.__getitem__)), scores))
    return out


def extract_answer(text: str, answers: list[str]) -> int:
    """Index of the option a generated ``text`` names, or -1.

    Letters match as a standalone capital letter ("B", "(B)", "B."); words and option texts match
    case-insensitively on word boundaries; the earliest mention wins.
    """
    options = [a.strip() for a in answers]
    if all(len(o) == 1 and o in LETTERS for o in options):
        for m in re.finditer(r"(?<![A-Za-z])([A-Z])(?![A-Za-z])", text):
            if m.group(1) in options:
                return options.index(m.group(1))
        return -1
    best, best_pos = -1, len(text) + 1
    lowered = text.lower()
    for j, o in enumerate(options):
        if not o:
            continue
        m = re.search(r"(?<!\w)" + re.escape(o.lower()) + r"(?!\w)", lowered)
        # Prefer the earliest mention; on a tie, the longer option (it contains the shorter).
        if m and (m.start() < best_pos or (m.start() == best_pos and len(o) > len(options[best]))):
            best, best_pos = j, m.start()
    return best


@torch.inference_mode()
def generate_answers(
    model: Any,
    tokenizer: Any,
    items: list[Rendered],
    batch_size: int = 16,
    max_new_tokens: int = 32,
    max_length: int = 2048,
    max_batch_tokens: int = 8192,
) -> list[Scored]:
    device = _device(model)
    prompts = [_truncate(encode_prompt(tokenizer, it.prompt), max_length) for it in items]
    out: list[Scored | None] = [None] * len(items)
    eos = tokenizer.eos_token_id
    lengths = [len(p) + max_new_tokens for p in prompts]
    for idx in length_batches(lengths, batch_size, max_batch_tokens):
        batch = _left_pad([prompts[i] for i in idx], tokenizer.pad_token_id, device)
        batch.pop("position_ids")  # generate() derives positions from the mask itself
        t0 = time.perf_counter()
        gen = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=eos,
        )
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - t0) / len(idx)
        new = gen[:, batch["input_ids"].shape[1] :].cpu()
        for row, i in enumerate(idx):
            toks = new[row].tolist()
            n = toks.index(eos) + 1 if eos in toks else len(toks)
            text = tokenizer.decode(toks[:n], skip_special_tokens=True)
            pred = extract_answer(text, items[i].answers)
            out[i] = Scored(pred, [], generated_tokens=n, seconds=seconds, text=text)
    return out  # type: ignore[return-value]
