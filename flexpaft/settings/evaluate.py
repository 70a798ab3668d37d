"""``flexpaft eval``'s settings, apart from the evaluation code so that building the command
line (``--help``, a bad ``--set``) does not load torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from flexpaft.settings.common import DataSettings, ModelSettings
from flexpaft.settings.schema import opt, section


@dataclass
class EvalConfig:
    __aliases__: ClassVar[dict[str, str]] = {
        "model_name_or_path": "model.name",
        "chat_template": "model.chat_template",
        "per_device_eval_batch_size": "batch_size",
        "own_template": "reference_template",
    }

    adapter: str = opt(
        "", "PEFT adapter directory to apply to the base model ('' = base model only).", path=True
    )
    prompt_set: str = opt(
        "",
        "Templates to evaluate under (jsonl/yaml/txt/csv/xlsx; '' = the task's default template).",
        path=True,
    )
    max_templates: int | None = opt(
        None,
        "Evaluate under the first N valid templates of prompt_set only, in file order "
        "(null = all of them).",
    )
    adversarial_set: str = opt(
        "",
        "Also evaluate under these perturbed templates (for the consistency metric).",
        path=True,
    )
    reference_template: str = opt(
        "",
        "Also evaluate one reference template, the user's own prompt (PDR, the report's "
        "own-prompt columns): 'default' (the task's) or template text.",
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
    output_dir: str = opt("runs/eval", "Where results.json and results.md go.", path=True)
    name: str = opt(
        "", "Label of this evaluation in reports (default: adapter directory or 'base')."
    )
    model: ModelSettings = section(ModelSettings, "Base model.")
    data: DataSettings = section(
        DataSettings, "Task and data (use skip/limit to keep test data apart)."
    )
