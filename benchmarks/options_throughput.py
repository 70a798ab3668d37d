"""Options-loss throughput: what training on the answer options costs against the answer loss.

Part ``steps``: one training step (forward + backward + clip 1.0 + AdamW, as the trainer runs it)
per variant, every variant on the same (example, template) batches, PAFT templates drawn per
example from an offline prompt set; rendering, tokenizing and collating are inside the timing, as
they are inside the trainer's loop:
  answer         RenderedDataset + PadCollator + answer_loss (the gold answer's tokens)
  options packed OptionsDataset + OptionsCollator(packed=True) + options_loss: every option's
                 answer after ONE shared prompt (flexpaft/packing.py), one row per example
  options rows   the same loss, one (prompt + option) row per option (the layout before
                 packing, and the fallback for attention kernels that take no 4D mask)
  consistency    optim.consistency: two templates per example, both views packed
Cases: snips7 (7 multi-token intent names, configs/tasks/snips_intent_names.yaml), piqa2 (PIQA
solutions as cloze, 2 options), arc4 (ARC-Easy option texts as cloze, mostly 4 options).

Part ``train``: ``flexpaft.train`` end to end on the snips7 task, read from each
run's manifest: one-prompt LoRA vs PAFT at its defaults (train_seconds), plain Flexora's search
at search_budget=1 vs its stage 2 (flexora.search_seconds vs train_seconds); with ``--rows`` also
PAFT and Flexora with the options forced into per-option rows (the cost before packing).

CPU:  python benchmarks/options_throughput.py --threads 2
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import early_threads  # noqa: E402

THREADS = early_threads()

import contextlib  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from common import (  # noqa: E402
    REPO,
    Sample,
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

from flexpaft.packing import attention_implementation  # noqa: E402
from flexpaft.prompts.generate.offline import generate_offline  # noqa: E402
from flexpaft.settings.train import LoraSettings  # noqa: E402
from flexpaft.tasks import AnswerFormat, get_task, load_examples, load_task  # noqa: E402
from flexpaft.training.compute import attention_without_cudnn  # noqa: E402
from flexpaft.training.consistency import (  # noqa: E402
    PairedCollator,
    PairedOptionsDataset,
    batch_tokens,
    consistency_loss,
)
from flexpaft.training.data import PadCollator, RenderedDataset, answer_loss  # noqa: E402
from flexpaft.training.lora import add_lora  # noqa: E402
from flexpaft.training.options import OptionsCollator, OptionsDataset, options_loss  # noqa: E402
from flexpaft.training.sampling import PromptBatchSampler  # noqa: E402

Batch = dict[str, torch.Tensor]
SNIPS_NAMES = REPO / "configs" / "tasks" / "snips_intent_names.yaml"
# case -> (task, format, data file)
CASES: dict[str, tuple[str, str, str]] = {
    "snips7": (str(SNIPS_NAMES), "label_words", "snips.jsonl"),
    "piqa2": ("piqa", "option_text", "piqa.jsonl"),
    "arc4": ("arc_easy", "option_text", "arc_easy.jsonl"),
}
VARIANTS = ("answer", "options packed", "options rows", "consistency")
CONSISTENCY = 1.0  # its weight changes no cost


def _task(name: str) -> Any:
    return load_task(name) if name.endswith(".yaml") else get_task(name)


class Variant:
    """One loss and data layout: each call renders, collates and trains on the next key batch."""

    def __init__(
        self,
        name: str,
        model: Any,
        params: list[torch.nn.Parameter],
        dataset: Any,
        collate: Callable[[list[Any]], Batch],
        loss_fn: Callable[[Any, Batch], torch.Tensor],
        keys: list[list[tuple[int, ...]]],
        paired: bool,
    ) -> None:
        self.name, self.model, self.params = name, model, params
        self.dataset, self.collate, self.loss_fn = dataset, collate, loss_fn
        self.keys, self.paired = keys, paired
        self.opt = torch.optim.AdamW(params, lr=1e-4)  # one per variant, as each loop has its own
        self.next = 0

    def batch(self, keys: list[tuple[int, ...]]) -> Batch:
        keys = keys if self.paired else [k[:2] for k in keys]
        return self.collate([self.dataset[k] for k in keys])

    def __call__(self, keys: list[tuple[int, ...]] | None = None) -> dict[str, Any]:
        if keys is None:
            keys = self.keys[self.next % len(self.keys)]
            self.next += 1
        cpu0 = time.process_time()
        batch = self.batch(keys)
        with attention_without_cudnn():  # as the trainer runs
            loss = self.loss_fn(self.model, batch)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        cpu = time.process_time() - cpu0
        real, padded = batch_tokens(batch)
        return {
            "cpu_s": cpu,
            "examples": len(keys),
            "real": real,
            "padded": padded,
            "rows": sum(int(v.shape[0]) for k, v in batch.items() if k.endswith("input_ids")),
            "loss": float(loss.detach()),
        }


def summarize(name: str, samples: list[Sample], ref: list[Sample] | None) -> dict[str, Any]:
    real = sum(s.info["real"] for s in samples)
    padded = sum(s.info["padded"] for s in samples)
    step = median([s.seconds for s in samples])
    row = {
        "variant": name,
        "steps": len(samples),
        "rows_per_step": round(sum(s.info["rows"] for s in samples) / len(samples), 1),
        "real_tokens_per_step": round(real / len(samples), 1),
        "padding_pct": round(100 * (1 - real / padded), 1),
        "step_s_median": round(step, 3),
        "step_cpu_s_median": round(median([s.info["cpu_s"] for s in samples]), 3),
        "examples_per_s": round(median([s.info["examples"] / s.seconds for s in samples]), 2),
        "real_tokens_per_s": round(median([s.info["real"] / s.seconds for s in samples]), 1),
        "peak_mib": peak_mib(samples),
    }
    if ref is not None:
        # Same batches at the same repetition: the per-step ratio, then its median.
        row["step_vs_answer"] = round(
            median([s.seconds / r.seconds for s, r in zip(samples, ref)]), 3
        )
        row["cpu_vs_answer"] = round(
            median([s.info["cpu_s"] / r.info["cpu_s"] for s, r in zip(samples, ref)]), 3
        )
        row["tokens_vs_answer"] = round(real / sum(r.info["real"] for r in ref), 3)
        ref_peak = peak_mib(ref)
        if row["peak_mib"] is not None and ref_peak:
            row["memory_vs_answer"] = round(row["peak_mib"] / ref_peak, 3)
    return row


STEP_KEYS = [
    "variant",
    "rows_per_step",
    "real_tokens_per_step",
    "padding_pct",
    "step_s_median",
    "step_cpu_s_median",
    "examples_per_s",
    "real_tokens_per_s",
    "peak_mib",
    "step_vs_answer",
    "cpu_vs_answer",
    "tokens_vs_answer",
    "memory_vs_answer",
]
STEP_HEADERS = [
    "variant",
    "rows/step",
    "real tok/step",
    "padding %",
    "step s (median)",
    "CPU s/step (median)",
    "examples/s",
    "real tok/s",
    "peak MiB",
    "step / answer's",
    "CPU s / answer's",
    "tokens / answer's",
    "peak / answer's",
]


def worst_keys(dataset: RenderedDataset, n_templates: int, batch: int) -> list[tuple[int, ...]]:
    """The ``batch`` longest examples under the two templates with the longest prompts: the
    same worst case for every variant's memory pass (peaks follow the batch's length)."""
    from flexpaft.render import encode_prompt, render

    ex0 = dataset.examples[0]
    plen = [
        len(encode_prompt(dataset.tokenizer, render(dataset.task, t, ex0, dataset.fmt).prompt))
        for t in dataset.templates
    ]
    tpl = sorted(range(n_templates), key=lambda t: -plen[t])
    longest = sorted(range(len(dataset)), key=lambda i: -dataset.length_estimates()[i])[:batch]
    return [(e, tpl[0], tpl[1]) for e in longest]


def steps_case(
    args: Any, case: str, model: Any, tok: Any, params: list, device: Any
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    task_name, fmt_name, data = CASES[case]
    task, fmt = _task(task_name), AnswerFormat.parse(fmt_name)
    examples = load_examples(task, str(data_file(data)), shuffle=True, seed=0)[: args.examples]
    templates = list(generate_offline(task, fmt, args.templates, seed=0))
    B = args.batch
    common = (task, examples, templates, fmt, tok, args.max_length)
    answer_ds = RenderedDataset(*common)
    options_ds = OptionsDataset(*common)
    paired_ds = PairedOptionsDataset(*common)
    sampler = PromptBatchSampler(
        len(examples),
        len(templates),
        B,
        seed=0,
        lengths=answer_ds.length_estimates(),
        second=True,
    )
    keys = sampler.batches(0)
    pad = tok.pad_token_id
    makers = {
        "answer": (answer_ds, PadCollator(pad, 1), answer_loss, False),
        "options packed": (options_ds, OptionsCollator(pad, 1, packed=True), options_loss, False),
        "options rows": (options_ds, OptionsCollator(pad, 1, packed=False), options_loss, False),
        "consistency": (
            paired_ds,
            PairedCollator(pad, 1, packed=True),
            lambda m, b: consistency_loss(m, b, CONSISTENCY)[0],
            True,
        ),
    }
    chosen = [v for v in VARIANTS if v in args.variants.split(",")]
    variants = {
        name: Variant(name, model, params, *makers[name][:3], keys, makers[name][3])
        for name in chosen
    }
    worst = worst_keys(answer_ds, len(templates), B)
    mem = {name: (lambda v=v: v(worst)) for name, v in variants.items()}
    with stage(f"{case}: {task.name} ({fmt.value}), batch {B}, {len(templates)} templates"):
        s = interleave(variants, device, args.repeats, args.warmup, memory_variants=mem)
    ref = s.get("answer")
    rows = [summarize(n, v, ref if n != "answer" else None) for n, v in s.items()]
    probe = options_ds[(0, 0)]
    info = {
        "task": task.name,
        "format": fmt.value,
        "options": len(probe["answers"]),
        "option_tokens": [len(a) for a in probe["answers"]],
        "examples": len(examples),
        "templates": len(templates),
    }
    return rows, info


def train_runs(args: Any, device: Any) -> list[dict[str, Any]]:
    """Whole ``train`` runs on the snips7 task, each timed by its own manifest."""
    from flexpaft.recipe import train
    from flexpaft.settings import DataSettings, ModelSettings
    from flexpaft.settings.train import FlexoraSettings, OptimSettings, PromptSettings, TrainConfig
    from flexpaft.training import loader as loader_mod

    task = load_task(str(SNIPS_NAMES))
    fmt = task.default_format
    tmp = Path(tempfile.mkdtemp(prefix="options_throughput_"))
    prompt_set = generate_offline(task, fmt, args.templates, seed=0).save(tmp / "prompts.jsonl")

    def config(name: str, method: str, **flexora: Any) -> TrainConfig:
        return TrainConfig(
            method=method,
            output_dir=str(tmp / name),
            seed=0,
            checkpoint_every=0,
            resume=False,
            log_every=0,
            model=ModelSettings(name=args.model, dtype=args.dtype),
            data=DataSettings(
                task=str(SNIPS_NAMES),
                source=str(data_file("snips.jsonl")),
                limit=args.train_limit,
                max_length=args.max_length,
            ),
            prompts=PromptSettings(prompt_set=str(prompt_set) if "paft" in method else ""),
            lora=LoraSettings(),
            optim=OptimSettings(batch_size=args.batch, epochs=args.train_epochs),
            flexora=FlexoraSettings(val_examples=args.val_examples, **flexora),
        )

    runs = [("lora", "lora", False), ("paft", "paft", False), ("flexora", "flexora", False)]
    if args.rows:
        runs += [("paft rows", "paft", True), ("flexora rows", "flexora", True)]
    out = []
    for name, method, rows in runs:
        # rows: the options forced into per-option rows, as before packing (and under flash).
        patch = (
            contextlib.nullcontext()
            if not rows
            else _patched(loader_mod, "packs_options", lambda attn: False)
        )
        phases: dict[str, float] = {}
        with stage(f"train: {name}"), patch, _timed_phases(device, phases):
            m = train(config(name.replace(" ", "_"), method), progress=False).manifest
        row = {
            "run": name,
            "method": method,
            "loss": m.get("loss"),
            "steps": m["steps"],
            "train_s": round(m["train_seconds"], 1),
            # train_lora's CPU seconds, all threads (stage 2 for Flexora): less moved than wall
            # time by other jobs on shared cores.
            "train_cpu_s": round(phases["stage2_cpu_s"], 1),
            "train_peak_mib": _mib(phases.get("stage2_bytes")),
            "tokens": m["tokens"],
        }
        fx = m.get("flexora") or {}
        if "search_seconds" in fx:
            row.update(
                search_s=round(fx["search_seconds"], 1),
                search_steps=f"{fx['steps']} of {fx['budget_steps']}",
                search_over_stage2=round(fx["search_seconds"] / m["train_seconds"], 3),
                search_cpu_s=round(phases["search_cpu_s"], 1),
                search_over_stage2_cpu=round(phases["search_cpu_s"] / phases["stage2_cpu_s"], 3),
                search_peak_mib=_mib(phases.get("search_bytes")),
                layers=fx["layers"],
            )
        out.append(row)
        print(f"  {row}", file=sys.stderr, flush=True)
    lora = next(r for r in out if r["run"] == "lora")
    for r in out:
        r["train_vs_lora"] = round(r["train_s"] / lora["train_s"], 3)
        r["cpu_vs_lora"] = round(r["train_cpu_s"] / lora["train_cpu_s"], 3)
    return out


def _mib(n: int | None) -> float | None:
    return round(n / 2**20, 1) if n is not None else None


@contextlib.contextmanager
def _timed_phases(device: Any, phases: dict[str, Any]) -> Iterator[None]:
    """CPU seconds and peak memory of ``train``'s two phases, the search and ``train_lora``
    (benchmarks/flexora_costs.py's way: ``train`` reaches both through module attributes)."""
    from common import PeakMemory

    from flexpaft.methods.flexora import search as search_mod
    from flexpaft.training import loop as trainer_mod

    def timed(fn: Callable[..., Any], key: str) -> Callable[..., Any]:
        def wrapper(*a: Any, **k: Any) -> Any:
            t = time.process_time()
            with PeakMemory(device) as mem:
                out = fn(*a, **k)
            phases[f"{key}_cpu_s"], phases[f"{key}_bytes"] = time.process_time() - t, mem.bytes
            return out

        return wrapper

    with (
        _patched(search_mod, "search_layers", timed(search_mod.search_layers, "search")),
        _patched(trainer_mod, "train_lora", timed(trainer_mod.train_lora, "stage2")),
    ):
        yield


@contextlib.contextmanager
def _patched(module: Any, name: str, value: Any) -> Iterator[None]:
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


TRAIN_KEYS = [
    "run",
    "loss",
    "steps",
    "train_s",
    "train_vs_lora",
    "train_cpu_s",
    "cpu_vs_lora",
    "train_peak_mib",
    "search_steps",
    "search_s",
    "search_over_stage2",
    "search_cpu_s",
    "search_over_stage2_cpu",
    "search_peak_mib",
]
TRAIN_HEADERS = [
    "run",
    "loss",
    "steps",
    "train s",
    "train / lora's",
    "train CPU s",
    "CPU / lora's",
    "train peak MiB",
    "search steps",
    "search s",
    "search / stage 2",
    "search CPU s",
    "CPU search / stage 2",
    "search peak MiB",
]


def main() -> None:
    p = base_parser(__doc__.splitlines()[0], repeats=6)
    p.add_argument("--batch", type=int, default=8, help="examples per step")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--examples", type=int, default=256, help="steps: example pool per case")
    p.add_argument("--templates", type=int, default=20, help="PAFT templates (offline)")
    p.add_argument("--cases", default="snips7,piqa2,arc4", help=", ".join(CASES))
    p.add_argument("--variants", default=",".join(VARIANTS), help=", ".join(VARIANTS))
    p.add_argument("--parts", default="steps,train", help="steps, train")
    p.add_argument("--train-limit", type=int, default=160, help="train: examples of snips7")
    p.add_argument("--train-epochs", type=float, default=1.0)
    p.add_argument("--val-examples", type=int, default=32, help="train: Flexora's validation")
    p.add_argument("--rows", action="store_true", help="train: also PAFT/Flexora on rows")
    args = p.parse_args()
    device = resolve_device(args.device)
    parts = args.parts.split(",")
    results: dict[str, Any] = {
        "command": command_line(),
        "machine": machine(device, THREADS),
        "model": args.model,
        "args": vars(args),
        "cases": {},
    }
    out_md = [f"Machine: {machine_line(results['machine'])}; model {args.model}", ""]

    if "steps" in parts:
        with stage(f"loading {args.model}"):
            model, tok = load_bench_model(args.model, device, args.dtype, args.tokenizer)
        results["attention"] = attention_implementation(model)
        model = add_lora(model, LoraSettings())  # the trainer's default LoRA
        model.train()
        params = [q for q in model.parameters() if q.requires_grad]
        for case in args.cases.split(","):
            rows, info = steps_case(args, case, model, tok, params, device)
            results["cases"][case] = {"info": info, "rows": rows}
            out_md += [
                f"### {case}: {info['task']} ({info['format']}), {info['options']} options "
                f"(answer tokens of the first example: {info['option_tokens']}), batch "
                f"{args.batch}, {info['templates']} PAFT templates, attention "
                f"{results['attention']}",
                "",
                markdown_table(STEP_HEADERS, [[r.get(k) for k in STEP_KEYS] for r in rows]),
                "",
            ]
            # Each case's table as soon as it is measured: a long run shows its progress.
            print("\n".join(out_md[-4:]), file=sys.stderr, flush=True)
            write_json(args.out, results)
        out_md.append(
            "step / answer's (CPU s / answer's): median over repetitions of the step's wall (CPU) "
            "time over the answer loss's step on the same batch; CPU s counts every thread of the "
            "process, so it is less moved by other jobs on a shared machine; peak MiB: one extra step of each variant on the same worst "
            "case (the longest examples under the two longest templates), rise of peak RSS "
            "over the loaded model on CPU.\n"
        )
        del model

    if "train" in parts:
        rows = train_runs(args, device)
        results["train"] = rows
        out_md += [
            f"### train: snips7, {args.train_limit} examples, {args.train_epochs:g} epoch(s), "
            f"batch {args.batch} (Flexora: {args.val_examples} held out for its validation)",
            "",
            markdown_table(TRAIN_HEADERS, [[r.get(k) for k in TRAIN_KEYS] for r in rows]),
            "",
        ]

    print("\n".join(out_md))
    write_json(args.out, results)


if __name__ == "__main__":
    main()
