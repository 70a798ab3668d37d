"""Memory options on a GPU: tokens/s, MFU and peak memory with each option on and off.

Every flexpaft variant goes through the code path ``flexpaft train`` uses: ``load_for_training``
(BitsAndBytesConfig, ``prepare_model_for_kbit_training``, activation checkpointing, attention
kernel), ``add_lora``, an Accelerator from ``build_accelerator`` (mixed precision, torch.compile)
and ``answer_loss`` + ``accelerator.backward`` + clipping + AdamW. ``plain`` is GPU.md's
reference loop (transformers + PEFT, bf16 weights, ``model(**batch, labels=labels).loss``).

Batches are random tokens with the loss on every position (identical work for every variant).
A variant is ``plain``, ``flexpaft``, or option tokens joined by '+':
  gc (gradient checkpointing), bf16 / fp16 (autocast through accelerate), 4bit / 8bit
  (bitsandbytes), compile (torch.compile), cudagraphs (torch.compile's CUDA-graph backend, no
  Inductor: what replaying kernel launches buys where the GPU is launch-bound), eager / sdpa /
  fa2 (attention kernel).
Variants run one after another, each with its own freshly loaded model (a 4-bit and a bf16 8B
model do not fit side by side on every card). A variant this machine cannot run (4bit without
CUDA or bitsandbytes) is reported with flexpaft's one-line reason instead of figures; one that
fails (out of memory, a compiler error) is reported with its error, and the next one runs.

MFU counts 4N FLOPs per token (forward 2N + backward to the activations 2N; the frozen base
needs no weight gradients), as in ../shared/docs/GPU.md, against the GPU's dense bf16 peak
(--peak-tflops; H100/H200 SXM: 989). Recomputation under gc is not counted as useful work.

Random-init shapes are written once as a bf16 checkpoint under --cache-dir (16 GB for the 8B
shape), so that quantized variants load through ``from_pretrained`` like a real model.

CPU check of the code path:
    python benchmarks/gpu_memory.py --model llama-tiny --batch 2 --seq-len 64 \
        --variants plain,flexpaft,gc,bf16,4bit,4bit+gc --repeats 2 --warmup 1
GPU (see benchmarks/README.md for the full list):
    python benchmarks/gpu_memory.py --device cuda --model llama-3-8b --batch 1 --seq-len 1024 \
        --variants 4bit+gc,4bit,gc,flexpaft --repeats 12 --warmup 4
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import early_threads  # noqa: E402

THREADS = early_threads()

import gc as _gc  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from common import (  # noqa: E402
    SHAPES,
    PeakMemory,
    base_parser,
    command_line,
    machine,
    machine_line,
    markdown_table,
    median,
    resolve_device,
    stage,
    sync,
    write_json,
)

from flexpaft.errors import FlexpaftError  # noqa: E402
from flexpaft.settings.common import ModelSettings  # noqa: E402
from flexpaft.settings.train import LoraSettings  # noqa: E402
from flexpaft.training.compute import (  # noqa: E402
    ComputeSettings,
    attention_without_cudnn,
    load_for_training,
)
from flexpaft.training.data import answer_loss  # noqa: E402
from flexpaft.training.distributed import build_accelerator  # noqa: E402
from flexpaft.training.lora import add_lora  # noqa: E402

TOKENS = {
    "gc": {"gradient_checkpointing": True},
    "bf16": {"mixed_precision": "bf16"},
    "fp16": {"mixed_precision": "fp16"},
    "4bit": {"load_in_4bit": True},
    "8bit": {"load_in_8bit": True},
    "compile": {"torch_compile": True},
    "cudagraphs": {"torch_compile": True, "torch_compile_backend": "cudagraphs"},
    "eager": {"attn_implementation": "eager"},
    "sdpa": {"attn_implementation": "sdpa"},
    "fa2": {"attn_implementation": "flash_attention_2"},
}


def compute_settings(variant: str, compile_backend: str) -> ComputeSettings:
    """``4bit+gc`` -> ComputeSettings(load_in_4bit=True, gradient_checkpointing=True)."""
    kwargs: dict[str, Any] = {"mixed_precision": "no"}
    for token in [] if variant == "flexpaft" else variant.split("+"):
        if token not in TOKENS:
            sys.exit(f"unknown variant token {token!r} (known: {', '.join(TOKENS)})")
        kwargs.update(TOKENS[token])
    if kwargs.get("torch_compile"):
        kwargs.setdefault("torch_compile_backend", compile_backend)
    return ComputeSettings(**kwargs)


def checkpoint_dir(
    name: str, cache: Path, device: torch.device, dtype: str, tokenizer: str = ""
) -> str:
    """A loadable model directory: the embedded model, a local path, or a random-init shape
    saved once (weights random; speed and memory do not depend on their values). A shape takes
    the tokenizer saved in ``tokenizer``, else the embedded model's (which needs its GGUF)."""
    from flexpaft.models import load_tokenizer, parse_dtype, resolve_model

    if name not in SHAPES:
        return resolve_model(name)
    target = cache / f"{name}-{dtype}"
    if (target / "config.json").is_file():
        return str(target)
    from transformers import AutoModelForCausalLM, LlamaConfig

    with stage(f"writing a random-init {name} checkpoint to {target} (once)"):
        tok = load_tokenizer(tokenizer or resolve_model("embedded"))
        cfg = LlamaConfig(**SHAPES[name], pad_token_id=tok.pad_token_id)
        torch.manual_seed(0)
        with torch.device(device):  # initialising 8B parameters on a CPU takes minutes
            model = AutoModelForCausalLM.from_config(cfg, dtype=parse_dtype(dtype, device))
        model.save_pretrained(target, safe_serialization=True)
        tok.save_pretrained(target)
        del model
    return str(target)


def random_batch(batch: int, seq_len: int, vocab: int, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, vocab, (batch, seq_len), generator=g)
    return {
        "input_ids": ids.to(device),
        "labels": ids.clone().to(device),
        "attention_mask": torch.ones_like(ids).to(device),
        "position_ids": torch.arange(seq_len).expand(batch, -1).contiguous().to(device),
    }


def free(device: torch.device) -> None:
    _gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def plain_step_fn(path: str, device: torch.device, dtype: str, lora: LoraSettings, batch: dict):
    """GPU.md's loop: transformers + PEFT, no flexpaft."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from flexpaft.models import parse_dtype

    model = AutoModelForCausalLM.from_pretrained(path, dtype=parse_dtype(dtype, device)).to(device)
    model = get_peft_model(
        model,
        LoraConfig(r=lora.r, lora_alpha=lora.alpha, target_modules=lora.target_modules),
    )
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    plain = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}

    def step() -> float:
        loss = model(**plain).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    n = model.get_base_model().num_parameters()
    return step, n, {"model": model, "opt": opt}


def flexpaft_step_fn(
    path: str,
    device: torch.device,
    dtype: str,
    lora: LoraSettings,
    batch: dict,
    compute: ComputeSettings,
):
    """flexpaft train's path with ``compute``'s options (raises FlexpaftError where it cannot)."""
    acc = build_accelerator(1, compute)
    model, _ = load_for_training(ModelSettings(name=path, dtype=dtype), compute, device)
    n = model.num_parameters()  # counts packed 4-bit weights as weights
    model = add_lora(model, lora)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    wrapped, opt = acc.prepare(model, opt)
    wrapped.train()

    @attention_without_cudnn()  # as the trainer runs (compute.py)
    def step() -> float:
        loss = answer_loss(wrapped, batch)
        acc.backward(loss)
        acc.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step, n, {"model": wrapped, "opt": opt, "acc": acc}


def run_variant(variant: str, args: Any, path: str, device: torch.device) -> dict[str, Any]:
    """One variant's figures, or its reason: ``skipped`` (flexpaft refused it in one line, or
    this machine cannot run it) or ``failed`` (any other error, e.g. out of memory or a compiler
    error), so that one variant's failure does not cost the variants after it."""
    row: dict[str, Any] = {"variant": variant}
    if "cudagraphs" in variant.split("+") and device.type != "cuda":
        row["skipped"] = f"CUDA graphs need a CUDA GPU, found {device}"
    else:
        try:
            row.update(measure_variant(variant, args, path, device))
        except FlexpaftError as e:
            row["skipped"] = str(e)
        except Exception as e:  # reported in the row; the next variant runs
            lines = str(e).strip().splitlines() or [""]
            row["failed"] = f"{type(e).__name__}: {lines[0][:300]}"
    if "skipped" in row or "failed" in row:
        why = row.get("skipped") or row.get("failed")
        print(
            f"  {variant}: {'skipped' if 'skipped' in row else 'failed'} ({why})", file=sys.stderr
        )
    free(device)
    return row


def measure_variant(variant: str, args: Any, path: str, device: torch.device) -> dict[str, Any]:
    lora = LoraSettings(r=8, target_modules=["q_proj", "v_proj"])
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(path).vocab_size
    batch = random_batch(args.batch, args.seq_len, vocab, device)
    row: dict[str, Any] = {}
    t_load = time.perf_counter()
    if variant == "plain":
        step, n, held = plain_step_fn(path, device, args.dtype, lora, batch)
    else:
        compute = compute_settings(variant, args.compile_backend)
        step, n, held = flexpaft_step_fn(path, device, args.dtype, lora, batch, compute)
    row["load_seconds"] = round(time.perf_counter() - t_load, 1)
    first = None
    for _ in range(args.warmup):
        t0 = time.perf_counter()
        step()
        sync(device)
        # The first step holds the one-time costs (torch.compile's compilation, CUDA graph
        # capture, kernel autotuning): what a user pays once per run.
        first = time.perf_counter() - t0 if first is None else first
    times, losses = [], []
    with PeakMemory(device) as mem:
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            losses.append(step())
            sync(device)
            times.append(time.perf_counter() - t0)
    step_s = median(times)
    tokens = args.batch * args.seq_len
    row.update(
        first_step_seconds=round(first, 2) if first is not None else None,
        step_seconds=round(step_s, 4),
        tokens_per_second=round(tokens / step_s, 1),
        peak_gib=round(mem.bytes / 2**30, 2) if mem.bytes is not None else None,
        peak_kind=mem.kind,
        params=n,
        loss=round(losses[-1], 4),
        mfu=round(4 * n * tokens / step_s / (args.peak_tflops * 1e12), 3)
        if args.peak_tflops
        else None,
    )
    print(f"  {variant}: {step_s:.3f} s/step, peak {row['peak_gib']} GiB", file=sys.stderr)
    del held, step
    return row


def main() -> None:
    p = base_parser(__doc__.splitlines()[0], repeats=12)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--variants", default="plain,flexpaft,gc,bf16,4bit,4bit+gc")
    p.add_argument("--cache-dir", default="/tmp/flexpaft-bench", help="random-init checkpoints")
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=0.0,
        help="dense bf16 peak of the GPU for MFU (H100/H200 SXM: 989; 0 = guess from the name)",
    )
    p.add_argument("--compile-backend", default="inductor")
    p.add_argument("--budget-gib", type=float, default=24.0, help="report whether peaks fit")
    args = p.parse_args()
    device = resolve_device(args.device)
    if not args.peak_tflops and device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        args.peak_tflops = 989.0 if ("H100" in name or "H200" in name) else 0.0
    path = checkpoint_dir(args.model, Path(args.cache_dir), device, args.dtype, args.tokenizer)
    rows = []
    for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
        with stage(f"{args.model} {variant} at {args.batch} x {args.seq_len}"):
            rows.append(run_variant(variant, args, path, device))
    ref = next((r for r in rows if r["variant"] == "plain" and "step_seconds" in r), None)
    table_rows = []
    for r in rows:
        if "step_seconds" not in r:
            why = f"skipped: {r['skipped']}" if "skipped" in r else f"failed: {r.get('failed')}"
            table_rows.append([r["variant"], None, None, None, None, None, why])
            continue
        vs = (
            round(r["tokens_per_second"] / ref["tokens_per_second"], 2) if ref is not None else None
        )
        fits = r["peak_gib"] is not None and r["peak_gib"] <= args.budget_gib
        table_rows.append(
            [
                r["variant"],
                r["step_seconds"],
                r["tokens_per_second"],
                r["mfu"],
                r["peak_gib"],
                vs,
                ("fits" if fits else "over") + f" {args.budget_gib:g} GiB"
                if device.type == "cuda"
                else r["peak_kind"],
            ]
        )
    info = machine(device, THREADS)
    md = [
        f"Machine: {machine_line(info)}; model {args.model}, batch {args.batch} x "
        f"{args.seq_len}, LoRA r=8 on q_proj/v_proj, weights {args.dtype}",
        "",
        markdown_table(
            ["variant", "step (s)", "tokens/s", "MFU", "peak GiB", "vs plain", "note"],
            table_rows,
        ),
    ]
    print("\n".join(md))
    write_json(
        args.out, {"command": command_line(), "machine": info, "args": vars(args), "rows": rows}
    )


if __name__ == "__main__":
    main()
