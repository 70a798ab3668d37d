"""Training throughput: flexpaft's training step against the plain transformers + PEFT loop.

flexpaft step (what ``flexpaft train`` runs per micro-batch): RenderedDataset renders and tokenizes
on the fly, PromptBatchSampler groups examples by length, PadCollator left-pads with position_ids,
``answer_loss`` applies the LM head only at answer positions; then backward, grad clipping 1.0 and
AdamW, as in the trainer.

plain loop (what a user writes): the same examples tokenized up front (the same tokens), a
shuffled DataLoader, right padding to the longest in the batch, labels -100 on prompt and pad,
``model(**batch, labels=labels).loss``, backward, AdamW (the GPU.md reference loop).

Cases
  a  fixed-length random tokens, loss on every position: parity at identical settings
  b  real variable-length BoolQ: plain (shuffled), plain on flexpaft's batches (isolates the
     length grouping from the LM-head saving), flexpaft single prompt
  c  PAFT (a template drawn per example from an offline prompt set) vs single prompt, same data

CPU:  python benchmarks/train_throughput.py
GPU:  python benchmarks/train_throughput.py --device cuda --model llama-3.2-1b --batch 8 \
          --max-length 512 --seq-len 512 --repeats 12 --warmup 4
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import early_threads  # noqa: E402

THREADS = early_threads()

import contextlib  # noqa: E402
import random  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from common import (  # noqa: E402
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
    n_params,
    peak_mib,
    resolve_device,
    stage,
    write_json,
)
from torch.utils.data import DataLoader  # noqa: E402

from flexpaft.prompts.generate.offline import generate_offline  # noqa: E402
from flexpaft.prompts.task_templates import default_template  # noqa: E402
from flexpaft.render import encode_for_training, render  # noqa: E402
from flexpaft.settings.train import LoraSettings  # noqa: E402
from flexpaft.tasks import get_task, load_examples  # noqa: E402
from flexpaft.training.compute import attention_without_cudnn  # noqa: E402
from flexpaft.training.data import PadCollator, RenderedDataset, answer_loss  # noqa: E402
from flexpaft.training.lora import add_lora  # noqa: E402
from flexpaft.training.sampling import PromptBatchSampler  # noqa: E402

Batch = dict[str, torch.Tensor]


def right_pad(items: list[dict[str, list[int]]], pad_id: int) -> Batch:
    """What DataCollatorForSeq2Seq does: pad on the right to the longest, labels -100 there."""
    longest = max(len(it["input_ids"]) for it in items)
    n = len(items)
    ids = torch.full((n, longest), pad_id, dtype=torch.long)
    labels = torch.full((n, longest), -100, dtype=torch.long)
    mask = torch.zeros((n, longest), dtype=torch.long)
    for i, it in enumerate(items):
        k = len(it["input_ids"])
        ids[i, :k] = torch.tensor(it["input_ids"])
        labels[i, :k] = torch.tensor(it["labels"])
        mask[i, :k] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class Stepper:
    """One optimizer step per call, pulling the next batch from ``batches`` inside the timing
    (flexpaft renders and tokenizes in the loop, so that cost belongs to its step)."""

    def __init__(
        self,
        model: Any,
        params: list[torch.nn.Parameter],
        batches: Iterator[Batch],
        device: torch.device,
        flexpaft: bool,
    ) -> None:
        self.model, self.params, self.batches = model, params, batches
        self.device, self.flexpaft = device, flexpaft
        # One optimizer per variant: AdamW state would otherwise mix between variants (harmless
        # for speed, but each variant should be exactly the loop it stands for).
        self.opt = torch.optim.AdamW(params, lr=1e-4)

    def __call__(self, batch: Batch | None = None) -> dict[str, Any]:
        batch = next(self.batches) if batch is None else batch
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        # flexpaft's trainer keeps cuDNN attention out of training (compute.py); the plain loop
        # runs what SDPA picks.
        with attention_without_cudnn() if self.flexpaft else contextlib.nullcontext():
            if self.flexpaft:
                loss = answer_loss(self.model, batch)
            else:
                loss = self.model(**batch).loss
            loss.backward()
        if self.flexpaft:
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)  # the trainer's default max_grad_norm
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        mask = batch["attention_mask"]
        return {
            "real": int(mask.sum()),
            "padded": int(mask.numel()),
            "shape": list(mask.shape),
            "loss": float(loss.detach()),
        }


def summarize(name: str, samples: list[Sample], ref: float | None) -> dict[str, Any]:
    real = sum(s.info["real"] for s in samples)
    padded = sum(s.info["padded"] for s in samples)
    # Medians of per-step rates: one step slowed by the machine's other job would drag a
    # sum-based rate; batches differ in size, so the rate (not the step time) is what compares.
    rate = median([s.info["real"] / s.seconds for s in samples])
    padded_rate = median([s.info["padded"] / s.seconds for s in samples])
    return {
        "variant": name,
        "steps": len(samples),
        "real_tokens_per_step": round(real / len(samples), 1),
        "padding_pct": round(100 * (1 - real / padded), 1),
        "step_s_median": round(median([s.seconds for s in samples]), 3),
        "real_tokens_per_s": round(rate, 1),
        "padded_tokens_per_s": round(padded_rate, 1),
        "peak_mib": peak_mib(samples),
        "vs_ref": round(rate / ref, 3) if ref else 1.0,
    }


HEADERS = [
    "variant",
    "steps",
    "real tok/step",
    "padding %",
    "step s (median)",
    "real tok/s",
    "padded tok/s",
    "peak MiB",
    "real tok/s vs ref",
]


def table(rows: list[dict[str, Any]]) -> str:
    keys = [
        "variant",
        "steps",
        "real_tokens_per_step",
        "padding_pct",
        "step_s_median",
        "real_tokens_per_s",
        "padded_tokens_per_s",
        "peak_mib",
        "vs_ref",
    ]
    return markdown_table(HEADERS, [[r[k] for k in keys] for r in rows])


def loader_iter(make: Callable[[], DataLoader]) -> Iterator[Batch]:
    """Endless batches: a new epoch when one runs out (small pools on long runs)."""
    while True:
        yield from make()


def main() -> None:
    p = base_parser(__doc__.splitlines()[0], repeats=5)
    p.add_argument("--batch", type=int, default=4, help="sequences per step")
    p.add_argument("--seq-len", type=int, default=128, help="case a: tokens per random sequence")
    p.add_argument("--max-length", type=int, default=256, help="cases b/c: max tokens per example")
    p.add_argument("--task", default="boolq")
    p.add_argument("--examples", type=int, default=512, help="cases b/c: example pool")
    p.add_argument("--templates", type=int, default=20, help="case c: PAFT templates")
    p.add_argument("--cases", default="abc", help="which cases to run (a, b, c)")
    args = p.parse_args()
    device = resolve_device(args.device)

    with stage(f"loading {args.model}"):
        model, tok = load_bench_model(args.model, device, args.dtype, args.tokenizer)
    base_n = n_params(model)
    model = add_lora(model, LoraSettings())  # r=8 on q_proj/v_proj, as in GPU.md
    model.train()
    params = [q for q in model.parameters() if q.requires_grad]
    pad = tok.pad_token_id
    B = args.batch
    results: dict[str, Any] = {
        "command": command_line(),
        "machine": machine(device, THREADS),
        "model": args.model,
        "parameters": base_n,
        "args": vars(args),
        "cases": {},
    }
    out_md = [f"Machine: {machine_line(results['machine'])}; model {args.model}", ""]

    if "a" in args.cases:
        # Random tokens, loss on every position after the first (the first token has no
        # predecessor; flexpaft's answer_loss wants at least one prompt token).
        L, vocab = args.seq_len, model.config.vocab_size
        gen = torch.Generator().manual_seed(0)
        n_batches = args.warmup + args.repeats + 1  # + the memory pass
        raw = [torch.randint(0, vocab, (B, L), generator=gen) for _ in range(n_batches)]
        collate = PadCollator(pad)

        def flex_batches() -> Iterator[Batch]:
            for x in raw:
                items = [{"input_ids": r.tolist(), "labels": [-100] + r[1:].tolist()} for r in x]
                yield collate(items)

        def plain_batches() -> Iterator[Batch]:
            for x in raw:
                yield {"input_ids": x, "attention_mask": torch.ones_like(x), "labels": x.clone()}

        variants = {
            "plain loop": Stepper(model, params, plain_batches(), device, flexpaft=False),
            "flexpaft step": Stepper(model, params, flex_batches(), device, flexpaft=True),
        }
        with stage(f"case a: random tokens {B} x {L}"):
            s = interleave(variants, device, args.repeats, args.warmup)
        ref = median([x.info["real"] / x.seconds for x in s["plain loop"]])
        rows = [summarize(n, v, ref) for n, v in s.items()]
        results["cases"]["a_random_tokens"] = rows
        out_md += [f"### (a) fixed-length random tokens, {B} x {L}", "", table(rows), ""]

    if "b" in args.cases or "c" in args.cases:
        task = get_task(args.task)
        fmt = task.default_format
        examples = load_examples(task, str(data_file(f"{args.task}.jsonl")), shuffle=True, seed=0)
        pool = examples[: args.examples]
        single = [default_template(task, fmt)]
        paft = list(generate_offline(task, fmt, args.templates, seed=0))
        workers = 2 if device.type == "cuda" else 0  # the trainer's default

        def flex_loader(templates: list) -> Iterator[Batch]:
            ds = RenderedDataset(task, pool, templates, fmt, tok, args.max_length)
            sampler = PromptBatchSampler(
                len(pool), len(templates), B, seed=0, lengths=ds.length_estimates()
            )
            return loader_iter(
                lambda: DataLoader(
                    ds,
                    batch_sampler=sampler,
                    collate_fn=PadCollator(pad),
                    num_workers=workers,
                    pin_memory=device.type == "cuda",
                )
            )

        # The plain loop's data: the very tokens flexpaft trains on, tokenized before the loop.
        feats = []
        for e in pool:
            enc = encode_for_training(tok, render(task, single[0], e, fmt), args.max_length)
            feats.append({"input_ids": enc.input_ids, "labels": enc.labels})
        shuffled = list(range(len(pool)))
        random.Random(0).shuffle(shuffled)
        grouped = PromptBatchSampler(
            len(pool),
            1,
            B,
            seed=0,
            lengths=RenderedDataset(task, pool, single, fmt, tok, 0).length_estimates(),
        )
        grouped_idx = [[e for e, _ in b] for b in grouped.batches(0)]

        def plain_loader(batch_idx: list[list[int]]) -> Iterator[Batch]:
            return loader_iter(
                lambda: DataLoader(
                    feats, batch_sampler=batch_idx, collate_fn=lambda it: right_pad(it, pad)
                )
            )

        shuffled_idx = [shuffled[i : i + B] for i in range(0, len(shuffled), B)]
        variants = {}
        if "b" in args.cases:
            variants["plain loop (shuffled)"] = Stepper(
                model, params, plain_loader(shuffled_idx), device, flexpaft=False
            )
            variants["plain loop, flexpaft's batches"] = Stepper(
                model, params, plain_loader(grouped_idx), device, flexpaft=False
            )
        variants["flexpaft single prompt"] = Stepper(
            model, params, flex_loader(single), device, flexpaft=True
        )
        if "c" in args.cases:
            variants[f"flexpaft PAFT ({len(paft)} templates)"] = Stepper(
                model, params, flex_loader(paft), device, flexpaft=True
            )
        # Peak memory follows the batch's length, and each variant's next batch differs: measure
        # every variant on the same worst case instead, the B longest examples of the pool (what
        # each loop meets once per epoch), under the task's template.
        longest = sorted(range(len(pool)), key=lambda i: -len(feats[i]["input_ids"]))[:B]
        worst_flex = PadCollator(pad)([feats[i] for i in longest])
        worst_plain = right_pad([feats[i] for i in longest], pad)
        mem_variants = {
            n: (lambda st=st: st(worst_flex if st.flexpaft else worst_plain))
            for n, st in variants.items()
        }
        with stage(f"cases b/c: {args.task}, batch {B}, max length {args.max_length}"):
            s = interleave(
                variants, device, args.repeats, args.warmup, memory_variants=mem_variants
            )
        first = next(iter(s))
        ref = median([x.info["real"] / x.seconds for x in s[first]])
        rows = [summarize(n, v, ref) for n, v in s.items()]
        results["cases"]["bc_task_data"] = rows
        out_md += [
            f"### (b/c) {args.task}, batch {B}, max length {args.max_length} (ref: {first})",
            "",
            table(rows),
            "",
            f"peak MiB: one extra step of each variant on the same worst case, the {B} longest "
            "examples of the pool (CUDA: max allocated; CPU: rise of peak RSS over the loaded "
            "model).",
            "",
        ]
        names = list(s)
        if "c" in args.cases and "flexpaft single prompt" in s:
            single_rate = next(r for r in rows if r["variant"] == "flexpaft single prompt")
            paft_rate = next(r for r in rows if r["variant"] == names[-1])
            ratio = paft_rate["real_tokens_per_s"] / single_rate["real_tokens_per_s"]
            results["paft_vs_single"] = round(ratio, 3)
            out_md.append(f"PAFT / single prompt, real tokens/s: {ratio:.3f} (target: within 5%)\n")

    print("\n".join(out_md))
    write_json(args.out, results)


if __name__ == "__main__":
    main()
