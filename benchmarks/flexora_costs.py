"""Flexora's costs: the layer search against stage-2 training, and what skipping blocks saves.

Part 1 runs ``flexpaft.train.trainer.train`` with method=flexora on a small budget (the search is
one pass over the training split, stage 2 trains ``--epochs`` epochs on the same split) and reads
the manifest: flexora.search_seconds against train_seconds (the paper reports the search at about
a fifth of training). Peak memory of each phase is measured by wrapping ``search_layers`` and
``train_lora`` (CUDA: max allocated; CPU: rise of peak RSS over the loaded model).

Part 2 times the stage-2 step (flexpaft's answer_loss + clip + AdamW on random tokens of fixed
length, the GPU.md setting) with LoRA on all blocks, the top half, and every other block from
block 0, interleaved. Backpropagation stops at the lowest adapted block, so the top half should
save the backward pass through the lower half, and every-other-block should save almost nothing.

CPU:  python benchmarks/flexora_costs.py
GPU:  python benchmarks/flexora_costs.py --device cuda --model llama-3.2-1b --batch 8 \
          --seq-len 512 --repeats 12 --warmup 4 --limit 520 --max-length 512
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import early_threads  # noqa: E402

THREADS = early_threads()

import tempfile  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from common import (  # noqa: E402
    SHAPES,
    PeakMemory,
    base_parser,
    command_line,
    data_file,
    interleave,
    load_bench_model,
    machine,
    machine_line,
    markdown_table,
    median,
    peak_mib,
    resolve_device,
    stage,
    write_json,
)

import flexpaft.flexora.search as search_mod  # noqa: E402
import flexpaft.train.trainer as trainer_mod  # noqa: E402
from flexpaft.settings import DataSettings, ModelSettings  # noqa: E402
from flexpaft.train.config import (  # noqa: E402
    FlexoraSettings,
    LoraSettings,
    OptimSettings,
    TrainConfig,
)
from flexpaft.train.data import PadCollator, answer_loss  # noqa: E402
from flexpaft.train.lora import lora_config  # noqa: E402


def instrument(device: torch.device, peaks: dict[str, int | None]) -> None:
    """Wrap the two phases of ``train`` to record each one's peak memory.

    ``train`` imports search_layers from its module at call time and calls train_lora through
    the trainer module's globals, so replacing the module attributes reaches both.
    """
    search_fn, stage2_fn = search_mod.search_layers, trainer_mod.train_lora

    def search_layers(*a: Any, **k: Any) -> Any:
        with PeakMemory(device) as mem:
            out = search_fn(*a, **k)
        peaks["search"] = mem.bytes
        return out

    def train_lora(*a: Any, **k: Any) -> Any:
        with PeakMemory(device) as mem:
            out = stage2_fn(*a, **k)
        peaks["stage2"] = mem.bytes
        return out

    search_mod.search_layers = search_layers
    trainer_mod.train_lora = train_lora


def shape_loader(device: torch.device) -> None:
    """Let ``train`` load a random-init shape (the trainer only knows real checkpoints)."""
    real = trainer_mod.load_model

    def load_model(name: str, dtype: str, dev: Any, trust: bool = False) -> Any:
        if name in SHAPES:
            return load_bench_model(name, torch.device(dev), dtype)
        return real(name, dtype, dev, trust)

    trainer_mod.load_model = load_model


def search_vs_training(args: Any, device: torch.device, run: int) -> dict[str, Any]:
    peaks: dict[str, int | None] = {}
    instrument(device, peaks)
    out = Path(tempfile.mkdtemp(prefix="flexora_costs_"))
    cfg = TrainConfig(
        method="flexora",
        output_dir=str(out),
        seed=run,
        checkpoint_every=0,
        resume=False,
        log_every=0,
        model=ModelSettings(name=args.model, dtype=args.dtype),
        data=DataSettings(
            task=args.task,
            source=str(data_file(f"{args.task}.jsonl")),
            format=args.format,
            limit=args.limit,
            max_length=args.max_length,
        ),
        lora=LoraSettings(),
        optim=OptimSettings(batch_size=args.batch, epochs=args.epochs, num_workers=-1),
        flexora=FlexoraSettings(val_examples=args.val_examples),
    )
    manifest = trainer_mod.train(cfg, progress=False).manifest
    fx = manifest["flexora"]
    search_s, train_s = fx["search_seconds"], manifest["train_seconds"]
    return {
        "run": run,
        "train_examples": fx["train_examples"],
        "search_steps": fx["steps"],
        "search_s": search_s,
        "stage2_steps": manifest["steps"],
        "stage2_s": train_s,
        "search_over_stage2": round(search_s / train_s, 3),
        "search_over_stage2_epoch": round(search_s / (train_s / args.epochs), 3),
        "search_peak_mib": round(peaks["search"] / 2**20, 1) if peaks.get("search") else None,
        "stage2_peak_mib": round(peaks["stage2"] / 2**20, 1) if peaks.get("stage2") else None,
        "manifest_search_peak_mib": round(fx["peak_memory_bytes"] / 2**20, 1),
        "manifest_peak_kind": fx["peak_memory_kind"],
        "layers": f"{fx['n_layers']}/{fx['n_blocks']}: {fx['layers']}",
    }


def layer_speedup(args: Any, device: torch.device) -> list[dict[str, Any]]:
    model, _ = load_bench_model(args.model, device, args.dtype)
    n = model.config.num_hidden_layers
    sets = {
        f"all {n} blocks": list(range(n)),
        f"top half ({n - n // 2} blocks)": list(range(n // 2, n)),
        f"every other from 0 ({(n + 1) // 2} blocks)": list(range(0, n, 2)),
    }
    from peft import get_peft_model

    # One base model, one adapter per layer set (PEFT's multi-adapter), so the variants share
    # the weights: three copies of an 8B model would not fit beside each other on one GPU.
    names = list(sets)
    peft_model = get_peft_model(model, lora_config(LoraSettings(), sets[names[0]]), names[0])
    for name in names[1:]:
        peft_model.add_adapter(name, lora_config(LoraSettings(), sets[name]))
    peft_model.train()

    B, L, vocab = args.batch, args.seq_len, model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    collate = PadCollator(0)
    batches = []
    for _ in range(4):
        x = torch.randint(0, vocab, (B, L), generator=gen)
        items = [{"input_ids": r.tolist(), "labels": [-100] + r[1:].tolist()} for r in x]
        batches.append({k: v.to(device) for k, v in collate(items).items()})
    optims: dict[str, torch.optim.Optimizer] = {}
    counter = {"i": 0}

    def step(name: str) -> Any:
        def run() -> dict[str, Any]:
            # set_adapter makes only this adapter trainable: autograd then needs no gradient
            # below its lowest block.
            peft_model.base_model.set_adapter(name)
            params = [p for p in peft_model.parameters() if p.requires_grad]
            if name not in optims:
                optims[name] = torch.optim.AdamW(params, lr=1e-4)
            batch = batches[counter["i"] % len(batches)]
            counter["i"] += 1
            loss = answer_loss(peft_model, batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optims[name].step()
            optims[name].zero_grad(set_to_none=True)
            return {"trainable": sum(p.numel() for p in params)}

        return run

    s = interleave({k: step(k) for k in names}, device, args.repeats, args.warmup)
    ref = median([x.seconds for x in s[names[0]]])
    rows = []
    for name in names:
        sec = median([x.seconds for x in s[name]])
        rows.append(
            {
                "lora_on": name,
                "step_s_median": round(sec, 3),
                "tokens_per_s": round(B * L / sec, 1),
                "speedup_vs_all": round(ref / sec, 3),
                "peak_mib": peak_mib(s[name]),
            }
        )
    return rows


def main() -> None:
    p = base_parser(__doc__.splitlines()[0], repeats=5)
    p.add_argument("--task", default="piqa")
    p.add_argument("--format", default="option_text")
    p.add_argument("--limit", type=int, default=72, help="part 1: examples (train + validation)")
    p.add_argument("--val-examples", type=int, default=8, help="part 1: search validation split")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--epochs", type=float, default=3.0, help="part 1: stage-2 epochs")
    p.add_argument("--search-repeats", type=int, default=1, help="part 1: full runs")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128, help="part 2: random tokens per sequence")
    p.add_argument("--parts", default="12")
    args = p.parse_args()
    device = resolve_device(args.device)
    shape_loader(device)
    results: dict[str, Any] = {
        "command": command_line(),
        "machine": machine(device, THREADS),
        "model": args.model,
        "args": vars(args),
    }
    print(f"Machine: {machine_line(results['machine'])}; model {args.model}\n")
    if "2" in args.parts:
        # Part 2 first: part 1's instrumentation and stage-2 memory stay out of its process state.
        with stage(f"part 2: stage-2 step by LoRA placement, {args.batch} x {args.seq_len}"):
            rows2 = layer_speedup(args, device)
        results["layer_speedup"] = rows2
    if "1" in args.parts:
        runs = []
        for r in range(args.search_repeats):
            with stage(f"part 1: flexora train on {args.task} (run {r + 1})"):
                runs.append(search_vs_training(args, device, r))
        results["search_vs_training"] = runs
        keys = [
            "train_examples",
            "search_steps",
            "search_s",
            "stage2_steps",
            "stage2_s",
            "search_over_stage2",
            "search_over_stage2_epoch",
            "search_peak_mib",
            "stage2_peak_mib",
        ]
        print(f"### Search vs stage-2 training ({args.task} {args.format}, {args.epochs} epochs)\n")
        print(
            markdown_table(
                [
                    "train ex.",
                    "search steps",
                    "search s",
                    "stage-2 steps",
                    "stage-2 s",
                    "search / stage 2",
                    "search / stage-2 epoch",
                    "search peak MiB",
                    "stage-2 peak MiB",
                ],
                [[r[k] for k in keys] for r in runs],
            )
        )
        print(f"\nSelected layers: {runs[-1]['layers']}\n")
    if "2" in args.parts:
        print(f"### Stage-2 step by LoRA placement ({args.batch} x {args.seq_len} random tokens)\n")
        keys = ["lora_on", "step_s_median", "tokens_per_s", "speedup_vs_all", "peak_mib"]
        print(
            markdown_table(
                ["LoRA on", "step s (median)", "tokens/s", "speed-up vs all", "peak MiB"],
                [[r[k] for k in keys] for r in results["layer_speedup"]],
            )
        )
    write_json(args.out, results)


if __name__ == "__main__":
    main()
