"""Shared helpers for the benchmark scripts: threads, models, timing, peak memory, reporting.

Every script compares flexpaft against the alternative a user would otherwise run IN THE SAME
PROCESS, one repetition of each variant in turn (A, B, A, B, ...), so that drift in a shared
machine's speed (another job, thermal limits) hits every variant alike.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as _dt
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# Importable from a fresh clone without `pip install -e .`.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def set_threads(n: int) -> None:
    """Pin the math libraries to ``n`` threads BEFORE torch creates its pools.

    On a machine shared with another job, more threads than free cores made every op several
    times slower (oversubscription), so the default is one thread.
    """
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    import torch

    torch.set_num_threads(n)


def early_threads(default: int = 1) -> int:
    """Read ``--threads`` from argv before argparse (torch must see the env vars first)."""
    n = default
    for i, a in enumerate(sys.argv):
        if a == "--threads" and i + 1 < len(sys.argv):
            n = int(sys.argv[i + 1])
        elif a.startswith("--threads="):
            n = int(a.split("=", 1)[1])
    set_threads(n)
    return n


SHARED_ENV = "FLEXPAFT_SHARED_DIR"


def shared_dir() -> Path:
    """The project's shared data directory (``../shared`` next to the repository).

    ``$FLEXPAFT_SHARED_DIR`` comes first: a GPU machine gets only the repository, so the GPU suite
    carries the data files it needs in a git-ignored folder and points this variable at it.
    """
    if os.environ.get(SHARED_ENV):
        given = Path(os.environ[SHARED_ENV])
        if not (given / "data").is_dir():
            sys.exit(f"{SHARED_ENV}={given} has no data/ folder")
        return given
    for cand in (REPO.parent / "shared", REPO / "shared"):
        if (cand / "data").is_dir():
            return cand
    sys.exit(
        f"benchmarks need the shared data directory: expected {REPO.parent / 'shared'}/data "
        "(boolq.jsonl, piqa.jsonl); clone it next to the repository"
    )


def data_file(name: str) -> Path:
    path = shared_dir() / "data" / name
    if not path.is_file():
        sys.exit(f"missing benchmark data file {path}")
    return path


def base_parser(description: str, repeats: int) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument(
        "--model",
        default="embedded",
        help="embedded (SmolLM2-135M, real weights) or a random-init shape: " + ", ".join(SHAPES),
    )
    p.add_argument("--dtype", default="auto", help="auto = bf16 on GPU, fp32 on CPU")
    p.add_argument(
        "--tokenizer",
        default="",
        help="tokenizer directory for the random-init shapes (default: the embedded model's, "
        "which needs its GGUF; a saved copy lets a machine without the GGUF run them)",
    )
    p.add_argument("--repeats", type=int, default=repeats, help="timed repetitions per variant")
    p.add_argument("--warmup", type=int, default=1, help="untimed repetitions per variant first")
    p.add_argument("--threads", type=int, default=1, help="torch/OMP/MKL threads (CPU)")
    p.add_argument("--out", default="", help="write the results as JSON here")
    return p


# --- models ----------------------------------------------------------------------------------

# Published sizes; weights are random (speed and memory do not depend on their values).
SHAPES: dict[str, dict[str, Any]] = {
    "llama-3.2-1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        tie_word_embeddings=True,
        rope_theta=500000.0,
        max_position_embeddings=8192,
    ),
    "llama-3-8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        tie_word_embeddings=False,
        rope_theta=500000.0,
        max_position_embeddings=8192,
    ),
    # CPU-sized shapes for the scaling study: SmolLM2's vocabulary so its tokenizer fits.
    "llama-tiny": dict(
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=49152,
        tie_word_embeddings=True,
        max_position_embeddings=2048,
    ),
}


def resolve_device(name: str) -> Any:
    import torch

    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda asked for, but torch sees no GPU")
    return dev


def load_bench_model(
    name: str, device: Any, dtype: str = "auto", tokenizer: str = ""
) -> tuple[Any, Any]:
    """(model, tokenizer). Random-init shapes borrow the embedded model's tokenizer for task text
    (its ids fit any of the vocabularies above), or the one saved in ``tokenizer``."""
    import torch

    from flexpaft.models import load_model, load_tokenizer, parse_dtype, resolve_model

    if name not in SHAPES:
        return load_model(name, dtype, device)
    from transformers import AutoModelForCausalLM, LlamaConfig

    tok = load_tokenizer(tokenizer or resolve_model("embedded"))
    cfg = LlamaConfig(**SHAPES[name], pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    # Built directly on the target device: initialising 8B parameters on a CPU takes minutes.
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=parse_dtype(dtype, device))
    return model, tok


def n_params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


# --- timing and memory -----------------------------------------------------------------------


def sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _proc_status(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def release_free_memory() -> None:
    """Return malloc's free pages to the OS, so memory a region reuses shows up in its RSS.

    Without this, memory freed by an earlier variant stays resident in glibc's heap and the next
    variant's peak reads as (nearly) zero.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@dataclass
class PeakMemory:
    """Peak memory of a code region.

    CUDA: ``max_memory_allocated`` (absolute, weights included, as in GPU.md). CPU: the rise of
    the process's resident-set high-water mark over the RSS at entry (Linux resets the mark on
    writing 5 to /proc/self/clear_refs), i.e. what the region itself added on top of the loaded
    model; None where the mark cannot be reset.
    """

    device: Any
    bytes: int | None = None
    kind: str = ""
    _base: int = 0
    # CUDA: bytes allocated at entry (the loaded model), so ``bytes - entry_bytes`` is what the
    # region added, comparable across regions that start from different models.
    entry_bytes: int = 0

    def __enter__(self) -> PeakMemory:
        import torch

        if self.device.type != "cuda":
            release_free_memory()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.entry_bytes = int(torch.cuda.memory_allocated(self.device))
            self.kind = "cuda_max_allocated"
        else:
            try:
                with open("/proc/self/clear_refs", "w") as fh:
                    fh.write("5")
                self._base = _proc_status("VmRSS")
                self.kind = "cpu_rss_peak_delta"
            except OSError:
                self.kind = ""
        return self

    def __exit__(self, *exc: Any) -> None:
        import torch

        if self.device.type == "cuda":
            self.bytes = int(torch.cuda.max_memory_allocated(self.device))
        elif self.kind:
            self.bytes = max(0, _proc_status("VmHWM") - self._base)


@dataclass
class Sample:
    seconds: float
    peak_bytes: int | None
    info: dict[str, Any] = field(default_factory=dict)


def interleave(
    variants: dict[str, Callable[[], dict[str, Any] | None]],
    device: Any,
    repeats: int,
    warmup: int,
    log: bool = True,
    memory_pass: bool = True,
    memory_variants: dict[str, Callable[[], Any]] | None = None,
) -> dict[str, list[Sample]]:
    """Run each variant's callable ``warmup + repeats`` times, round-robin; timed samples only.

    The order rotates every round so no variant always runs right after the same other one.
    CUDA peak memory is read during the timed runs (resetting the counter costs nothing). On CPU,
    measuring means handing free pages back to the OS first, and re-faulting them would slow the
    timed run, so each variant runs once more afterwards for memory only (``memory_pass``),
    through ``memory_variants[name]`` when given (e.g. every variant on its worst-case batch, so
    the peaks compare like with like); the peak is stored on every sample of that variant.
    """
    names = list(variants)
    out: dict[str, list[Sample]] = {n: [] for n in names}
    on_gpu = device.type == "cuda"
    for r in range(warmup + repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            sync(device)
            with PeakMemory(device) if on_gpu else nullcontext() as mem:
                t0 = time.perf_counter()
                info = variants[name]() or {}
                sync(device)
                dt = time.perf_counter() - t0
            if r >= warmup:
                out[name].append(Sample(dt, mem.bytes if on_gpu else None, info))
            if log:
                tag = "warm-up" if r < warmup else f"rep {r - warmup + 1}/{repeats}"
                print(f"  [{tag}] {name}: {dt:.3f} s", file=sys.stderr, flush=True)
    if not on_gpu and memory_pass:
        for name in names:
            with PeakMemory(device) as mem:
                (memory_variants or variants)[name]()
            for smp in out[name]:
                smp.peak_bytes = mem.bytes
    return out


def median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def peak_mib(samples: list[Sample]) -> float | None:
    vals = [s.peak_bytes for s in samples if s.peak_bytes is not None]
    return round(max(vals) / 2**20, 1) if vals else None


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares ``y = a + b x``: (a, b), the fixed cost and the cost per unit."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    return my - b * mx, b


# --- reporting -------------------------------------------------------------------------------


def machine(device: Any, threads: int) -> dict[str, Any]:
    """What the figures were measured on."""
    import peft
    import torch
    import transformers

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if "model name" in line)
    except (OSError, StopIteration):
        pass
    info: dict[str, Any] = {
        "date": _dt.date.today().isoformat(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": threads if device.type == "cpu" else torch.get_num_threads(),
        "device": str(device),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def machine_line(m: dict[str, Any]) -> str:
    where = m.get("gpu") or f"{m['cpu']} ({m['cores']} cores, {m['threads']} thread(s))"
    return (
        f"{where}; torch {m['torch']}, transformers {m['transformers']}, peft {m['peft']}; "
        f"{m['date']}"
    )


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:,.3f}" if abs(v) < 10 else f"{v:,.1f}" if abs(v) < 1000 else f"{v:,.0f}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def command_line() -> str:
    return "python " + " ".join([os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])


def write_json(path: str, payload: dict[str, Any]) -> None:
    if not path:
        return
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"results written to {p}", file=sys.stderr)


@contextmanager
def stage(msg: str) -> Iterator[None]:
    t0 = time.perf_counter()
    print(f"{msg} ...", file=sys.stderr, flush=True)
    yield
    print(f"{msg}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
