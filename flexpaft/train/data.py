"""Training data: (example, template) pairs rendered and tokenized on demand, then padded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..prompts.template import Template
from ..render import encode_for_training, render
from ..tasks.spec import AnswerFormat, Example, TaskSpec


@dataclass
class RenderedDataset:
    """Indexed by (example index, template index): rendering happens in the DataLoader worker."""

    task: TaskSpec
    examples: list[Example]
    templates: list[Template]
    fmt: AnswerFormat
    tokenizer: Any
    max_length: int

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, list[int]]:
        ex_idx, tpl_idx = key
        rendered = render(self.task, self.templates[tpl_idx], self.examples[ex_idx], self.fmt)
        enc = encode_for_training(self.tokenizer, rendered, self.max_length)
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
    """Right-pads a batch; padded label positions are -100 so they carry no loss."""

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
            ids[i, :k] = torch.tensor(it["input_ids"])
            labels[i, :k] = torch.tensor(it["labels"])
            mask[i, :k] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}
