"""Consistency training: one example under two templates, scored over its answer options.

Prompt-consistency training (Zhou et al. 2022, "Prompt Consistency for Zero-Shot Task
Generalization"; R-Drop's loss shape) asks a model to give one example the same answer
distribution whatever the wording. Here each training item is rendered under two templates (the
sampler's draw and a second one, see ``sampling.second_templates``); both are scored over the
task's answer options as the evaluator ranks them (``options.option_scores``), and

    loss = (CE(first) + CE(second)) / 2 + coefficient * symKL(p1, p2)

with ``p = softmax(option scores)`` and ``symKL = (KL(p1||p2) + KL(p2||p1)) / 2``. Both
cross-entropies are kept because the second pass is paid for anyway and treating the two views
alike keeps the term from pulling a correct first view towards a wrong second one without the
second view being taught too. Gradients flow through both views. Each view is an options batch
in ``OptionsCollator``'s layout (multi-token options packed after one shared prompt where the
attention kernel allows it), so a step costs about two options-loss passes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from flexpaft.training.options import Batch, OptionsCollator, OptionsDataset, option_scores

FIRST, SECOND = "first.", "second."


@dataclass
class PairedOptionsDataset(OptionsDataset):
    """Keys are (example, template, second template); an item holds both renderings."""

    def __getitem__(self, key: tuple[int, ...]) -> dict[str, object]:  # type: ignore[override]
        ex_idx, tpl_idx, second_idx = key
        return {
            "first": OptionsDataset.__getitem__(self, (ex_idx, tpl_idx)),
            "second": OptionsDataset.__getitem__(self, (ex_idx, second_idx)),
        }


class PairedCollator:
    """Both views collated as options batches, in one flat dict (``first.*``, ``second.*``)
    so accelerate moves it to the device like any batch."""

    def __init__(
        self, pad_token_id: int, pad_to_multiple_of: int = 1, packed: bool = False
    ) -> None:
        self.inner = OptionsCollator(pad_token_id, pad_to_multiple_of, packed)

    def __call__(self, items: list[dict[str, object]]) -> Batch:
        out: Batch = {}
        for prefix, key in ((FIRST, "first"), (SECOND, "second")):
            for k, v in self.inner([it[key] for it in items]).items():
                out[prefix + k] = v
        return out


def split_pair(batch: Batch) -> tuple[Batch, Batch]:
    """The two views of a ``PairedCollator`` batch."""
    first = {k[len(FIRST) :]: v for k, v in batch.items() if k.startswith(FIRST)}
    second = {k[len(SECOND) :]: v for k, v in batch.items() if k.startswith(SECOND)}
    return first, second


def symmetric_kl(scores_a: torch.Tensor, scores_b: torch.Tensor) -> torch.Tensor:
    """Mean over examples of (KL(p||q) + KL(q||p)) / 2, p and q the softmax of (B, K) scores.

    Options an example lacks are -inf in both (same example, same options) and contribute 0.
    """
    real = torch.isfinite(scores_a) & torch.isfinite(scores_b)
    # Missing options zeroed before the product, not after: (-inf) - (-inf) is NaN, and a NaN
    # there would reach the gradient (its factor's gradient is 0 * NaN) though where() drops it
    # from the value.
    zero = torch.zeros((), dtype=scores_a.dtype, device=scores_a.device)
    logp = torch.where(real, torch.log_softmax(scores_a, dim=-1), zero)
    logq = torch.where(real, torch.log_softmax(scores_b, dim=-1), zero)
    # (p - q)(log p - log q) summed is KL(p||q) + KL(q||p); 0 where an option is missing.
    diff = (logp.exp() - logq.exp()) * (logp - logq)
    per_example = diff.sum(dim=-1)
    return 0.5 * per_example.mean()


def consistency_loss(
    model: torch.nn.Module, batch: Batch, coefficient: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """The training loss of a paired batch, and its parts (for the log)."""
    first, second = split_pair(batch)
    s1, s2 = option_scores(model, first), option_scores(model, second)
    ce1 = torch.nn.functional.cross_entropy(s1, first["gold"])
    ce2 = torch.nn.functional.cross_entropy(s2, second["gold"])
    kl = symmetric_kl(s1, s2)
    loss = 0.5 * (ce1 + ce2) + coefficient * kl
    return loss, {"ce": float(0.5 * (ce1 + ce2).detach()), "sym_kl": float(kl.detach())}


def batch_tokens(batch: Batch) -> tuple[int, int]:
    """(real, padded) tokens the batch's forward passes process, every view counted: the cost
    of consistency's second pass shows in the run's tokens and tokens/s."""
    masks = [v for k, v in batch.items() if k == "attention_mask" or k.endswith(".attention_mask")]
    return int(sum(int(m.sum()) for m in masks)), int(sum(m.numel() for m in masks))
