"""Evaluation throughput: flexpaft's scorers against per-choice log-likelihood and generation.

Same model, templates and examples for every variant; (template x example) pairs per second.

  flexpaft first-token   evaluate_templates -> score_first_token: one batched forward per pair,
                         LM head on the last position only (label words / letters of one token)
  flexpaft continuation  evaluate_templates -> score_continuations: shared prefix, each prompt
                         packed with all its options into one sequence (4D mask), one forward
                         per pair whatever the number of options (cloze, multi-token answers)
  flexpaft per-option    score_continuations(shared_prefix=False): one (prompt + option)
                         sequence per option, batched by the same token budget (cloze cases
                         only: what the shared prefix buys; flash attention's fallback)
  naive per-choice       score_naive: one unbatched full forward per (pair, option), the
                         lm-evaluation-harness way
  generation             evaluate_templates(mode="generate"): greedy decoding, answer extracted

Agreement = share of pairs where a variant's prediction equals naive's (they compute the same
log-probabilities; only batching, padding and floating-point order differ).

Cases (2 options): BoolQ label words (" yes"/" no", one token each in SmolLM2's tokenizer:
checked), PIQA letters (A/B with the options in the prompt), PIQA cloze (option text as
continuation). 4 and 5 options: ARC-Easy letters and cloze; a HellaSwag-style 4-ending cloze
(no HellaSwag data here: the hellaswag task's templates on HellaSwag-schema records made from the
ARC-Easy questions with the longest options, ctx = question, endings = options); CommonsenseQA
letters and cloze with 5 options (the local file has 4 per question, as in llm-foundry's copy:
a fifth, wrong option is borrowed from the next question's options).

CPU:  python benchmarks/eval_throughput.py
      python benchmarks/eval_throughput.py --cases arc_letter,arc_cloze,hellaswag_style,csqa5_letter,csqa5_cloze
GPU:  python benchmarks/eval_throughput.py --gpu --models embedded --out eval_gpu_135m.json
      python benchmarks/eval_throughput.py --gpu --models llama-3.2-1b --out eval_gpu_1b.json
      python benchmarks/eval_throughput.py --gpu --models llama-3-8b --out eval_gpu_8b.json
      (--gpu = --device cuda --dtype bfloat16 --models embedded,llama-3.2-1b,llama-3-8b
       --examples 64 --templates 4 --repeats 2 --batch 4096 --max-batch-tokens auto, all cases,
       no generation; 'auto' sizes the token budget to the GPU memory left after loading each
       model; one model per command keeps each run within a few minutes)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import early_threads  # noqa: E402

THREADS = early_threads()

import json  # noqa: E402
import random  # noqa: E402
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

from flexpaft.evaluation.evaluator import evaluate_templates  # noqa: E402
from flexpaft.evaluation.scoring import (  # noqa: E402
    TokenCache,
    score_continuations,
    score_naive,
    single_token_answers,
)
from flexpaft.prompts.generate.offline import generate_offline  # noqa: E402
from flexpaft.prompts.task_templates import default_template  # noqa: E402
from flexpaft.render import encode_answer, encode_prompt, render  # noqa: E402
from flexpaft.tasks import AnswerFormat, Example, get_task, load_examples  # noqa: E402

REF = "naive per-choice"
PER_OPTION = "flexpaft per-option"
CASES = {
    # name: (task, data file, format, flexpaft mode)
    "boolq_words": ("boolq", "boolq", AnswerFormat.LABEL_WORDS, "first_token"),
    "piqa_letter": ("piqa", "piqa", AnswerFormat.LETTER, "first_token"),
    "piqa_cloze": ("piqa", "piqa", AnswerFormat.OPTION_TEXT, "continuation"),
    "arc_letter": ("arc_easy", "arc_easy", AnswerFormat.LETTER, "first_token"),
    "arc_cloze": ("arc_easy", "arc_easy", AnswerFormat.OPTION_TEXT, "continuation"),
    "hellaswag_style": ("hellaswag", "arc_easy", AnswerFormat.OPTION_TEXT, "continuation"),
    "csqa5_letter": ("commonsense_qa", "commonsense_qa", AnswerFormat.LETTER, "first_token"),
    "csqa5_cloze": ("commonsense_qa", "commonsense_qa", AnswerFormat.OPTION_TEXT, "continuation"),
}
DEFAULT_CASES = "boolq_words,piqa_letter,piqa_cloze"


def case_examples(name: str, n: int, tok: Any) -> list[Example]:
    """``n`` examples of a case, shuffled with a fixed seed."""
    task_name, file, _, _ = CASES[name]
    task = get_task(task_name)
    path = data_file(f"{file}.jsonl")
    if name == "hellaswag_style":
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

        def option_tokens(r: dict[str, Any]) -> float:
            texts = r["choices"]["text"]
            return sum(len(encode_answer(tok, " " + t)) for t in texts) / len(texts)

        # HellaSwag's endings are sentences of similar length; ARC's longest options come closest.
        rows = sorted(rows, key=option_tokens, reverse=True)[: max(4 * n, 64)]
        random.Random(1).shuffle(rows)
        return [
            task.normalize(
                {
                    "ctx": r["question"],
                    "activity_label": "Science",
                    "endings": r["choices"]["text"],
                    "label": r["choices"]["label"].index(r["answerKey"]),
                },
                uid=str(i),
            )
            for i, r in enumerate(rows[:n])
        ]
    if name.startswith("csqa5"):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        out = []
        for i, r in enumerate(rows):
            texts = list(r["choices"]["text"])
            # A fifth option: the first of the next question's options this question lacks.
            nxt = rows[(i + 1) % len(rows)]["choices"]["text"]
            texts.append(next(t for t in nxt if t not in texts))
            labels = [*r["choices"]["label"], "E"]
            rec = {"question": r["question"], "choices": {"text": texts, "label": labels}}
            out.append(task.normalize({**rec, "answerKey": r["answerKey"]}, uid=str(i)))
        random.Random(1).shuffle(out)
        return out[:n]
    return load_examples(task, str(path), shuffle=True, seed=1)[:n]


def gpu_token_budget(model: Any, device: torch.device, fraction: float = 0.5) -> int:
    """Padded tokens per forward that fit in ``fraction`` of the GPU memory left after the model.

    Per token, a forward holds a few hidden-size and MLP-size activations, a row of the 4D
    mask, and at worst its logits (bf16 from the model plus fp32 for the log-softmax of the
    scored positions); counting logits for every token is conservative (first-token scoring keeps
    one position per row).
    """
    free, _ = torch.cuda.mem_get_info(device)
    cfg = model.config
    elt = next(model.parameters()).element_size()
    per_token = elt * (6 * cfg.hidden_size + 3 * cfg.intermediate_size) + 6 * cfg.vocab_size
    per_token += 2 * 2048  # one row of a bf16 4D mask over a sequence of up to 2,048 tokens
    return int(max(1024, min(262144, fraction * free / per_token)))


def run_case(
    name: str, model: Any, tok: Any, args: Any, device: torch.device, budget: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    task_name, _, fmt, mode = CASES[name]
    task = get_task(task_name)
    examples = case_examples(name, args.examples, tok)
    # The task's own template plus offline-generated ones: templates differ in length and layout.
    templates = [default_template(task, fmt)]
    templates += list(generate_offline(task, fmt, max(0, args.templates - 1), seed=0))
    templates = templates[: args.templates]
    items = {t.id: [render(task, t, e, fmt) for e in examples] for t in templates}
    all_items = [it for t in templates for it in items[t.id]]
    pairs = len(templates) * len(examples)
    lens = [len(encode_prompt(tok, it.prompt)) for it in all_items]
    opt_lens = [len(encode_answer(tok, a)) for it in all_items for a in it.answers]
    single = all(single_token_answers(v, TokenCache(tok)) for v in items.values())
    if mode == "first_token" and not single:
        print(f"  {name}: answers are not single tokens; flexpaft falls back", file=sys.stderr)
    kw = {"batch_size": args.batch, "max_batch_tokens": budget}

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
                max_new_tokens=args.max_new_tokens,
                progress=False,
                **kw,
            )
            preds[vname] = [p for t in res.per_template for p in t.predictions]
            extra: dict[str, Any] = {"mode": res.mode}
            if res.peak_gpu_mib is not None:
                extra["peak_gpu_mib"] = res.peak_gpu_mib
            if m == "generate":
                extra["answered"] = float(sum(t.answered for t in res.per_template)) / len(
                    res.per_template
                )
                extra["mean_generated_tokens"] = sum(
                    t.mean_generated_tokens or 0 for t in res.per_template
                ) / len(res.per_template)
            return extra

        return run

    def per_option() -> dict[str, Any]:
        out = score_continuations(model, tok, all_items, shared_prefix=False, **kw)
        preds[PER_OPTION] = [s.prediction for s in out]
        return {}

    def naive() -> dict[str, Any]:
        out = [score_naive(model, tok, items[t.id]) for t in templates]
        preds[REF] = [s.prediction for o in out for s in o]
        return {}

    flex_name = f"flexpaft {mode.replace('_', '-')}"
    variants: dict[str, Callable[[], dict[str, Any] | None]] = {
        flex_name: flexpaft(mode, flex_name),
        REF: naive,
    }
    if mode == "continuation" and args.per_option:
        variants[PER_OPTION] = per_option
    if name == "boolq_words" and args.generate:
        variants["generation"] = flexpaft("generate", "generation")

    # Untimed warm-up on two pairs per method: first calls pay one-time costs (kernel selection,
    # tokenizer caches) that are not part of scoring throughput.
    small = items[templates[0].id][:2]
    score_naive(model, tok, small)
    score_continuations(model, tok, small, shared_prefix=False)
    evaluate_templates(
        model, tok, task, fmt, templates[:1], examples[:2], mode=mode, progress=False
    )
    with stage(f"{name}: {len(templates)} templates x {len(examples)} examples"):
        s = interleave(variants, device, args.repeats, args.warmup, memory_pass=False)

    ref_rate = pairs / median([x.seconds for x in s[REF]])
    rows = []
    info: dict[str, Any] = {
        "pairs": pairs,
        "options": sorted({len(it.answers) for it in all_items}),
        "single_token_answers": single,
        "prompt_tokens_max": max(lens),
        "prompt_tokens_mean": round(sum(lens) / len(lens), 1),
        "option_tokens_mean": round(sum(opt_lens) / len(opt_lens), 1),
        "max_batch_tokens": budget,
    }
    for vname, samples in s.items():
        sec = median([x.seconds for x in samples])
        agree = round(100 * sum(a == b for a, b in zip(preds[vname], preds[REF])) / pairs, 1)
        peaks = [x.peak_bytes for x in samples if x.peak_bytes is not None]
        rows.append(
            {
                "model": args.model,
                "case": name,
                "options": "/".join(map(str, info["options"])),
                "variant": vname,
                "pairs": pairs,
                "seconds_median": round(sec, 3),
                "pairs_per_s": round(pairs / sec, 3),
                "speedup_vs_naive": round(pairs / sec / ref_rate, 2),
                "agreement_with_naive_pct": agree,
                "peak_gpu_mib": round(max(peaks) / 2**20) if peaks else None,
                **{k: round(v, 3) for k, v in samples[0].info.items() if k != "mode"},
            }
        )
    return rows, info


def main() -> None:
    p = base_parser(__doc__.splitlines()[0], repeats=2)
    p.set_defaults(warmup=0)
    p.add_argument("--examples", type=int, default=12)
    p.add_argument("--templates", type=int, default=3)
    p.add_argument("--batch", type=int, default=16, help="most sequences per forward")
    p.add_argument(
        "--max-batch-tokens",
        default="8192",
        help="most padded tokens per forward (flexpaft's default), or 'auto' (GPU: sized to "
        "the memory left after loading the model)",
    )
    p.add_argument("--max-new-tokens", type=int, default=32, help="generation (flexpaft default)")
    p.add_argument("--no-generate", dest="generate", action="store_false")
    p.add_argument(
        "--no-per-option",
        dest="per_option",
        action="store_false",
        help="skip the per-option continuation variant on cloze cases",
    )
    p.add_argument("--cases", default=DEFAULT_CASES, help="comma-separated: " + ", ".join(CASES))
    p.add_argument("--models", default="", help="comma-separated; several models in one run")
    p.add_argument(
        "--gpu",
        action="store_true",
        help="GPU mode: cuda, bf16, embedded + llama-3.2-1b + llama-3-8b shapes, 64 examples x "
        "4 templates, 2 repeats, every case, token budget sized to the GPU, no generation "
        "(each option given explicitly wins)",
    )
    given = {a.split("=")[0] for a in sys.argv[1:] if a.startswith("--")}
    args = p.parse_args()
    if args.gpu:
        preset = {
            "device": "cuda",
            "dtype": "bfloat16",
            "models": "embedded,llama-3.2-1b,llama-3-8b",
            "examples": 64,
            "templates": 4,
            "repeats": 2,
            "batch": 4096,
            "max_batch_tokens": "auto",
            "cases": ",".join(CASES),
            "generate": False,
        }
        for k, v in preset.items():
            if "--" + k.replace("_", "-") not in given:
                setattr(args, k, v)
    from common import resolve_device

    device = resolve_device(args.device)
    models = [m.strip() for m in (args.models or args.model).split(",") if m.strip()]
    results: dict[str, Any] = {
        "command": command_line(),
        "machine": machine(device, THREADS),
        "models": models,
        "args": vars(args),
        "rows": [],
        "cases": {},
    }
    for model_name in models:
        with stage(f"loading {model_name}"):
            model, tok = load_bench_model(model_name, device, args.dtype, args.tokenizer)
        model.eval()
        args.model = model_name
        if args.max_batch_tokens == "auto":
            budget = gpu_token_budget(model, device) if device.type == "cuda" else 8192
        else:
            budget = int(args.max_batch_tokens)
        print(f"  {model_name}: token budget {budget} per forward", file=sys.stderr)
        for name in args.cases.split(","):
            rows, info = run_case(name.strip(), model, tok, args, device, budget)
            results["rows"] += rows
            results["cases"][f"{model_name}/{name}"] = info
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    headers = ["model", "case", "options", "variant", "pairs", "s (median)", "pairs/s"]
    headers += ["x naive", "agree w/ naive %"]
    keys = ["model", "case", "options", "variant", "pairs", "seconds_median", "pairs_per_s"]
    keys += ["speedup_vs_naive", "agreement_with_naive_pct"]
    if device.type == "cuda":
        headers.append("peak GPU MiB")
        keys.append("peak_gpu_mib")
    print(f"Machine: {machine_line(results['machine'])}; models {', '.join(models)}\n")
    print(markdown_table(headers, [[r[k] for k in keys] for r in results["rows"]]))
    print()
    for name, info in results["cases"].items():
        print(
            f"{name}: {'/'.join(map(str, info['options']))} options; prompts "
            f"{info['prompt_tokens_mean']} tokens on average, at most {info['prompt_tokens_max']}; "
            f"options {info['option_tokens_mean']} tokens on average; token budget "
            f"{info['max_batch_tokens']}"
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
