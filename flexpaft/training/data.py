"""Training data: (example, template) pairs rendered and tokenized on demand, then padded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from flexpaft.chat import ChatFormat
from flexpaft.prompts.template import Template
from flexpaft.render import encode_for_training, render
from flexpaft.tasks.spec import AnswerFormat, Example, TaskSpec


@dataclass
class RenderedDataset:
    """Indexed by (example index, template index): rendering happens in the DataLoader worker."""

    task: TaskSpec
    examples: list[Example]
    templates: list[Template]
    fmt: AnswerFormat
    tokenizer: Any
    max_length: int
    append_eos: bool = True
    chat: ChatFormat | None = None

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, list[int]]:
        ex_idx, tpl_idx = key
        rendered = render(
            self.task, self.templates[tpl_idx], self.examples[ex_idx], self.fmt, self.chat
        )
        enc = encode_for_training(self.tokenizer, rendered, self.max_length, self.append_eos)
        return {"input_ids": enc.input_ids, "labels": enc.labels}

    def length_estimates(self) -> np.ndarray:
        """Cheap per-example length proxy (characters of the fields) for grouping by length."""
        return np.array(
            [
                sum(len(v) for k, v in ex.fields.items() if k not in ("options",))
                for ex in self.examples
            ],
            dtype=np.int64,
        )


class PadCollator:
    """Left-pads a batch so every answer ends at the last position (see ``answer_loss``).

    Padded label positions are -100; ``position_ids`` count real tokens only, so a padded
    sequence is computed exactly as it would be alone.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int = 8) -> None:
        self.pad_id = pad_token_id
        self.multiple = pad_to_multiple_of

    def __call__(self, items: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        longest = max(len(it["input_ids"]) for it in items)
        if self.multiple > 1:
            longest = -(-longest // self.multiple) * self.multiple
        n = len(items)
        ids = torch.full((n, longest), self.pad_id, dtype=torch.long)
        labels = torch.full((n, longest), -100, dtype=torch.long)
        mask = torch.zeros((n, longest), dtype=torch.long)
        for i, it in enumerate(items):
            k = len(it["input_ids"])
            ids[i, longest - k :] = torch.tensor(it["input_ids"])
            labels[i, longest - k :] = torch.tensor(it["labels"])
            mask[i, longest - k :] = 1
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        return {
            "input_ids": ids,
            "labels": labels,
            "attention_mask": mask,
            "position_ids": position_ids,
        }


def answer_targets(labels: torch.Tensor) -> torch.Tensor:
    """The label columns ``answer_loss`` scores: the last ``answer_len`` (left padding puts every
    answer there); -100 marks positions that are not scored."""
    # A label in the very first position has no prediction; at most L - 1 targets exist.
    answer_len = min(int((labels != -100).sum(dim=1).max()), labels.shape[1] - 1)
    return labels[:, labels.shape[1] - answer_len :]


def answer_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over answer tokens, with the LM head applied only where it is needed.

    Batches are left-padded, so all answers sit in the last positions; ``logits_to_keep`` makes
    the model project only those hidden states onto the vocabulary. On a small model with a large
    vocabulary (SmolLM2: 49k x 576) the head over every position is a fifth of the forward pass
    and most of its activation memory. The value equals the usual shifted-label loss.
    """
    labels = batch["labels"]
    target = answer_targets(labels)
    answer_len = target.shape[1]
    keep = answer_len + 1
    logits = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        logits_to_keep=keep,
    ).logits
    pred = logits[:, :-1].float()
    return torch.nn.functional.cross_entropy(
        pred.reshape(-1, pred.shape[-1]), target.reshape(-1), ignore_index=-100
    )
