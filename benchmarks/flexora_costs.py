"""Flexora's costs: the layer search against stage-2 training, and what skipping blocks saves.

Part 1 runs ``flexpaft.recipe.train`` with method=flexora at the default search settings
(length: flexora.search_budget of stage 2's compute, at most one pass; early stop once the
selection is stable for flexora.stable_steps) and reads the manifest: search seconds against
stage-2 seconds, wall and CPU seconds of this process (on shared cores wall time also counts the
other jobs). It then runs the paper's search length (one pass, no early stop; search only) and
compares the two selections; where they differ (``--compare auto``), stage 2 is trained on the
full-length selection too and both adapters are scored on the next ``--test`` examples (95%
Wilson intervals, paired bootstrap interval of the difference). Peak memory: on CUDA max
allocated per phase; on a CPU the peak of malloc'd bytes (mallinfo2, read after every torch op)
over ``--mem-steps`` steps of each phase on the same training batches, after one warm-up step of
each on another copy of the model.

Part 2 times the stage-2 step (flexpaft's answer_loss + clip + AdamW on random tokens of fixed
length, the GPU.md setting) with LoRA on all blocks, the top half, and every other block from
block 0, interleaved. Backpropagation stops at the lowest adapted block, so the top half should
save the backward pass through the lower half, and every-other-block should save almost nothing.

CPU:  python benchmarks/flexora_costs.py
GPU (random-init shapes: selections mean nothing there, so no accuracy comparison):
      python benchmarks/flexora_costs.py --device cuda --model llama-3.2-1b --batch 8 \
          --seq-len 512 --repeats 12 --warmup 4 --limit 1200 --val-examples 200 \
          --max-length 512 --compare never
      python benchmarks/flexora_costs.py --device cuda --model llama-3-8b --batch 4 \
          --seq-len 512 --repeats 8 --warmup 2 --limit 1200 --val-examples 200 \
          --max-length 512 --compare never
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import early_threads  # noqa: E402

THREADS = early_threads()

import ctypes  # noqa: E402
import dataclasses  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
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
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import flexpaft.methods.flexora.search as search_mod  # noqa: E402
import flexpaft.recipe as recipe_mod  # noqa: E402
import flexpaft.training.loop as trainer_mod  # noqa: E402
from flexpaft.settings.common import DataSettings, ModelSettings  # noqa: E402
from flexpaft.settings.train import (  # noqa: E402
    FlexoraSettings,
    LoraSettings,
    OptimSettings,
    TrainConfig,
)
from flexpaft.training.compute import attention_without_cudnn  # noqa: E402
from flexpaft.training.data import PadCollator, answer_loss  # noqa: E402
from flexpaft.training.lora import lora_config  # noqa: E402


def instrument(device: torch.device, peaks: dict[str, Any]) -> None:
    """Wrap the two phases of ``train`` to record each one's peak memory (CUDA: max allocated)
    and CPU seconds of this process (on shared cores wall time also counts the other jobs).

    ``train`` imports search_layers from its module at call time and calls train_lora through
    the trainer module's globals, so replacing the module attributes reaches both.
    """
    search_fn, stage2_fn = search_mod.search_layers, trainer_mod.train_lora

    def search_layers(*a: Any, **k: Any) -> Any:
        t = time.process_time()
        with PeakMemory(device) as mem:
            out = search_fn(*a, **k)
        peaks["search"], peaks["search_cpu_s"] = mem.bytes, time.process_time() - t
        peaks["search_entry"] = mem.entry_bytes
        return out

    def train_lora(*a: Any, **k: Any) -> Any:
        t = time.process_time()
        with PeakMemory(device) as mem:
            out = stage2_fn(*a, **k)
        peaks["stage2"], peaks["stage2_cpu_s"] = mem.bytes, time.process_time() - t
        peaks["stage2_entry"] = mem.entry_bytes
        return out

    search_mod.search_layers = search_layers
    trainer_mod.train_lora = train_lora


def shape_loader(device: torch.device, tokenizer: str = "") -> None:
    """Let ``train`` load a random-init shape (the trainer only knows real checkpoints).

    The trainer loads through ``flexpaft.models.load_model``, imported at call time by
    train/compute.py's ``load_for_training``, so replacing the module attribute reaches it.
    """
    import flexpaft.models as models_mod

    real = models_mod.load_model

    def load_model(name: str, dtype: str = "auto", dev: Any = None, *a: Any, **k: Any) -> Any:
        if name in SHAPES:
            return load_bench_model(name, torch.device(dev or device), dtype, tokenizer)
        return real(name, dtype, dev, *a, **k)

    models_mod.load_model = load_model


def flexora_config(args: Any, out: Path, **flexora: Any) -> TrainConfig:
    return TrainConfig(
        method="flexora",
        output_dir=str(out),
        seed=args.seed,
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
        flexora=FlexoraSettings(
            val_examples=args.val_examples, **{"micro_batch": args.micro_batch, **flexora}
        ),
    )


def flexora_run(args: Any, device: torch.device, name: str, **flexora: Any) -> dict[str, Any]:
    """``train(method=flexora)`` end to end; search and stage-2 seconds from its manifest."""
    peaks: dict[str, Any] = {}
    instrument(device, peaks)
    out = Path(tempfile.mkdtemp(prefix=f"flexora_costs_{name}_"))
    manifest = recipe_mod.train(flexora_config(args, out, **flexora), progress=False).manifest
    fx = manifest["flexora"]
    search_s, train_s = fx["search_seconds"], manifest["train_seconds"]
    row = {
        "run": name,
        "train_examples": fx["train_examples"],
        "search_steps": f"{fx['steps']} of {fx['budget_steps']}"
        + (" (stopped: stable)" if fx["stopped_early"] else ""),
        "search_s": search_s,
        "stage2_steps": manifest["steps"],
        "stage2_s": train_s,
        "search_over_stage2": round(search_s / train_s, 3),
        "search_cpu_s": round(peaks["search_cpu_s"], 1),
        "stage2_cpu_s": round(peaks["stage2_cpu_s"], 1),
        "search_over_stage2_cpu": round(peaks["search_cpu_s"] / peaks["stage2_cpu_s"], 3),
        "layers": fx["layers"],
        "n_blocks": fx["n_blocks"],
        "adapter": str(out / "adapter"),
        "alpha_log": str(out / "flexora" / "alpha.jsonl"),
    }
    if device.type == "cuda":
        row["search_peak_mib"] = round(peaks["search"] / 2**20, 1)
        row["stage2_peak_mib"] = round(peaks["stage2"] / 2**20, 1)
        # Above what was allocated at entry (the loaded weights): what each phase itself holds.
        added = {k: peaks[k] - peaks[f"{k}_entry"] for k in ("search", "stage2")}
        row["search_added_mib"] = round(added["search"] / 2**20, 1)
        row["stage2_added_mib"] = round(added["stage2"] / 2**20, 1)
        row["search_over_stage2_memory"] = round(peaks["search"] / peaks["stage2"], 3)
        row["search_over_stage2_added"] = round(added["search"] / max(1, added["stage2"]), 3)
    return row


def sign_history(alpha_log: str) -> dict[str, Any]:
    """When the selection (alpha > 0) last changed, and its longest unchanged run before that."""
    rows = [json.loads(x) for x in Path(alpha_log).read_text().splitlines() if x.strip()]
    patterns = [tuple(a > 0 for a in r["alpha"]) for r in rows]
    changes = [i + 1 for i in range(1, len(patterns)) if patterns[i] != patterns[i - 1]]
    last = changes[-1] if changes else 1
    runs, prev = [], 1
    for c in changes:
        runs.append(c - prev - 1)
        prev = c
    return {
        "steps": len(rows),
        "last_change_step": last,
        "changes": len(changes),
        "longest_unchanged_before_last_change": max(runs, default=0),
    }


class MallocPeak(TorchDispatchMode):
    """Peak of the bytes glibc malloc has handed out (``mallinfo2``: arena + mmap'd chunks in
    use), read after every torch op, including the backward's.

    On a CPU every tensor lives in malloc'd memory, so this follows allocated tensors the way
    CUDA's max_memory_allocated does. Process RSS would not: it charges the first phase with
    one-time costs (lazily touched weight pages, allocator arenas, imports) that the second then
    reuses, and it keeps freed pages.
    """

    class _Info(ctypes.Structure):
        _fields_ = [
            (name, ctypes.c_size_t)
            for name in (
                "arena",
                "ordblks",
                "smblks",
                "hblks",
                "hblkhd",
                "usmblks",
                "fsmblks",
                "uordblks",
                "fordblks",
                "keepcost",
            )
        ]

    def __init__(self) -> None:
        super().__init__()
        self._mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
        self._mallinfo2.restype = MallocPeak._Info
        self.start = self.peak = self.in_use()

    def in_use(self) -> int:
        m = self._mallinfo2()
        return int(m.uordblks + m.hblkhd)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        self.peak = max(self.peak, self.in_use())
        return out


def peak_malloc_bytes(fn: Any) -> tuple[int, int]:
    """(peak bytes in use while ``fn()`` runs, bytes in use at entry)."""
    gc.collect()
    with MallocPeak() as mode:
        fn()
    return mode.peak, mode.start


def memory_probe(args: Any, device: torch.device, layers: list[int]) -> dict[str, Any]:
    """The search's first ``--mem-steps`` outer steps against stage 2's first as many steps.

    Both see the same training batches (same split, seed and sampler); the search adds its
    validation batches. Stage 2 adapts ``layers`` (the selection at the defaults).
    """
    from accelerate import Accelerator

    from flexpaft.methods.templates import training_templates
    from flexpaft.tasks.data import split_examples

    n = args.mem_steps
    cfg = flexora_config(args, Path(tempfile.mkdtemp()), search_steps=n, stable_steps=0)
    task, fmt, examples = cfg.data.load()
    acc = Accelerator(cpu=device.type == "cpu")
    train, _ = split_examples(examples, args.val_examples, cfg.seed)
    stage2_cfg = dataclasses.replace(
        cfg, optim=dataclasses.replace(cfg.optim, max_steps=n), method="lora"
    )

    def search(model: Any, tok: Any, c: TrainConfig) -> None:
        templates, _ = training_templates(c, task, fmt, examples, model, tok)
        search_mod.search_layers(c, model, tok, task, fmt, examples, templates, acc, False)

    def stage2(model: Any, tok: Any, c: TrainConfig) -> None:
        templates, _ = training_templates(c, task, fmt, examples, model, tok)
        trainer_mod.train_lora(c, acc, model, tok, task, fmt, train, templates, layers, False)

    # One step of each on another copy of the model first: one-time costs of the process (first
    # backward, kernel caches, imports such as matplotlib's for alpha.png) are paid there, not by
    # whichever phase is measured first. Stage 2 leaves LoRA in its model, hence the copies.
    warm, wtok = load_bench_model(args.model, device, args.dtype, args.tokenizer)
    one = dataclasses.replace(cfg, flexora=dataclasses.replace(cfg.flexora, search_steps=1))
    search(warm, wtok, one)
    stage2(
        warm,
        wtok,
        dataclasses.replace(stage2_cfg, optim=dataclasses.replace(cfg.optim, max_steps=1)),
    )
    del warm
    model, tok = load_bench_model(args.model, device, args.dtype, args.tokenizer)
    search_peak, base = peak_malloc_bytes(lambda: search(model, tok, cfg))
    model, tok = load_bench_model(args.model, device, args.dtype, args.tokenizer)
    stage2_peak, stage2_base = peak_malloc_bytes(lambda: stage2(model, tok, stage2_cfg))
    return {
        "steps": n,
        "base_mib": round(base / 2**20, 1),
        "search_peak_mib": round(search_peak / 2**20, 1),
        "stage2_peak_mib": round(stage2_peak / 2**20, 1),
        "search_over_stage2_total": round(search_peak / stage2_peak, 3),
        "search_added_mib": round((search_peak - base) / 2**20, 1),
        "stage2_added_mib": round((stage2_peak - stage2_base) / 2**20, 1),
        "search_over_stage2_added": round((search_peak - base) / (stage2_peak - stage2_base), 3),
    }


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def compare_accuracy(args: Any, device: torch.device, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Test accuracy of each run's stage-2 adapter on the next ``--test`` examples.

    95% Wilson intervals per run; the paired difference (same examples) with a bootstrap
    interval over examples (2,000 resamples).
    """
    import numpy as np

    from flexpaft.evaluation.evaluator import evaluate_templates, load_adapter
    from flexpaft.prompts.task_templates import default_template

    data = DataSettings(
        task=args.task,
        source=str(data_file(f"{args.task}.jsonl")),
        format=args.format,
        skip=args.limit,
        limit=args.test,
    )
    task, fmt, test = data.load()
    correct = {}
    out: dict[str, Any] = {"test_examples": len(test)}
    for run in runs:
        model, tok = load_bench_model(args.model, device, args.dtype, args.tokenizer)
        model = load_adapter(model, run["adapter"])
        res = evaluate_templates(
            model, tok, task, fmt, [default_template(task, fmt)], test, progress=False
        )
        c = np.array(res.per_template[0].correct)
        correct[run["run"]] = c
        lo, hi = wilson(int(c.sum()), len(c))
        out[run["run"]] = {
            "accuracy": round(100 * c.mean(), 1),
            "ci95": [round(100 * lo, 1), round(100 * hi, 1)],
        }
    a, b = (correct[r["run"]] for r in runs)
    diff = a.astype(float) - b.astype(float)
    rng = np.random.default_rng(0)
    boots = [diff[rng.integers(0, len(diff), len(diff))].mean() for _ in range(2000)]
    out["difference"] = {
        "runs": f"{runs[0]['run']} - {runs[1]['run']}",
        "points": round(100 * diff.mean(), 1),
        "ci95": [
            round(100 * float(np.percentile(boots, 2.5)), 1),
            round(100 * float(np.percentile(boots, 97.5)), 1),
        ],
    }
    return out


def layer_speedup(args: Any, device: torch.device) -> list[dict[str, Any]]:
    model, _ = load_bench_model(args.model, device, args.dtype, args.tokenizer)
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
        @attention_without_cudnn()  # as the trainer runs (compute.py)
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
    p.add_argument("--limit", type=int, default=104, help="part 1: examples (train + validation)")
    p.add_argument("--val-examples", type=int, default=8, help="part 1: search validation split")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--epochs", type=float, default=3.0, help="part 1: stage-2 epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument(
        "--micro-batch",
        type=int,
        default=0,
        help="part 1: flexora.micro_batch, rows per forward in the search (0 = auto, half a batch)",
    )
    p.add_argument("--mem-steps", type=int, default=4, help="part 1: steps of the memory probe")
    p.add_argument("--test", type=int, default=200, help="part 1: test examples (after --limit)")
    p.add_argument(
        "--compare",
        default="auto",
        help="part 1: stage 2 + test accuracy of the full-length search's selection too: "
        "auto (when it differs from the defaults'), always, never",
    )
    p.add_argument(
        "--full-search",
        default="yes",
        choices=("yes", "no"),
        help="part 1: also run the paper's one-pass search and compare selections (no: on "
        "random-init shapes a selection means nothing, and at 8B the pass costs minutes)",
    )
    p.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="KEY=VALUE,...",
        help="part 1: also run the search alone under these flexora settings (repeatable; e.g. "
        "search_budget=0.15, the length before 2026-12-04; since 2026-12-07 a share of one "
        "pass, as long as the old share of stage 2 at 2 epochs, one validation batch and "
        "budget_unit=rows); its seconds are set against the defaults run's stage 2",
    )
    p.add_argument("--seq-len", type=int, default=128, help="part 2: random tokens per sequence")
    p.add_argument("--parts", default="12")
    args = p.parse_args()
    device = resolve_device(args.device)
    shape_loader(device, args.tokenizer)
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
        with stage(f"part 1: flexora train on {args.task}, search at the defaults"):
            default = flexora_run(args, device, "defaults")
        results["search_vs_training"] = default
        full = None
        if args.full_search == "yes":
            with stage("part 1: search of one full pass, no early stop (search only)"):
                full_cfg = flexora_config(
                    args,
                    Path(tempfile.mkdtemp()),
                    search_examples=args.limit - args.val_examples,
                    stable_steps=0,
                )
                full = full_search(args, device, full_cfg)
            results["full_search"] = full
        for spec in args.also:
            settings = parse_settings(spec)
            with stage(f"part 1: search alone with {spec}"):
                cfg = flexora_config(args, Path(tempfile.mkdtemp()), **settings)
                row = full_search(args, device, cfg)
            row["settings"] = spec
            row["search_over_stage2"] = round(row["search_s"] / default["stage2_s"], 3)
            results.setdefault("also", []).append(row)
        differ = full is not None and full["layers"] != default["layers"]
        if full is not None and (args.compare == "always" or (args.compare == "auto" and differ)):
            with stage("part 1: flexora train with the full-length search"):
                full_run = flexora_run(
                    args,
                    device,
                    "full",
                    search_examples=args.limit - args.val_examples,
                    stable_steps=0,
                )
            with stage(f"part 1: test accuracy, {args.test} examples"):
                results["accuracy"] = compare_accuracy(args, device, [default, full_run])
        print_part1(args, results)
        write_json(args.out, results)
        if device.type != "cuda":
            with stage(f"part 1: memory probe, {args.mem_steps} steps"):
                results["memory"] = memory_probe(args, device, default["layers"])
            m = results["memory"]
            print(
                f"\nPeak malloc'd bytes over the first {m['steps']} steps (mallinfo2 after every "
                f"op): search adds {m['search_added_mib']} MiB, stage 2 adds "
                f"{m['stage2_added_mib']} MiB to the {m['base_mib']} MiB in use before: ratio "
                f"{m['search_over_stage2_added']}\n"
            )
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


def full_search(args: Any, device: torch.device, cfg: TrainConfig) -> dict[str, Any]:
    """The paper's search length (one pass over the training split, no early stop), search only."""
    from accelerate import Accelerator

    from flexpaft.methods.templates import training_templates

    task, fmt, examples = cfg.data.load()
    model, tok = load_bench_model(args.model, device, args.dtype, args.tokenizer)
    acc = Accelerator(cpu=device.type == "cpu")
    templates, _ = training_templates(cfg, task, fmt, examples, model, tok)
    outcome = search_mod.search_layers(cfg, model, tok, task, fmt, examples, templates, acc, False)
    log = Path(cfg.output_dir) / "flexora" / "alpha.jsonl"
    return {
        "steps": outcome.steps,
        "budget_steps": outcome.budget_steps,
        "stopped_early": outcome.stopped_early,
        "search_s": round(outcome.seconds, 1),
        "layers": outcome.layers,
        "alpha_log": str(log),
        "selection_history": sign_history(str(log)),
    }


def parse_settings(spec: str) -> dict[str, Any]:
    """'budget_unit=rows,search_budget=0.15' -> flexora keyword arguments, parsed and checked as
    ``--set flexora.KEY=VALUE`` would be (unknown keys, types and choices refused)."""
    from flexpaft.errors import FlexpaftError
    from flexpaft.settings.loading import parse_override
    from flexpaft.settings.schema import from_dict

    try:
        pairs = (parse_override(item) for item in filter(None, spec.split(",")))
        given = {".".join(key): value for key, value in pairs}
        checked = from_dict(FlexoraSettings, given, "flexora")
    except FlexpaftError as e:
        raise SystemExit(f"--also {spec!r}: {e}") from None
    return {key: getattr(checked, key) for key in given}


def print_part1(args: Any, results: dict[str, Any]) -> None:
    d = results["search_vs_training"]
    print(f"### Search vs stage-2 training ({args.task} {args.format}, {args.epochs} epochs)\n")
    keys = ["train_examples", "search_steps", "search_s", "stage2_steps", "stage2_s"]
    keys += ["search_over_stage2", "search_cpu_s", "stage2_cpu_s", "search_over_stage2_cpu"]
    heads = ["train ex.", "search steps", "search s", "stage-2 steps", "stage-2 s"]
    heads += ["search / stage 2", "search CPU s", "stage-2 CPU s", "search / stage 2 (CPU s)"]
    if "search_peak_mib" in d:
        keys += ["search_peak_mib", "stage2_peak_mib", "search_over_stage2_memory"]
        keys += ["search_added_mib", "stage2_added_mib", "search_over_stage2_added"]
        heads += ["search peak MiB", "stage-2 peak MiB", "search / stage 2 peak"]
        heads += ["search adds MiB", "stage 2 adds MiB", "search / stage 2 added"]
    print(markdown_table(heads, [[d[k] for k in keys]]))
    n = d["n_blocks"]
    print(f"\nSelected at the defaults ({len(d['layers'])}/{n}): {d['layers']}")
    for row in results.get("also", []):
        print(
            f"Search alone with {row['settings']}: {row['steps']} of {row['budget_steps']} steps"
            + (" (stopped: stable)" if row["stopped_early"] else "")
            + f", {row['search_s']} s = {row['search_over_stage2']} of the stage 2 above; "
            f"selected {len(row['layers'])}/{n}: {row['layers']}"
        )
    if "full_search" not in results:
        print()
        return
    full = results["full_search"]
    agree = n - len(set(d["layers"]) ^ set(full["layers"]))
    print(
        f"Selected by one full pass ({full['steps']} steps, {full['search_s']} s, "
        f"{len(full['layers'])}/{n}): {full['layers']}"
    )
    print(
        f"Blocks on which the two agree: {agree}/{n}; full-pass history: {full['selection_history']}"
    )
    if "accuracy" in results:
        acc = results["accuracy"]
        print(f"\nTest accuracy ({acc['test_examples']} examples, 95% Wilson intervals):")
        for name in ("defaults", "full"):
            print(f"  {name}: {acc[name]['accuracy']}% {acc[name]['ci95']}")
        dif = acc["difference"]
        print(f"  paired difference {dif['runs']}: {dif['points']} points, 95% CI {dif['ci95']}")
    print()


if __name__ == "__main__":
    main()
