"""``flexpaft eval``: a model (+ adapter) on a task under every template of a prompt set."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from ..config import opt, section
from ..errors import FlexpaftError
from ..io import atomic_write_json, atomic_write_text
from ..models import load_model
from ..prompts import PromptSet, Template
from ..prompts.promptset import template_id
from ..settings import DataSettings, ModelSettings
from ..train.templates import default_template, load_valid_set
from .evaluator import EvalResult, evaluate_templates, load_adapter, markdown_table


@dataclass
class EvalConfig:
    adapter: str = opt(
        "", "PEFT adapter directory to apply to the base model ('' = base model only)."
    )
    prompt_set: str = opt(
        "",
        "Templates to evaluate under (jsonl/yaml/txt/csv/xlsx; '' = the task's default template).",
    )
    adversarial_set: str = opt(
        "", "Also evaluate under these perturbed templates (for the consistency metric)."
    )
    reference_template: str = opt(
        "", "Also evaluate one reference template for PDR: 'default' (the task's) or template text."
    )
    mode: str = opt("auto", "Scoring: auto, first_token, continuation or generate.")
    batch_size: int = opt(16, "Most sequences per forward pass.")
    max_batch_tokens: int = opt(
        8192, "Most padded tokens per forward pass (long prompts go in smaller batches)."
    )
    max_length: int = opt(2048, "Longest prompt in tokens (cut from the left).")
    max_new_tokens: int = opt(32, "Generation mode: tokens to generate per answer.")
    length_normalize: bool = opt(
        False, "Continuation scoring: mean instead of summed log-probability."
    )
    thresholds: list[float] = opt([0.8, 0.85, 0.9], "Top@t: share of templates with accuracy >= t.")
    output_dir: str = opt("runs/eval", "Where results.json and results.md go.")
    name: str = opt(
        "", "Label of this evaluation in reports (default: adapter directory or 'base')."
    )
    model: ModelSettings = section(ModelSettings, "Base model.")
    data: DataSettings = section(
        DataSettings, "Task and data (use skip/limit to keep test data apart)."
    )


def run_eval(cfg: EvalConfig, progress: bool = True) -> EvalResult:
    task, fmt, examples = cfg.data.load()
    if cfg.prompt_set:
        templates = list(load_valid_set(cfg.prompt_set, task, fmt))
    else:
        templates = [default_template(task, fmt)]
    if cfg.adapter and not Path(cfg.adapter).exists():
        raise FlexpaftError(f"adapter not found: {cfg.adapter}")
    model, tok = load_model(cfg.model.name, cfg.model.dtype, None, cfg.model.trust_remote_code)
    if cfg.adapter:
        model = load_adapter(model, cfg.adapter)

    def run(ts: list[Template]) -> EvalResult:
        return evaluate_templates(
            model,
            tok,
            task,
            fmt,
            ts,
            examples,
            cfg.mode,
            cfg.batch_size,
            cfg.max_length,
            cfg.max_new_tokens,
            cfg.length_normalize,
            tuple(cfg.thresholds),
            progress,
            cfg.max_batch_tokens,
        )

    res = run(templates)
    extra = {}
    if cfg.adversarial_set:
        extra["adversarial"] = run(list(load_valid_set(cfg.adversarial_set, task, fmt))).to_dict()
    if cfg.reference_template:
        if cfg.reference_template == "default":
            ref = default_template(task, fmt)
        else:
            text = cfg.reference_template
            ref = Template(text, template_id(text)).validate(task, fmt)
        extra["reference"] = run([ref]).to_dict()
    name = cfg.name or (Path(cfg.adapter).parent.name if cfg.adapter else "base")
    out = Path(cfg.output_dir)
    atomic_write_json(
        out / "results.json", {"name": name, "config": asdict(cfg), **res.to_dict(), **extra}
    )
    atomic_write_text(out / "results.md", markdown_table(res, f"{name}: {task.name}"))
    PromptSet(templates).save(out / "templates.jsonl")
    return res
