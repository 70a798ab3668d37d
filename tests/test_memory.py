"""Memory handed back between the stages of one process (demo, study)."""

from __future__ import annotations

import ctypes
import gc
import os
import sys
import weakref

import pytest

import flexpaft.memory as memory
from flexpaft.memory import releases_memory


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


# Run in a fresh interpreter: how glibc lays out the heap depends on everything the process did
# before, and after a few hundred tests the freed chunks need not sit where this pattern puts them.
FRAGMENT = """
import gc, json, torch
from flexpaft.memory import release_memory


def rss_mib():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) / 1024 for l in f if l.startswith("VmRSS"))


# The pattern a training run leaves: freeing an 8 MiB (mmapped) tensor raises glibc's mmap
# threshold, so the next 1 MiB tensors come from the heap; small survivors between them (a run's
# long-lived objects) keep the heap from shrinking by itself, and the freed pages stay resident.
del_me = torch.ones(8 << 18)
del del_me
chunks, survivors = [], []
for _ in range(200):
    chunks.append(torch.ones(1 << 18))
    survivors.append(torch.ones(16))
del chunks
gc.collect()
before = rss_mib()
if TRIM:
    release_memory()
print(json.dumps([before, rss_mib(), sum(int(s.sum()) for s in survivors)]))
"""


def _fragment(trim: bool) -> tuple[float, float]:
    import json
    import subprocess

    code = f"TRIM = {trim}\n" + FRAGMENT
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    before, after, total = json.loads(out.stdout.strip().splitlines()[-1])
    assert total == 200 * 16
    return before, after


def _glibc() -> bool:
    try:
        return sys.platform.startswith("linux") and hasattr(ctypes.CDLL("libc.so.6"), "malloc_trim")
    except OSError:
        return False


@pytest.mark.skipif(not _glibc(), reason="malloc_trim is glibc's")
def test_release_memory_returns_a_fragmented_heap():
    before, after = _fragment(trim=True)
    assert before - after > 100, (before, after)
    # and without it the pages stay: the test measures the trim, not the pattern
    before, after = _fragment(trim=False)
    assert abs(before - after) < 20, (before, after)
