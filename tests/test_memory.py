"""Memory handed back between the stages of one process (demo, study)."""

from __future__ import annotations

import ctypes
import gc
import sys
import weakref

import pytest
import torch

import flexpaft.memory as memory
from flexpaft.memory import release_memory, releases_memory


class Big:
    """Stands for a stage's model: only the stage's frame refers to it, through a cycle that
    plain reference counting cannot free."""

    def __init__(self) -> None:
        self.me = self


def test_releases_memory_runs_after_the_frame_is_gone(monkeypatch):
    seen = []

    @releases_memory
    def stage():
        obj = Big()
        seen.append(weakref.ref(obj))
        return 7

    def check():
        gc.collect()
        seen.append(seen[0]() is None)  # the stage's object is unreachable by now

    monkeypatch.setattr(memory, "release_memory", check)
    assert stage() == 7
    assert seen[1] is True
    assert stage.__name__ == "stage"


def test_releases_memory_also_after_an_error(monkeypatch):
    calls = []
    monkeypatch.setattr(memory, "release_memory", lambda: calls.append(1))

    @releases_memory
    def stage():
        raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):
        stage()
    assert calls == [1]


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _glibc() -> bool:
    try:
        return sys.platform.startswith("linux") and hasattr(ctypes.CDLL("libc.so.6"), "malloc_trim")
    except OSError:
        return False


@pytest.mark.skipif(not _glibc(), reason="malloc_trim is glibc's")
def test_release_memory_returns_a_fragmented_heap():
    """The pattern a training run leaves: glibc raised its mmap threshold after a large free,
    so the next 1 MiB tensors came from the heap; small survivors between them (as a run's
    long-lived objects) keep the heap from shrinking by itself, and the freed pages stay
    resident until trimmed."""
    del_me = torch.ones(8 << 18)  # 8 MiB, mmapped; freeing it raises the threshold past 1 MiB
    del del_me
    chunks, survivors = [], []
    for _ in range(200):
        chunks.append(torch.ones(1 << 18))  # 1 MiB, now from the heap
        survivors.append(torch.ones(16))
    del chunks
    gc.collect()
    before = _rss_mib()
    release_memory()
    after = _rss_mib()
    assert sum(int(s.sum()) for s in survivors) == 200 * 16
    assert before - after > 100, (before, after)
