"""The search's data: an endless, resumable stream of training (or validation) batches."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader

from ..errors import FlexpaftError
from ..train.sampling import PromptBatchSampler

Batch = dict[str, torch.Tensor]


class BatchStream:
    """Endless batches over epochs with a resumable position (epoch, batches consumed)."""

    def __init__(self, loader: DataLoader, sampler: PromptBatchSampler, device: torch.device):
        self.loader, self.sampler, self.device = loader, sampler, device
        self.epoch, self.batch = 0, 0
        self._it: Any = None

    def seek(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch, self._it = epoch, batch, None

    def __next__(self) -> Batch:
        for _ in range(3):
            if self._it is None:
                self.sampler.set_epoch(self.epoch, skip=self.batch)
                self._it = iter(self.loader)
            try:
                batch = next(self._it)
            except StopIteration:
                self.epoch, self.batch, self._it = self.epoch + 1, 0, None
                continue
            self.batch += 1
            return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        raise FlexpaftError("the data loader yields no batches")
