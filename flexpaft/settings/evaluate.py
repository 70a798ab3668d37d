"""``flexpaft eval``'s settings, apart from the evaluation code so that building the command
line (``--help``, a bad ``--set``) does not load torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from flexpaft.settings.common import DataSettings, ModelSettings
from flexpaft.settings.loading import Loadable
from flexpaft.settings.schema import opt, section


@dataclass
class EvalModelSettings(ModelSettings):
    name: str = opt(
        "",
        "Base model: hub id, local directory, .gguf file, 'embedded' (SmolLM2-135M-Instruct), or "
        "'' = the adapter's own base model (the one it was trained on; the embedded model when "
        "there is no adapter).",
        path=True,
    )


@dataclass
class EvalPrompts:
    prompt_set: str = opt(
        "",
        "Templates to evaluate under (jsonl/yaml/txt/csv/xlsx; '' = the task's default template); "
        "for a robustness claim, templates the model never trained on.",
        path=True,
    )
    template: str = opt(
        "",
        "Your own prompt, scored beside the prompt set (the report's own-prompt columns and PDR): "
        "template text, or '' for the task's own template; the same key as train's "
        "prompts.template.",
    )
    own: bool = opt(
        True,
        "Score the own prompt (prompts.template) too; false to score the prompt set alone.",
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

    def __post_init__(self) -> None:
        if self.template == "default":  # the value `--own-template default` has always meant
            self.template = ""


# flexpaft eval's keys before they moved into the prompts section shared with train.
EVAL_KEYS_MOVED = {
    "prompt_set": "prompts.prompt_set",
    "reference_template": "prompts.template",
    "max_templates": "prompts.max_templates",
    "adversarial_set": "prompts.adversarial_set",
}


@dataclass
class EvalConfig(Loadable):
    __aliases__: ClassVar[dict[str, str]] = {
        "model_name_or_path": "model.name",
        "chat_template": "model.chat_template",
        "per_device_eval_batch_size": "batch_size",
        "own_template": "prompts.template",
    }
    __deprecated__: ClassVar[dict[str, str]] = EVAL_KEYS_MOVED

    adapter: str = opt(
        "", "PEFT adapter directory to apply to the base model ('' = base model only).", path=True
    )
    prompts: EvalPrompts = section(EvalPrompts, "Templates to evaluate under.")
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
    model: EvalModelSettings = section(EvalModelSettings, "Base model.")
    data: DataSettings = section(
        DataSettings, "Task and data (use skip/limit to keep test data apart)."
    )

    # Read access under the keys of earlier versions, for scripts written against them.
    @property
    def prompt_set(self) -> str:
        return self.prompts.prompt_set

    @property
    def max_templates(self) -> int | None:
        return self.prompts.max_templates

    @property
    def adversarial_set(self) -> str:
        return self.prompts.adversarial_set

    @property
    def reference_template(self) -> str:
        """The own prompt as the old key spelled it: its text, 'default' for the task's, or ''
        when it is not scored."""
        if not self.prompts.own:
            return ""
        return self.prompts.template or "default"


def upgrade_stored(config: dict[str, Any]) -> dict[str, Any]:
    """An EvalConfig as an older results.json stored it (prompt_set, reference_template... at the
    top), in today's shape, so finished evaluations are recognised as the same ones."""
    if "prompts" in config or "prompt_set" not in config:
        return config
    d = dict(config)
    ref = d.pop("reference_template", "")
    d["prompts"] = {
        "prompt_set": d.pop("prompt_set"),
        "template": "" if ref in ("", "default") else ref,
        "own": bool(ref),
        "max_templates": d.pop("max_templates", None),
        "adversarial_set": d.pop("adversarial_set", ""),
    }
    return d
