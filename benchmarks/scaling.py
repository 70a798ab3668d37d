"""Scaling: how training and evaluation time grow with templates, examples, length and model size.

Training: flexpaft's step (PadCollator + answer_loss + clip + AdamW, LoRA r=8 on q/v) on random
tokens, over sequence lengths and two model sizes; fitted as step = fixed + per-token cost, and
the achieved FLOP rate at 4N FLOPs per token (forward 2N + backward to the activations 2N: LoRA
needs no weight gradients of the base, as in GPU.md's MFU column).

Evaluation: evaluate_templates (first-token scoring of BoolQ label words) over the number of
templates and the number of examples; fitted as seconds = fixed + per-(template x example) cost.

Finally a torch.profiler profile of the largest training case: top ops by self CPU time.

CPU:  python benchmarks/scaling.py
GPU:  python benchmarks/scaling.py --device cuda --model llama-3.2-1b --small-model embedded \
          --seq-lens 256,512,1024 --batch 8 --templates 1,4,16 --examples 32,64,128
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import early_threads  # noqa: E402

THREADS = early_threads()

from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from common import (  # noqa: E402
    base_parser,
    command_line,
    data_file,
    fit_line,
    interleave,
    load_bench_model,
    machine,
    machine_line,
    markdown_table,
    median,
    n_params,
    resolve_device,
    stage,
    sync,
    write_json,
)

from flexpaft.evaluation.evaluator import evaluate_templates  # noqa: E402
from flexpaft.prompts.generate.offline import generate_offline  # noqa: E402
from flexpaft.prompts.task_templates import default_template  # noqa: E402
from flexpaft.settings.train import LoraSettings  # noqa: E402
from flexpaft.tasks import get_task, load_examples  # noqa: E402
from flexpaft.training.compute import attention_without_cudnn  # noqa: E402
from flexpaft.training.data import PadCollator, answer_loss  # noqa: E402
from flexpaft.training.lora import add_lora  # noqa: E402


def ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def train_step(model: Any, B: int, L: int, device: torch.device) -> Callable[[], dict[str, Any]]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    gen = torch.Generator().manual_seed(L)
    x = torch.randint(0, model.config.vocab_size, (B, L), generator=gen)
    items = [{"input_ids": r.tolist(), "labels": [-100] + r[1:].tolist()} for r in x]
    batch = {k: v.to(device) for k, v in PadCollator(0)(items).items()}

    @attention_without_cudnn()  # as the trainer runs (compute.py)
    def run() -> dict[str, Any]:
        loss = answer_loss(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return {}

    return run


def main() -> None:
    p = base_parser(__doc__.splitlines()[0], repeats=3)
    p.add_argument("--small-model", default="llama-tiny", help="second model size")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq-lens", default="64,128,256")
    p.add_argument("--templates", default="1,2,4", help="evaluation: template counts")
    p.add_argument("--examples", default="4,8,16", help="evaluation: example counts")
    p.add_argument("--eval-max-prompt", type=int, default=256, help="evaluation: prompt tokens")
    p.add_argument("--no-profile", dest="profile", action="store_false")
    args = p.parse_args()
    device = resolve_device(args.device)
    results: dict[str, Any] = {
        "command": command_line(),
        "machine": machine(device, THREADS),
        "args": vars(args),
    }
    md = [f"Machine: {machine_line(results['machine'])}", ""]

    with stage("loading models"):
        big, tok = load_bench_model(args.model, device, args.dtype, args.tokenizer)
        small, _ = load_bench_model(args.small_model, device, args.dtype, args.tokenizer)
    sizes = {args.model: n_params(big), args.small_model: n_params(small)}
    big_l = add_lora(big, LoraSettings())
    small_l = add_lora(small, LoraSettings())
    big_l.train()
    small_l.train()

    # --- training: sequence length x model size -------------------------------------------
    B, lens = args.batch, ints(args.seq_lens)
    variants = {}
    for L in lens:
        variants[f"{args.model} L={L}"] = train_step(big_l, B, L, device)
        variants[f"{args.small_model} L={L}"] = train_step(small_l, B, L, device)
    with stage("training steps"):
        s = interleave(variants, device, args.repeats, args.warmup, memory_pass=False)
    train_rows, fits = [], []
    for name, n in sizes.items():
        xs, ys = [], []
        for L in lens:
            sec = median([x.seconds for x in s[f"{name} L={L}"]])
            tokens = B * L
            xs.append(tokens)
            ys.append(sec)
            train_rows.append(
                [
                    name,
                    f"{n / 1e6:.0f}M",
                    f"{B} x {L}",
                    sec,
                    tokens / sec,
                    4 * n * tokens / sec / 1e9,
                ]
            )
        a, b = fit_line(xs, ys)
        fits.append([name, f"{n / 1e6:.0f}M", a, 1000 * b, 4 * n / b / 1e9 if b > 0 else None])
    results["train"] = {"rows": train_rows, "fits": fits}
    md += [
        "### Training step vs sequence length and model size",
        "",
        markdown_table(
            ["model", "params", "batch x len", "step s", "tokens/s", "GFLOP/s (4N/token)"],
            train_rows,
        ),
        "",
        markdown_table(
            ["model", "params", "fixed s/step", "s per 1k tokens", "marginal GFLOP/s"], fits
        ),
        "",
    ]

    # --- evaluation: templates x examples ---------------------------------------------------
    big_l.eval()
    task = get_task("boolq")
    fmt = task.default_format
    examples = load_examples(task, str(data_file("boolq.jsonl")), shuffle=True, seed=2)
    # Passages up to --eval-max-prompt tokens only: BoolQ runs to 1,300 tokens, and one long
    # passage in a small sample would swamp the per-pair cost this section fits.
    from flexpaft.render import encode_prompt, render

    tpl0 = default_template(task, fmt)
    examples = [
        e
        for e in examples[:400]
        if len(encode_prompt(tok, render(task, tpl0, e, fmt).prompt)) <= args.eval_max_prompt
    ]
    n_t, n_e = ints(args.templates), ints(args.examples)
    templates = [default_template(task, fmt)]
    templates += list(generate_offline(task, fmt, max(n_t) - 1, seed=0)) if max(n_t) > 1 else []
    mid_e = n_e[len(n_e) // 2]

    def ev(t: int, e: int) -> Callable[[], dict[str, Any]]:
        def run() -> dict[str, Any]:
            evaluate_templates(big_l, tok, task, fmt, templates[:t], examples[:e], progress=False)
            return {}

        return run

    # Vary one axis at a time around (1 template, middle example count); evaluation of every
    # template sees the same examples, so the template axis also shows any per-template cost.
    ev_vars = {f"templates={t} examples={mid_e}": ev(t, mid_e) for t in n_t}
    ev_vars.update({f"templates=1 examples={e}": ev(1, e) for e in n_e if e != mid_e})
    evaluate_templates(big_l, tok, task, fmt, templates[:1], examples[:2], progress=False)
    with stage("evaluation"):
        s = interleave(ev_vars, device, args.repeats, args.warmup, memory_pass=False)
    ev_rows = []
    for name, smp in s.items():
        t = int(name.split()[0].split("=")[1])
        e = int(name.split()[1].split("=")[1])
        sec = median([x.seconds for x in smp])
        ev_rows.append([t, e, t * e, sec, t * e / sec])
    ev_rows.sort(key=lambda r: (r[0], r[1]))
    ev_fits = []
    for axis, pick in (("templates", 0), ("examples", 1)):
        pts = [r for r in ev_rows if (r[1] == mid_e if pick == 0 else r[0] == 1)]
        a, b = fit_line([r[2] for r in pts], [r[3] for r in pts])
        ev_fits.append([axis, a, b, 1 / b if b > 0 else None])
    results["eval"] = {"rows": ev_rows, "fits": ev_fits}
    md += [
        f"### Evaluation ({args.model}, BoolQ label words, first-token scoring, prompts of at "
        f"most {args.eval_max_prompt} tokens)",
        "",
        markdown_table(["templates", "examples", "pairs", "seconds", "pairs/s"], ev_rows),
        "",
        markdown_table(["varying", "fixed s", "s per pair", "marginal pairs/s"], ev_fits),
        "",
    ]

    # --- profile of the largest training case -----------------------------------------------
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        big_l.train()
        L = max(lens)
        step = train_step(big_l, B, L, device)
        step()  # warm
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with stage(f"profiling {args.model} {B} x {L}"), profile(activities=acts) as prof:
            step()
            sync(device)
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:15]
        prof_rows = [
            [
                e.key,
                e.count,
                e.self_cpu_time_total / 1e3,
                100 * e.self_cpu_time_total / total,
            ]
            for e in top
        ]
        results["profile"] = {"case": f"{args.model} {B} x {L}", "top": prof_rows}
        md += [
            f"### Profile: {args.model} training step, {B} x {L} (top ops by self CPU time)",
            "",
            markdown_table(["op", "calls", "self CPU ms", "% of step"], prof_rows),
            "",
        ]
    print("\n".join(md))
    write_json(args.out, results)


if __name__ == "__main__":
    main()
