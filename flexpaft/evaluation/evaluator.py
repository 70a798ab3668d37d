"""Accuracy of a model (+ adapter) on a task under every template of a prompt set."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from flexpaft.chat import ChatFormat
from flexpaft.errors import FlexpaftError
from flexpaft.evaluation import metrics
from flexpaft.evaluation.results import EvalResult, TemplateResult
from flexpaft.evaluation.scoring import (
    Scored,
    TokenCache,
    generate_answers,
    score_continuations,
    score_first_token,
    single_token_answers,
)
from flexpaft.models import base_fingerprint
from flexpaft.prompts import Template
from flexpaft.render import render
from flexpaft.tasks.spec import AnswerFormat, Example, TaskSpec

log = logging.getLogger(__name__)

MODES = ("auto", "first_token", "continuation", "generate")


def choose_mode(mode: str, fmt: AnswerFormat, items_ok_single: bool) -> str:
    if mode not in MODES:
        raise FlexpaftError(f"unknown scoring mode {mode!r} (use {', '.join(MODES)})")
    if mode != "auto":
        return mode
    if fmt is AnswerFormat.GENERATION:
        return "generate"
    if fmt is AnswerFormat.OPTION_TEXT:
        return "continuation"
    # Multi-token letters/words cannot be scored from one position: fall back to exact scoring.
    return "first_token" if items_ok_single else "continuation"


def evaluate_templates(
    model: Any,
    tokenizer: Any,
    task: TaskSpec,
    fmt: AnswerFormat,
    templates: list[Template],
    examples: list[Example],
    mode: str = "auto",
    batch_size: int = 16,
    max_length: int = 2048,
    max_new_tokens: int = 32,
    length_normalize: bool = False,
    thresholds: tuple[float, ...] = (0.8, 0.85, 0.9),
    progress: bool = True,
    max_batch_tokens: int = 8192,
    pairs_per_call: int = 512,
    done: dict[str, TemplateResult] | None = None,
    on_result: Callable[[TemplateResult], None] | None = None,
    chat: ChatFormat | None = None,
) -> EvalResult:
    """Score every (template, example) pair; one TemplateResult per template.

    ``done`` holds results of templates already scored (a resumed run skips them); ``on_result``
    is called with each new template's result as soon as it exists, so a caller can save it.
    ``chat``: the chat template the prompts are wrapped in (see chat.py), as in training.
    """
    if not templates:
        raise FlexpaftError("no templates to evaluate")
    if not examples:
        raise FlexpaftError("no examples to evaluate")
    was_training = model.training
    model.eval()
    started = time.perf_counter()
    first = [render(task, templates[0], e, fmt, chat) for e in examples[:8]]
    answer_tokens = TokenCache(tokenizer)
    chosen = choose_mode(mode, fmt, single_token_answers(first, answer_tokens))
    done = dict(done or {})
    todo = [t for t in templates if t.id not in done]
    bar = tqdm(
        total=len(templates),
        initial=len(templates) - len(todo),
        desc=f"eval {task.name}",
        disable=not progress,
        unit="template",
    )
    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    scoring_started = time.perf_counter()
    # Several templates are scored in one call, so sorting by length groups similar prompts of
    # different templates into one batch (less padding than template by template).
    per_call = max(1, pairs_per_call // max(1, len(examples)))
    for start in range(0, len(todo), per_call):
        group = todo[start : start + per_call]
        items = [render(task, t, e, fmt, chat) for t in group for e in examples]
        kw = {
            "batch_size": batch_size,
            "max_length": max_length,
            "max_batch_tokens": max_batch_tokens,
        }
        if chosen == "first_token" and single_token_answers(items, answer_tokens):
            scored = score_first_token(model, tokenizer, items, **kw)
        elif chosen in ("first_token", "continuation"):
            # Multi-token answers cannot be read off one position: exact continuation scoring.
            norm = length_normalize and chosen == "continuation"
            scored = score_continuations(model, tokenizer, items, length_normalize=norm, **kw)
        else:
            scored = generate_answers(model, tokenizer, items, max_new_tokens=max_new_tokens, **kw)
        n = len(examples)
        for k, t in enumerate(group):
            part = slice(k * n, (k + 1) * n)
            done[t.id] = _template_result(t, items[part], scored[part], chosen == "generate")
            if on_result is not None:
                on_result(done[t.id])
        bar.update(len(group))
    bar.close()
    scoring_seconds = time.perf_counter() - scoring_started
    results = [done[t.id] for t in templates]
    if was_training:
        model.train()
    res = EvalResult(task.name, fmt.value, chosen, results, round(time.perf_counter() - started, 3))
    res.summary = metrics.summarize(res.accuracies, thresholds)
    res.pairs_scored = len(todo) * len(examples)
    if res.pairs_scored:
        res.pairs_per_s = round(res.pairs_scored / scoring_seconds, 3)
    if device.type == "cuda":
        res.peak_gpu_mib = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return res


def throughput_line(res: EvalResult) -> str:
    """'N pairs in S s: X pairs/s' (+ peak GPU memory), or why there is no figure."""
    if not res.pairs_scored or res.pairs_per_s is None:
        return "throughput: no pairs scored in this run (all templates resumed)"
    line = (
        f"throughput: {res.pairs_scored} (template x example) pairs, {res.pairs_per_s:.3f} pairs/s"
    )
    if res.peak_gpu_mib is not None:
        line += f", peak GPU memory {res.peak_gpu_mib:,.0f} MiB"
    return line


def _template_result(
    t: Template, items: list, scored: list[Scored], generated: bool
) -> TemplateResult:
    correct = [int(s.prediction == it.gold) for s, it in zip(scored, items)]
    preds = [s.prediction for s in scored]
    res = TemplateResult(t.id, t.text, float(np.mean(correct)), len(correct), correct, preds)
    if generated:
        res.answered = float(np.mean([p >= 0 for p in preds]))
        res.mean_generated_tokens = float(np.mean([s.generated_tokens for s in scored]))
        res.seconds_per_example = float(np.mean([s.seconds for s in scored]))
    return res


def load_adapter(model: Any, adapter_dir: str | Path) -> Any:
    """Wrap ``model`` with a saved PEFT adapter; refuse one trained on another base model."""
    from peft import PeftModel

    from flexpaft.stored import read_adapter_info
    from flexpaft.validate import check_adapter_dir

    path = check_adapter_dir(adapter_dir)
    info = read_adapter_info(path)
    if info is not None:
        want, have = info.get("base_fingerprint"), base_fingerprint(model.config)
        if want and want != have:
            diff = [k for k in want if want[k] != have.get(k)]
            raise FlexpaftError(
                f"adapter {path} was trained on another base model ({info.get('base_model')}; "
                f"differs in {', '.join(diff)}): load that base (model.name="
                f"{info.get('base_model')}, or empty for the adapter's own)"
            )
    import warnings

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            wrapped = PeftModel.from_pretrained(model, str(path))
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise FlexpaftError(
            f"adapter {path} does not fit this base model: {str(e).splitlines()[0][:200]}"
        ) from None
    # PEFT only warns when adapter weights have no place in the model (another architecture or
    # depth); an adapter that silently loads half its weights is worse than an error.
    for w in caught:
        text = str(w.message)
        if "missing adapter keys" in text or "unexpected keys" in text.lower():
            raise FlexpaftError(f"adapter {path} does not fit this base model: {text[:160]}")
    return wrapped


def markdown_table(res: EvalResult, title: str = "") -> str:
    s = res.summary
    lines = [
        f"### {title or res.task} ({res.format}, {res.mode}, {len(res.per_template)} templates)",
        "",
        throughput_line(res),
        "",
    ]
    keys = [k for k in s if k != "templates"]
    lines.append("| " + " | ".join(keys) + " |")
    lines.append("|" + "---|" * len(keys))
    lines.append("| " + " | ".join(_pct(s[k]) for k in keys) + " |")
    lines += ["", "| template | accuracy | n | text |", "|---|---|---|---|"]
    for t in res.per_template:
        text = t.text.replace("\n", "\\n").replace("|", "\\|")
        text = text if len(text) <= 80 else text[:77] + "..."
        lines.append(f"| {t.id} | {_pct(t.accuracy)} | {t.n} | {text} |")
    return "\n".join(lines) + "\n"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}" if isinstance(x, float) else str(x)
