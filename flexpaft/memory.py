"""Peak memory of a run, measured the same way for the Flexora search and the trainer; memory
handed back between the stages of a process that runs several (demo, study)."""

from __future__ import annotations

import ctypes
import functools
import resource
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import torch

P = ParamSpec("P")
R = TypeVar("R")


def peak_memory(device: torch.device) -> tuple[int, str]:
    """Peak GPU memory allocated on CUDA, else the process's peak resident set size."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_memory_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes.
    return int(rss if sys.platform == "darwin" else rss * 1024), "process_peak_rss"


def release_memory() -> None:
    """Collect garbage, empty the accelerator's cache and hand freed heap back to the OS.

    Why: glibc keeps the chunks a finished stage freed in its arenas, so on a CPU the next stage's
    peak comes on top of them. A demo training run left 1.4 GB of RSS behind it, and the demo's
    peak was that plus the next run's (docs/RESULTS.md, issue 8). ``malloc_trim`` returns it.
    """
    from accelerate.utils import release_memory as gc_and_empty_cache

    gc_and_empty_cache()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (musl): nothing to trim
            pass


def releases_memory(fn: Callable[P, R]) -> Callable[P, R]:
    """Run ``fn``, then :func:`release_memory` once its frame (its model, optimizer, batches)
    is gone, also when it raises: for the stages a long process runs one after another."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        finally:
            release_memory()

    return wrapper
