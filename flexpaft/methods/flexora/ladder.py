"""The validated rule (``flexora.selection=validated``, the default): validation decides how many
blocks.

Why. The gates are N * softmax(alpha), and softmax does not change when a constant is added to
alpha: the positive rule's line (alpha > 0) sits where alpha's start (0) and the number and size
of Adam's steps put it, not where the validation loss says, and nothing in the search asks
whether all blocks would validate better. What the search does learn is a ranking of the blocks.
So the ranking comes from alpha and the count from the validation batches.

Rungs. The top-k blocks by alpha (ties in index order) for k in: the positive rule's count, the
gate rule's count (gate > 1: alpha above its log-mean-exp, a line softmax's invariance leaves in
place), ceil(N/4), ceil(N/2), ceil(3N/4) and N, i.e. always all blocks.

Score. Each rung is scored with the search's own LoRA, forward passes only (eval mode, no
gradient), on every validation batch (one pass over the search's validation examples, rendered
under the validation wordings), with the search's validation loss (``flexora.val_loss``) per
example: the cross-entropy of the option ranking against the gold option (``options``), or the
mean cross-entropy over the example's answer tokens (``full``). The gates are held at: 0 for the
blocks off the rung, so their LoRA adds nothing; the searched gate N * softmax(alpha)_i for the
blocks on it. The searched gate, not 1: the search's LoRA weights learned the update
gate_i x B_i A_i, so the rung keeps exactly what those blocks learned, and the all-N rung is the
searched model itself; a gate of 1 would rescale every block's learned update by 1/gate_i, giving
a model that was never trained (stage 2 trains a fresh LoRA, which has no gate at all).

Noise. Two rungs a and b are scored on the same examples, so their difference is paired: d_j =
loss_a,j - loss_b,j over the n validation rows, mean D, standard error SE = sd(d) / sqrt(n) (sd
with n - 1). A rung is level with another when D <= ``flexora.tolerance_se`` x SE (1: the
one-standard-error rule). The chosen rung is the smallest that is level with both the best rung
(lowest mean loss) and all N blocks; the best rung itself always qualifies. So the selection never
validates worse than all blocks by more than that noise; where no smaller rung is level with all
N, all N blocks are trained, and the log line says so. (Under multi-process training every rank's
rows are gathered first, so every rank chooses the same; validation rows the loader repeats to
fill its last batch count as often as they are served.)

The own prompt (``flexora.own_check``, on by default). Unseen wordings alone can favour fewer
blocks: for plain flexora, which trains under one prompt, switching blocks off undoes part of
its fit to that prompt, which reads as better transfer to other wordings while the prompt the user
deploys loses accuracy (the study of 2026-12-07: -5.7 points under the own prompt, separated, for
15 of 30 blocks). So the same validation examples are also rendered under the user's own template
(``prompts.template``), and a rung is kept only where it is also level with all N blocks there:
D_own <= tolerance x SE_own, paired as above. The own prompt never renders a batch alpha learns
from; it is a check on the count, as the unseen wordings are. It is scored lazily: all N blocks
once, then only the rungs, smallest first, that pass the unseen-wordings test, until one passes
both (at most one extra forward pass over the validation examples per rung; usually two).

A caveat: the searched LoRA learned with every block on; a rung that switches blocks off scores
those blocks' learned updates alone, where stage 2 trains a fresh LoRA on them alone, for longer.
The two need not agree, and they did not in the study of 2026-12-07 (seed 0, plain flexora, whose
validation batches are rendered under the one template it trains on): the searched LoRA, mid-way
through stage 2's learning-rate schedule at the search's end, validated at 0.97 with all 30 blocks
and 0.61 with the top 15 (0.73-0.75 with all 30 at half or three quarters of their gates, so not
only a smaller update), yet stage 2 on those 15 blocks scored 5.7 points below LoRA on all 30
under that template. The rungs are a proxy for stage 2, not a measurement of it. Under DoRA a gate of 0 leaves the
block's magnitude vector in place (gates.py), so an off block is close to, not exactly, the base.

Cost: at most 6 forward passes over the validation examples, no backward. In the snips study (48
validation examples; 34 outer steps of 8 training rows, and after alpha's warm-up 8 validation
rows, each forward and backward) that is about a fifth of the search's work; less where a pass
holds more training examples next to the validation split (the paper: 5000 and 200).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from flexpaft.methods.flexora.chunks import weighted_chunks
from flexpaft.methods.flexora.gates import LayerGates, gate_values
from flexpaft.training.data import answer_targets
from flexpaft.training.options import is_options_batch, option_scores

Batch = dict[str, torch.Tensor]
# Slack for float rounding in the level test (a rung against itself differs by exactly 0).
EPS = 1e-12


def ladder_sizes(alpha: Sequence[float]) -> dict[int, list[str]]:
    """Rung sizes, ascending, each with the rules it stands for ('positive', 'gate', 'N/4', ...,
    'all'); every size is at least 1."""
    a = torch.tensor([float(x) for x in alpha], dtype=torch.float64)
    n = len(a)
    named = {
        "positive": int((a > 0).sum()),
        "gate": int((gate_values(a) > 1).sum()),
        "N/4": math.ceil(n / 4),
        "N/2": math.ceil(n / 2),
        "3N/4": math.ceil(3 * n / 4),
        "all": n,
    }
    sizes: dict[int, list[str]] = {}
    for name, k in named.items():
        sizes.setdefault(max(1, k), []).append(name)
    return dict(sorted(sizes.items()))


def ranking(alpha: Sequence[float]) -> list[int]:
    """Block indices by alpha, largest first; equal alphas in index order."""
    return sorted(range(len(alpha)), key=lambda i: (-float(alpha[i]), i))


def paired(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the paired differences a_j - b_j."""
    d = torch.tensor(a, dtype=torch.float64) - torch.tensor(b, dtype=torch.float64)
    n = d.numel()
    se = float(d.std(unbiased=True) / math.sqrt(n)) if n > 1 else 0.0
    return float(d.mean()), se


def per_example_losses(model: nn.Module, batch: Batch, rows: int = 0) -> list[float]:
    """The validation loss of every example in ``batch`` (``flexora.val_loss``: an options batch
    gets the option-ranking cross-entropy, another the mean over its answer tokens), computed in
    chunks of ``rows`` rows (0: whole)."""
    out: list[float] = []
    for chunk, _ in weighted_chunks(batch, rows):
        if is_options_batch(chunk):
            scores = option_scores(model, chunk)
            loss = nn.functional.cross_entropy(scores, chunk["gold"], reduction="none")
            out.extend(float(x) for x in loss)
            continue
        target = answer_targets(chunk["labels"])
        logits = model(
            input_ids=chunk["input_ids"],
            attention_mask=chunk["attention_mask"],
            position_ids=chunk["position_ids"],
            logits_to_keep=target.shape[1] + 1,
        ).logits[:, :-1]
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        token = nn.functional.cross_entropy(
            logits.transpose(1, 2), target, ignore_index=-100, reduction="none"
        )
        real = (target != -100).sum(dim=1)
        out.extend(float(t) / int(r) for t, r in zip(token.sum(dim=1), real) if int(r))
    return out


@dataclass
class Ladder:
    """The scored rungs and the one chosen; ``records`` go into selection.json."""

    layers: list[int]
    records: list[dict[str, Any]] = field(default_factory=list)
    message: str = ""


def choose(
    sizes: dict[int, list[str]],
    order: list[int],
    losses: list[list[float]],
    tolerance: float,
    own: Callable[[int], list[float]] | None = None,
) -> Ladder:
    """The smallest rung level with the best and with all N blocks (module doc); with ``own``
    (rung index -> per-example losses under the own prompt, called only for the rungs it must
    judge), also level with all N blocks under the own prompt."""
    means = [_mean(x) for x in losses]
    best = min(range(len(means)), key=lambda i: (means[i], i))
    last = len(losses) - 1  # all N blocks
    own_losses: dict[int, list[float]] = {}

    def own_level(i: int) -> bool:
        if own is None:
            return True
        for j in (last, i):
            if j not in own_losses:
                own_losses[j] = own(j)
        d, se = paired(own_losses[i], own_losses[last])
        return math.isfinite(_mean(own_losses[i])) and d <= tolerance * se + EPS

    records, chosen = [], None
    for i, (k, names) in enumerate(sizes.items()):
        vs_best, vs_all = paired(losses[i], losses[best]), paired(losses[i], losses[last])
        level = math.isfinite(means[i]) and all(
            d <= tolerance * se + EPS for d, se in (vs_best, vs_all)
        )
        record: dict[str, Any] = {
            "k": k,
            "rules": names,
            "blocks": sorted(order[:k]),
            "loss": round(means[i], 6),
            "vs_best": [round(x, 6) for x in vs_best],
            "vs_all": [round(x, 6) for x in vs_all],
            "level": bool(level),
            "examples": len(losses[i]),
        }
        if level and chosen is None:
            own_ok = own_level(i)
            if own is not None:
                record["own_level"] = bool(own_ok)
            if own_ok:
                chosen = i
        records.append(record)
    if chosen is None:  # every rung non-finite: keep every block
        chosen = last
    for i, r in enumerate(records):
        r["chosen"] = i == chosen
        if i in own_losses:
            d, se = paired(own_losses[i], own_losses[last])
            r["own_loss"] = round(_mean(own_losses[i]), 6)
            r["own_vs_all"] = [round(d, 6), round(se, 6)]
    return Ladder(records[chosen]["blocks"], records, _message(records, chosen, best, tolerance))


def _mean(x: Sequence[float]) -> float:
    m = sum(x) / len(x) if x else math.inf
    return m if math.isfinite(m) else math.inf


def _message(records: list[dict[str, Any]], chosen: int, best: int, tolerance: float) -> str:
    n, c = records[-1]["k"], records[chosen]
    if chosen == len(records) - 1:
        if len(records) == 1:
            return f"flexora: all {n} blocks (validated: no smaller selection to try)"
        own = [r for r in records[:-1] if r.get("own_level") is False]
        if own:
            r = own[0]
            d, se = r["own_vs_all"]
            return (
                f"flexora: all {n} blocks (validated: {r['k']} blocks are level on the unseen "
                f"wordings but worse under the own prompt: {r['own_loss']:.4f} against all "
                f"{n} {records[-1]['own_loss']:.4f}, {d:+.4f} +- {se:.4f} paired SE)"
            )
        nearest = records[best] if best != chosen else records[-2]
        d, se = nearest["vs_all"]
        return (
            f"flexora: all {n} blocks (validated: every smaller selection validates worse; "
            f"all {n} {records[-1]['loss']:.4f}, {nearest['k']} blocks {nearest['loss']:.4f}, "
            f"{d:+.4f} +- {se:.4f} paired SE)"
        )
    d, se = c["vs_all"]
    text = (
        f"flexora: {c['k']} of {n} blocks (validated: within {tolerance:g} SE of the best; "
        f"{c['k']} blocks {c['loss']:.4f}, all {n} {records[-1]['loss']:.4f}, "
        f"{d:+.4f} +- {se:.4f} paired SE"
    )
    if best not in (chosen, len(records) - 1):
        text += f"; best {records[best]['k']} blocks {records[best]['loss']:.4f}"
    if "own_vs_all" in c:
        d, se = c["own_vs_all"]
        text += f"; own prompt {d:+.4f} +- {se:.4f} against all {n}"
    return text + ")"


@torch.no_grad()
def validated_selection(
    model: nn.Module,
    gates: LayerGates,
    batches: Sequence[Batch],
    rows: int = 0,
    tolerance: float = 1.0,
    gather: Callable[[list[float]], list[float]] | None = None,
    own_batches: Sequence[Batch] | None = None,
) -> Ladder:
    """Score every rung on ``batches`` with ``model``'s LoRA (gated by ``gates``) and choose.

    ``gather``: joins every rank's per-example losses (the same list on every rank); None on
    one process. ``own_batches``: the validation examples under the user's own prompt (the
    own-prompt check, module doc); None skips it.
    """
    alpha = gates.alpha.detach().cpu().tolist()
    searched = gates.values().detach()
    order = ranking(alpha)
    sizes = ladder_sizes(alpha)
    was_training = model.training
    model.eval()
    ks = list(sizes)

    def score(k: int, served: Sequence[Batch]) -> list[float]:
        on = torch.zeros_like(searched)
        on[order[:k]] = 1
        with gates.held(searched * on):
            rung = [x for b in served for x in per_example_losses(model, b, rows)]
        return gather(rung) if gather is not None else rung

    listed = list(own_batches) if own_batches is not None else []

    def own(i: int) -> list[float]:
        return score(ks[i], listed)

    try:
        losses = [score(k, batches) for k in ks]
        return choose(sizes, order, losses, tolerance, own if own_batches is not None else None)
    finally:
        model.train(was_training)
