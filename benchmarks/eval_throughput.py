"""Evaluation throughput: flexpaft's scorers against per-choice log-likelihood and generation.

Same model, templates and examples for every variant; (template x example) pairs per second.

  flexpaft first-token   evaluate_templates -> score_first_token: one batched forward per pair,
                         LM head on the last position only (label words / letters of one token)
  flexpaft continuation  evaluate_templates -> score_continuations: every (pair, option) sequence
                         batched by length, head on the continuation positions only (cloze)
  naive per-choice       score_naive: one unbatched full forward per (pair, option), the
                         lm-evaluation-harness way
  generation             evaluate_templates(mode="generate"): greedy decoding, answer extracted

Agreement = share of pairs where flexpaft's prediction equals naive's (they compute the same
log-probabilities; only batching, padding and floating-point order differ).

Cases: BoolQ label words (" yes"/" no", one token each in SmolLM2's tokenizer: checked), PIQA
letters (A/B with the options in the prompt), PIQA cloze (option text as continuation).

CPU:  python benchmarks/eval_throughput.py
GPU:  python benchmarks/eval_throughput.py --device cuda --model llama-3.2-1b --examples 128 \
          --templates 8 --repeats 3
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
    interleave,
    load_bench_model,
    machine,
    machine_line,
    markdown_table,
    median,
    stage,
    write_json,
)

from flexpaft.evaluate.evaluator import evaluate_templates  # noqa: E402
from flexpaft.evaluate.scoring import (  # noqa: E402
    TokenCache,
    score_naive,
    single_token_answers,
)
from flexpaft.paft.offline import generate_offline  # noqa: E402
from flexpaft.render import encode_prompt, render  # noqa: E402
from flexpaft.tasks import AnswerFormat, get_task, load_examples  # noqa: E402
from flexpaft.train.templates import default_template  # noqa: E402

REF = "naive per-choice"
CASES = {
    # name: (task, format, flexpaft mode)
    "boolq_words": ("boolq", AnswerFormat.LABEL_WORDS, "first_token"),
    "piqa_letter": ("piqa", AnswerFormat.LETTER, "first_token"),
    "piqa_cloze": ("piqa", AnswerFormat.OPTION_TEXT, "continuation"),
}


def run_case(
    name: str, model: Any, tok: Any, args: Any, device: torch.device
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    task_name, fmt, mode = CASES[name]
    task = get_task(task_name)
    examples = load_examples(task, str(data_file(f"{task_name}.jsonl")), shuffle=True, seed=1)
    examples = examples[: args.examples]
    # The task's own template plus offline-generated ones: templates differ in length and layout.
    templates = [default_template(task, fmt)]
    templates += list(generate_offline(task, fmt, max(0, args.templates - 1), seed=0))
    templates = templates[: args.templates]
    items = {t.id: [render(task, t, e, fmt) for e in examples] for t in templates}
    pairs = len(templates) * len(examples)
    # Padding in flexpaft's batches (sorted by length, --batch prompts each, left-padded to the
    # longest): the work a count-based batch spends on pad tokens.
    lens = sorted(
        (len(encode_prompt(tok, it.prompt)) for v in items.values() for it in v), reverse=True
    )
    padded = sum(lens[i] * len(lens[i : i + args.batch]) for i in range(0, len(lens), args.batch))
    pad_pct = round(100 * (1 - sum(lens) / padded), 1)
    single = all(single_token_answers(v, TokenCache(tok)) for v in items.values())
    if mode == "first_token" and not single:
        print(f"  {name}: answers are not single tokens; flexpaft falls back", file=sys.stderr)

    preds: dict[str, list[int]] = {}

    def flexpaft(m: str, vname: str) -> Callable[[], dict[str, Any]]:
        def run() -> dict[str, Any]:
            res = evaluate_templates(
                model,
                tok,
                task,
                fmt,
                templates,
                examples,
                mode=m,
                batch_size=args.batch,
                max_new_tokens=args.max_new_tokens,
                progress=False,
            )
            preds[vname] = [p for t in res.per_template for p in t.predictions]
            extra = {"mode": res.mode}
            if m == "generate":
                extra["answered"] = float(sum(t.answered for t in res.per_template)) / len(
                    res.per_template
                )
                extra["mean_generated_tokens"] = sum(
                    t.mean_generated_tokens or 0 for t in res.per_template
                ) / len(res.per_template)
            return extra

        return run

    def naive() -> dict[str, Any]:
        out = [score_naive(model, tok, items[t.id]) for t in templates]
        preds[REF] = [s.prediction for o in out for s in o]
        return {}

    flex_name = f"flexpaft {mode.replace('_', '-')}"
    variants: dict[str, Callable[[], dict[str, Any] | None]] = {
        flex_name: flexpaft(mode, flex_name),
        REF: naive,
    }
    if name == "boolq_words" and args.generate:
        variants["generation"] = flexpaft("generate", "generation")

    # Untimed warm-up on two pairs per method: first calls pay one-time costs (kernel selection,
    # tokenizer caches) that are not part of scoring throughput.
    small = items[templates[0].id][:2]
    score_naive(model, tok, small)
    evaluate_templates(
        model, tok, task, fmt, templates[:1], examples[:2], mode=mode, progress=False
    )
    with stage(f"{name}: {len(templates)} templates x {len(examples)} examples"):
        s = interleave(variants, device, args.repeats, args.warmup, memory_pass=False)

    ref_rate = pairs / median([x.seconds for x in s[REF]])
    rows = []
    agree_info: dict[str, Any] = {
        "pairs": pairs,
        "single_token_answers": single,
        "prompt_tokens_max": lens[0],
        "prompt_tokens_mean": round(sum(lens) / len(lens), 1),
        "flexpaft_padding_pct": pad_pct,
    }
    for vname, samples in s.items():
        sec = median([x.seconds for x in samples])
        agree = round(100 * sum(a == b for a, b in zip(preds[vname], preds[REF])) / pairs, 1)
        rows.append(
            {
                "case": name,
                "variant": vname,
                "pairs": pairs,
                "seconds_median": round(sec, 3),
                "pairs_per_s": round(pairs / sec, 3),
                "speedup_vs_naive": round(pairs / sec / ref_rate, 2),
                "agreement_with_naive_pct": agree,
                **{k: round(v, 3) for k, v in samples[0].info.items() if k != "mode"},
            }
        )
    return rows, agree_info


def main() -> None:
    p = base_parser(__doc__.splitlines()[0], repeats=2)
    p.set_defaults(warmup=0)
    p.add_argument("--examples", type=int, default=12)
    p.add_argument("--templates", type=int, default=3)
    p.add_argument("--batch", type=int, default=16, help="flexpaft's scoring batch size")
    p.add_argument("--max-new-tokens", type=int, default=32, help="generation (flexpaft default)")
    p.add_argument("--no-generate", dest="generate", action="store_false")
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    args = p.parse_args()
    from common import resolve_device

    device = resolve_device(args.device)
    with stage(f"loading {args.model}"):
        model, tok = load_bench_model(args.model, device, args.dtype)
    model.eval()
    results: dict[str, Any] = {
        "command": command_line(),
        "machine": machine(device, THREADS),
        "model": args.model,
        "args": vars(args),
        "rows": [],
        "cases": {},
    }
    for name in args.cases.split(","):
        rows, info = run_case(name.strip(), model, tok, args, device)
        results["rows"] += rows
        results["cases"][name] = info
    headers = [
        "case",
        "variant",
        "pairs",
        "s (median)",
        "pairs/s",
        "x naive",
        "agree w/ naive %",
    ]
    keys = [
        "case",
        "variant",
        "pairs",
        "seconds_median",
        "pairs_per_s",
        "speedup_vs_naive",
        "agreement_with_naive_pct",
    ]
    print(f"Machine: {machine_line(results['machine'])}; model {args.model}\n")
    print(markdown_table(headers, [[r[k] for k in keys] for r in results["rows"]]))
    print()
    for name, info in results["cases"].items():
        print(
            f"{name}: prompts {info['prompt_tokens_mean']} tokens on average, at most "
            f"{info['prompt_tokens_max']}; padding in flexpaft's batches of {args.batch}: "
            f"{info['flexpaft_padding_pct']}%"
        )
    gen = [r for r in results["rows"] if r["variant"] == "generation"]
    if gen:
        g = gen[0]
        print(
            f"\nGeneration: {g.get('answered', 0) * 100:.0f}% of pairs gave an extractable "
            f"answer, {g.get('mean_generated_tokens', 0):.1f} tokens generated on average."
        )
    write_json(args.out, results)


if __name__ == "__main__":
    main()
