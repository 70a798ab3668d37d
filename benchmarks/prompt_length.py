"""Accuracy against prompt length across unseen templates: the PAFT paper's speed claim, measured.

The PAFT paper says robustness to wording "improves both model performance and inference
speed": a model that is accurate under any wording can be served with a short prompt. Given eval
results of several models under the same unseen templates (``flexpaft eval`` output directories)
and the tokenizer, this reports per template its prompt length in tokens (the mean over the
evaluated examples, rendered exactly as the evaluator renders them) and each model's accuracy;
per model the correlation of accuracy with length, and the shortest template whose accuracy is
within ``--within`` (1 point) of the model's mean over the templates, with what it saves against
the task's default prompt.

The saving is stated as the ratio of mean prompt lengths, default / shortest. For a forward-only
scorer (flexpaft's first-token and shared-prefix scoring: one pass over the prompt, the answers
a few tokens) the cost per example is first-order proportional to the prompt's tokens, so the
ratio is the expected speed-up in examples/s at equal tokens/s; it ignores the fixed per-batch
overhead and attention's quadratic term, which make short prompts save a little less on small
inputs and a little more on long ones. It is a proxy, not a timing.

    python benchmarks/prompt_length.py lora=runs/eval/lora paft=runs/eval/paft \
        --tokenizer embedded --out runs/prompt_length

writes ``runs/prompt_length.json`` and ``runs/prompt_length.md``.

``--time N`` also measures it: the model of the last run (its base model and adapter, as it is
served) scores the evaluated examples under the task's default prompt and under each model's
shortest template within ``--within`` of its mean, N times each, interleaved; the medians give
examples/s and the measured speed-up next to the proxy. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # importable from a fresh clone without `pip install -e .`
    sys.path.insert(0, str(REPO))

from flexpaft.errors import FlexpaftError  # noqa: E402
from flexpaft.io import atomic_write_json, atomic_write_text  # noqa: E402

PROXY_NOTE = (
    "Speed-up = default prompt's mean length / the short template's: for a forward-only scorer "
    "(one pass over the prompt, answers of a few tokens) the cost of an example is first-order "
    "proportional to its prompt tokens, so this ratio is the expected gain in examples/s at "
    "equal tokens/s. A proxy, not a timing: it ignores per-batch overhead and attention's "
    "quadratic term."
)


def pearson(x: list[float], y: list[float]) -> float | None:
    """Pearson correlation; None when either side does not vary (or fewer than 2 points)."""
    n = len(x)
    if n < 2:
        return None
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    if sxx == 0 or syy == 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def analyze(
    lengths: dict[str, float],
    accuracies: dict[str, dict[str, float]],
    default_length: float | None,
    within: float = 0.01,
) -> dict[str, Any]:
    """The numbers of the report, from template lengths (tokens) and per-model accuracies.

    ``accuracies[model][template]``; every model must have every template of ``lengths``.
    """
    tids = sorted(lengths, key=lambda t: (lengths[t], t))
    models = {}
    for name, acc in accuracies.items():
        missing = [t for t in tids if t not in acc]
        if missing:
            raise FlexpaftError(f"{name} has no result for template {missing[0]}")
        values = [acc[t] for t in tids]
        mean = sum(values) / len(values)
        # A small tolerance so a template exactly 1 point below the mean still counts.
        keep = [t for t in tids if acc[t] >= mean - within - 1e-12]
        short = keep[0]  # tids are sorted by length
        entry: dict[str, Any] = {
            "mean": mean,
            "correlation_with_length": pearson([lengths[t] for t in tids], values),
            "shortest_within": {
                "template": short,
                "length": lengths[short],
                "accuracy": acc[short],
            },
        }
        if default_length:
            entry["shortest_within"]["tokens_saved_per_example"] = default_length - lengths[short]
            entry["shortest_within"]["speedup_vs_default"] = default_length / lengths[short]
        models[name] = entry
    return {
        "templates": [
            {"id": t, "length": lengths[t], "accuracy": {m: accuracies[m][t] for m in accuracies}}
            for t in tids
        ],
        "default_length": default_length,
        "within": within,
        "models": models,
        "note": PROXY_NOTE,
    }


def render_markdown(result: dict[str, Any]) -> str:
    models = list(result["models"])
    pct = lambda x: f"{100 * x:.1f}"  # noqa: E731
    out = ["# Accuracy against prompt length", ""]
    if result["default_length"]:
        out += [f"Task's default prompt: {result['default_length']:.1f} tokens on average.", ""]
    out += ["| template | tokens | " + " | ".join(models) + " |"]
    out += ["|---|---:|" + "---:|" * len(models)]
    for t in result["templates"]:
        accs = " | ".join(pct(t["accuracy"][m]) for m in models)
        out.append(f"| {t['id']} | {t['length']:.1f} | {accs} |")
    within = 100 * result["within"]
    out += [
        "",
        f"| model | mean | r(accuracy, length) | shortest within {within:g} pt of the mean "
        "| its tokens | its accuracy | tokens saved / example | speed-up vs default |",
        "|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for name, m in result["models"].items():
        s = m["shortest_within"]
        r = m["correlation_with_length"]
        saved = s.get("tokens_saved_per_example")
        speed = s.get("speedup_vs_default")
        out.append(
            f"| {name} | {pct(m['mean'])} | {'–' if r is None else f'{r:+.2f}'} | {s['template']} "
            f"| {s['length']:.1f} | {pct(s['accuracy'])} | {'–' if saved is None else f'{saved:.1f}'} "
            f"| {'–' if speed is None else f'{speed:.2f}x'} |"
        )
    out += ["", PROXY_NOTE, ""]
    timing = result.get("timing")
    if timing:
        out += [
            f"Measured with {timing['run']}'s model (median of the timed rounds, one untimed "
            "round first):",
            "",
            "| template | tokens | seconds | examples/s | speed-up vs default |",
            "|---|---:|---:|---:|---:|",
        ]
        lengths = {t["id"]: t["length"] for t in result["templates"]}
        lengths["default"] = result["default_length"]
        base = timing["templates"]["default"]["seconds"]
        for tid, t in timing["templates"].items():
            out.append(
                f"| {tid} | {lengths.get(tid) or 0:.1f} | {t['seconds']:.2f} "
                f"| {t['examples_per_s']:.1f} | {base / t['seconds']:.2f}x |"
            )
        out.append("")
    return "\n".join(out)


def time_templates(
    model: Any,
    tok: Any,
    task: Any,
    fmt: Any,
    templates: dict[str, Any],
    examples: list[Any],
    chat: Any,
    repeats: int,
    batch_size: int,
    max_length: int,
) -> dict[str, dict[str, float]]:
    """Median wall seconds and examples/s of the evaluator's scoring under each template
    (``templates``: key -> Template; the result is keyed alike).

    Rounds are interleaved (every template once per round) so a drift in the machine's speed
    falls on all of them alike; one untimed round first warms the caches.
    """
    import statistics
    import time

    from flexpaft.evaluation.evaluator import evaluate_templates

    def score(t: Any) -> None:
        evaluate_templates(
            model, tok, task, fmt, [t], examples, batch_size=batch_size, max_length=max_length,
            progress=False, chat=chat,
        )  # fmt: skip

    for t in templates.values():
        score(t)
    seconds: dict[str, list[float]] = {key: [] for key in templates}
    for _ in range(repeats):
        for key, t in templates.items():
            started = time.perf_counter()
            score(t)
            seconds[key].append(time.perf_counter() - started)
    medians = {key: statistics.median(v) for key, v in seconds.items()}
    return {key: {"seconds": m, "examples_per_s": len(examples) / m} for key, m in medians.items()}


def add_timing(result: dict[str, Any], timing: dict[str, dict[str, float]], run: str) -> None:
    """Measured speed-ups against the default prompt, into ``result`` (in place)."""
    base = timing["default"]["seconds"]
    result["timing"] = {"run": run, "templates": timing}
    for m in result["models"].values():
        s = m["shortest_within"]
        if s["template"] in timing:
            s["measured_speedup_vs_default"] = base / timing[s["template"]]["seconds"]


def _load(arg: str) -> tuple[str, dict[str, Any]]:
    from flexpaft.reporting.robustness import load_run

    name, data, _ = load_run(arg)
    return name, data


def _examples_and_task(data: dict[str, Any]) -> tuple[Any, Any, list[Any]]:
    """The evaluated examples, reloaded from the run's own data settings and checked against its
    digest, so the lengths are those of what was scored."""
    from flexpaft.io import sha256_json
    from flexpaft.settings.common import DataSettings
    from flexpaft.settings.schema import from_dict

    cfg = data.get("config") or {}
    if not isinstance(cfg.get("data"), dict):
        raise FlexpaftError("results.json has no data settings (config.data): rerun flexpaft eval")
    task, fmt, examples = from_dict(DataSettings, cfg["data"], "data").load()
    digest = data.get("data_digest")
    if digest and digest != sha256_json([[e.fields, e.options, e.gold] for e in examples]):
        raise FlexpaftError("the examples reloaded from config.data are not the ones evaluated")
    return task, fmt, examples


def prompt_lengths(task, fmt, templates, examples, tok, chat=None) -> dict[str, float]:
    """Mean prompt tokens over ``examples`` per template id, rendered as the evaluator does."""
    from flexpaft.render import encode_prompt, render

    return {
        t.id: sum(len(encode_prompt(tok, render(task, t, e, fmt, chat).prompt)) for e in examples)
        / len(examples)
        for t in templates
    }


def _served_model(data: dict[str, Any], tok_name: str) -> tuple[Any, Any]:
    """The base model and adapter of an evaluated run, loaded as its evaluation loaded them."""
    from flexpaft.evaluation.evaluator import load_adapter
    from flexpaft.settings.common import ModelSettings
    from flexpaft.settings.schema import from_dict

    cfg = data.get("config") or {}
    model_cfg = cfg.get("model") if isinstance(cfg.get("model"), dict) else {"name": tok_name}
    model, tok = from_dict(ModelSettings, model_cfg, "model").load(None)
    if cfg.get("adapter"):
        model = load_adapter(model, cfg["adapter"])
    return model, tok


def run(args: argparse.Namespace) -> dict[str, Any]:
    from flexpaft.chat import resolve_chat
    from flexpaft.models import load_tokenizer, resolve_model
    from flexpaft.prompts import Template
    from flexpaft.prompts.task_templates import default_template

    runs = [_load(a) for a in args.runs]
    names = [n for n, _ in runs]
    if len(set(names)) != len(names):
        raise FlexpaftError("two runs share a label: name them NAME=DIR")
    first = runs[0][1]
    task, fmt, examples = _examples_and_task(first)
    texts = {t["id"]: t["text"] for t in first["per_template"]}
    for name, data in runs[1:]:
        if {t["id"] for t in data["per_template"]} != set(texts):
            raise FlexpaftError(f"{name} was evaluated on other templates than {names[0]}")
        if data.get("data_digest") != first.get("data_digest"):
            raise FlexpaftError(f"{name} was scored on other examples than {names[0]}")
    cfg = first.get("config") or {}
    tok_name = args.tokenizer or (cfg.get("model") or {}).get("name")
    if not tok_name:
        raise FlexpaftError("give --tokenizer (the results do not name their model)")
    tok = load_tokenizer(resolve_model(tok_name))
    chat = resolve_chat((cfg.get("model") or {}).get("chat_template", "none"), tok)
    templates = [Template(text, tid) for tid, text in texts.items()]
    lengths = prompt_lengths(task, fmt, templates, examples, tok, chat)
    default = Template(args.default_template, "default") if args.default_template else None
    default = default or default_template(task, fmt)
    default_length = prompt_lengths(task, fmt, [default], examples, tok, chat)[default.id]
    accuracies = {
        name: {t["id"]: float(t["accuracy"]) for t in data["per_template"]} for name, data in runs
    }
    result = analyze(lengths, accuracies, default_length, args.within / 100)
    result.update(task=task.name, format=fmt.value, examples=len(examples), tokenizer=tok_name)
    result["default_template"] = default.text
    if args.time:
        timed_name, timed = runs[-1]
        model, _ = _served_model(timed, tok_name)
        short = {m["shortest_within"]["template"] for m in result["models"].values()}
        timing = time_templates(
            model, tok, task, fmt, {"default": default, **{t.id: t for t in templates if t.id in short}},
            examples, chat, args.time, args.batch_size, int(cfg.get("max_length") or 2048),
        )  # fmt: skip
        add_timing(result, timing, timed_name)
    out = Path(args.out)
    atomic_write_json(out.with_suffix(".json"), result)
    atomic_write_text(out.with_suffix(".md"), render_markdown(result))
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", metavar="RUN", help="eval output directory, or NAME=DIR")
    p.add_argument("--tokenizer", default="", help="model or tokenizer (default: the runs' model)")
    p.add_argument(
        "--default-template", default="", help="the prompt to compare with (default: the task's)"
    )
    p.add_argument("--within", type=float, default=1.0, help="points below the mean still accepted")
    p.add_argument("--out", default="runs/prompt_length", help="output path, without suffix")
    p.add_argument(
        "--time",
        type=int,
        default=0,
        metavar="N",
        help="also time the last run's model under the default and the short templates, N "
        "rounds (0 = the token proxy only)",
    )
    p.add_argument("--batch-size", type=int, default=32, help="evaluation batch size for --time")
    args = p.parse_args(argv)
    try:
        result = run(args)
    except FlexpaftError as e:
        print(f"flexpaft: error: {e}", file=sys.stderr)
        return 2
    print(render_markdown(result))
    print(f"written: {Path(args.out).with_suffix('.json')}, {Path(args.out).with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
