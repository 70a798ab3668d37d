"""Peak memory of a run, measured the same way for the Flexora search and the trainer."""

from __future__ import annotations

import resource
import sys

import torch


def peak_memory(device: torch.device) -> tuple[int, str]:
    """Peak GPU memory allocated on CUDA, else the process's peak resident set size."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_memory_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes.
    return int(rss if sys.platform == "darwin" else rss * 1024), "process_peak_rss"
