"""Training configuration: one dataclass tree, loadable from YAML and overridable with --set."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from ..config import opt, section
from ..errors import FlexpaftError, short_repr
from ..settings import DataSettings, ModelSettings
from ..tasks.spec import AnswerFormat
from .compute import ComputeSettings
from .optim import OPTIMIZERS, SCHEDULERS
from .tracking import REPORT_TO_HELP
from .validation import ValidationSettings

METHODS = ("lora", "paft", "topaccuracy", "flexora", "flexora+paft")
MULTI_TEMPLATE_METHODS = ("paft", "flexora+paft")


@dataclass
class PromptSettings:
    template: str = opt(
        "", "Single-prompt methods: the template text (default: the task's own template)."
    )
    prompt_set: str = opt(
        "",
        "Template file (jsonl/yaml/txt/csv/xlsx): PAFT draws from it; topaccuracy ranks it.",
        path=True,
    )
    mode: str = opt(
        "example",
        "PAFT sampling: 'example' (new template per example) or 'steps' (one per K optimizer steps).",
    )
    k_steps: int = opt(
        1, "PAFT: optimizer steps a drawn template is kept in 'steps' mode (the paper's K)."
    )
    topaccuracy_examples: int = opt(
        64, "topaccuracy: examples used to rank the templates on the base model."
    )
    own_rate: float = opt(
        0.5,
        "paft, flexora+paft: share of training draws that use the user's own template "
        "(prompts.template, else the task's), added to the prompt set if absent; the other "
        "draws are uniform over the remaining templates. 0 = plain PAFT (the default before "
        "2026-12-07); 0.5 kept PAFT level with one-prompt LoRA under its own prompt in the "
        "PAFT tax study. Single-template methods train on their one template anyway and "
        "ignore it.",
    )

    def __post_init__(self) -> None:
        # Below 1: at 1 every draw is the own template, which is one-prompt LoRA, not PAFT.
        if not (0 <= self.own_rate < 1):
            raise ValueError(f"prompts.own_rate must be in [0, 1), got {self.own_rate}")


@dataclass
class LoraSettings:
    r: int = opt(8, "LoRA rank.")
    alpha: float = opt(16.0, "LoRA alpha (scaling = alpha / r, or alpha / sqrt(r) with rsLoRA).")
    dropout: float = opt(0.0, "LoRA dropout.")
    target_modules: list[str] = opt(["q_proj", "v_proj"], "Modules to adapt, or ['all-linear'].")
    layers_to_transform: list[int] | None = opt(
        None, "Only adapt these block indices (None = all)."
    )
    layers_pattern: str = opt(
        "", "Name of the block list for layers_to_transform when PEFT cannot infer it."
    )
    rank_pattern: dict[str, int] = opt(
        {},
        "Per-module ranks, PEFT's rank_pattern (module-name regex -> r); flexora.ranks=gate "
        "fills it. Every entry must match an adapted module (checked after building).",
    )
    alpha_pattern: dict[str, float] = opt(
        {}, "Per-module LoRA alpha, PEFT's alpha_pattern (module-name regex -> alpha)."
    )
    use_dora: bool = opt(False, "Weight-decomposed LoRA (DoRA).")
    use_rslora: bool = opt(False, "Rank-stabilised LoRA scaling alpha / sqrt(r).")

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError("lora.r must be at least 1")
        if not self.target_modules:
            raise ValueError("lora.target_modules must name at least one module")


@dataclass
class OptimSettings:
    lr: float = opt(1e-4, "Peak learning rate.")
    weight_decay: float = opt(0.0, "Weight decay.")
    optimizer: str = opt(
        "adamw_torch", f"Optimizer, by TrainingArguments.optim name: {', '.join(OPTIMIZERS)}."
    )
    lr_scheduler_type: str = opt(
        "cosine",
        f"Learning-rate schedule after the warm-up (transformers names): {', '.join(SCHEDULERS)}.",
    )
    epochs: float = opt(3.0, "Training epochs (fractions allowed).")
    max_steps: int = opt(0, "Stop after this many optimizer steps (0 = run the epochs).")
    batch_size: int = opt(8, "Examples per device per micro-batch.")
    grad_accum: int = opt(1, "Micro-batches per optimizer step.")
    warmup_ratio: float = opt(0.1, "Fraction of steps with linear warm-up before the schedule.")
    max_grad_norm: float = opt(1.0, "Gradient clipping norm (0 = off).")
    group_by_length: bool = opt(True, "Batch examples of similar length together (less padding).")
    num_workers: int = opt(
        -1,
        "DataLoader workers rendering and tokenizing (-1 = auto: 2 on GPU, 0 on CPU, where a "
        "worker would compete with the training threads for the cores).",
    )
    loss: str = opt(
        "auto",
        "Training loss: answer (cross-entropy of the gold answer's tokens over the whole "
        "vocabulary), options (cross-entropy over the task's answer options, ranked by summed "
        "log-probability as the evaluator ranks them, every option packed after one shared "
        "prompt (one per option under flash attention); label_words, letter and option_text "
        "formats only), or auto (options for paft and flexora+paft where the format scores "
        "options, answer otherwise; chosen by the PAFT tax study, docs/RESULTS.md).",
    )
    consistency: float = opt(
        0.0,
        "Weight of a consistency term (0 = off): each training example is rendered under two "
        "templates (the sampler's draw and a second, different one drawn from (seed, epoch, "
        "example)), both scored over the answer options; loss = mean of the two options "
        "cross-entropies + consistency x symmetric KL between the two option distributions "
        "(the mean of KL(p1||p2) and KL(p2||p1)). Two scored passes per step. Scored formats "
        "only; needs several templates (paft, flexora+paft).",
    )

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("optim.batch_size and optim.grad_accum must be at least 1")
        if self.lr <= 0:
            raise ValueError("optim.lr must be positive")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"optim.optimizer {self.optimizer!r} is not one of {', '.join(OPTIMIZERS)}"
            )
        if self.lr_scheduler_type not in SCHEDULERS:
            raise ValueError(
                f"optim.lr_scheduler_type {self.lr_scheduler_type!r} is not one of "
                f"{', '.join(SCHEDULERS)}"
            )
        if self.loss not in TRAIN_LOSSES:
            raise ValueError(
                f"optim.loss {short_repr(self.loss)} is not one of {', '.join(TRAIN_LOSSES)}"
            )
        if not (math.isfinite(self.consistency) and self.consistency >= 0):
            raise ValueError(f"optim.consistency must be 0 or more, got {self.consistency}")

    def resolved_loss(self, method: str, fmt: AnswerFormat) -> str:
        """``loss`` with auto decided for ``method`` and answer format ``fmt``."""
        if self.loss != "auto":
            return self.loss
        scored = fmt is not AnswerFormat.GENERATION
        return "options" if scored and method in AUTO_OPTIONS_METHODS else "answer"

    def scores_options(self, method: str, fmt: AnswerFormat) -> bool:
        """Training batches hold every option's answer (the options loss or consistency)."""
        return self.resolved_loss(method, fmt) == "options" or self.consistency > 0


TRAIN_LOSSES = ("auto", "answer", "options")
# Where optim.loss=auto means the loss over the options: in the PAFT tax study it lifted PAFT's
# worst unseen template by 22 points, and with prompts.own_rate=0.5 kept PAFT level with
# one-prompt LoRA under its own prompt (docs/RESULTS.md).
AUTO_OPTIONS_METHODS = MULTI_TEMPLATE_METHODS


BUDGET_UNITS = ("auto", "rows", "pass")
VAL_LOSSES = ("auto", "options", "full")
VAL_TEMPLATES = ("auto", "train", "heldout")
SEARCH_SCHEDULES = ("search", "stage2")
STAGE2_EXAMPLES = ("all", "train")
# flexora/select.py's RULES and RANK_RULES, repeated so the config check needs no torch import
# (tests/test_bad_inputs2.py keeps them equal).
SELECTION_RULES = ("positive", "gate", "topk", "fraction")
RANK_RULES = ("uniform", "gate")


@dataclass
class FlexoraSettings:
    val_examples: int = opt(
        200, "Validation examples held out from the training data for the search."
    )
    search_steps: int = opt(0, "Search length in outer steps (0 = search_examples or auto).")
    search_examples: int = opt(0, "Search length in training examples (0 = search_steps or auto).")
    search_budget: float = opt(
        1.0,
        "Auto length (search_steps = search_examples = 0): the search's share of stage 2's "
        "compute (forward+backward passes, counted as budget_unit says), at most one pass over "
        "the training split. 1 (a whole pass; 0.5 before 2026-12-07) lifted flexora+paft by "
        "6.4 points on snips (docs/RESULTS.md); 0.1 with alpha_warmup=0 is the cheap setting.",
    )
    budget_unit: str = opt(
        "auto",
        "What search_budget counts: rows (a micro-batch is one unit however many row chunks it "
        "runs as: right where time follows rows, as on a CPU), pass (every forward+backward "
        "call is one unit: right where a pass costs the same for 2 rows as for 8, as on a GPU "
        "at LoRA batch sizes), auto (pass on an accelerator, rows on a CPU).",
    )
    stable_steps: int = opt(
        10,
        "Stop the search once the selection (for the positive rule: alpha's sign pattern) has "
        "not changed for this many outer steps (0 = never stop early).",
    )
    alpha_lr: float = opt(1e-2, "Adam learning rate of the layer logits alpha.")
    val_batches: int = opt(1, "Validation micro-batches summed per alpha step.")
    micro_batch: int = opt(
        0,
        "Rows per forward/backward in the search's first-order steps (0 = auto: half of "
        "optim.batch_size, rounded up). The search adapts every block, so a full micro-batch "
        "there holds activations that stage 2 skips; chunk losses are weighted by answer tokens, "
        "so every step is still the full micro-batch's. Set optim.batch_size to disable.",
    )
    unroll: int = opt(
        0,
        "0 = first-order alternating steps (the paper's code); K > 0 = K-step unrolled hypergradient.",
    )
    selection: str = opt("positive", "positive (alpha > 0), gate (gate > 1), topk, fraction.")
    ranks: str = opt(
        "uniform",
        "Stage-2 ranks of the selected blocks: uniform (lora.r each, layers_to_transform only) "
        "or gate (round(lora.r x gate_i / mean gate of the selected), at least 1, with lora.alpha "
        "scaled alike so alpha/r stays; written as PEFT rank_pattern/alpha_pattern).",
    )
    k: int = opt(0, "Layers kept by the topk rule.")
    fraction: float = opt(0.5, "Share of layers kept by the fraction rule.")
    blocks_pattern: str = opt(
        "", "Regex for block module names with one group capturing the index (auto if '')."
    )
    val_loss: str = opt(
        "auto",
        "The loss alpha minimises on the validation batches: options (cross-entropy over the "
        "task's answer options, ranked by summed log-probability as the evaluator ranks them: "
        "the loss accuracy reads), full (cross-entropy of the gold answer over the whole "
        "vocabulary, the paper's), auto (options wherever the answer format scores options: "
        "label_words, letter, option_text; full for generation).",
    )
    val_templates: str = opt(
        "auto",
        "Templates the validation batches are rendered under: train (the training templates), "
        "heldout (a slice of the prompt set, val_template_fraction of it, that the search's "
        "inner loop never trains on, so alpha is tuned for unseen wordings; plain flexora, "
        "which trains on one template, validates under all of prompts.prompt_set instead), "
        "auto (heldout when the prompt set has at least 4 templates, as under flexora+paft, "
        "or when plain flexora is given prompts.prompt_set; train otherwise).",
    )
    val_template_fraction: float = opt(
        0.25, "Share of the prompt set held out for validation under val_templates=heldout."
    )
    alpha_warmup: float = opt(
        0.25,
        "Share of the search's outer steps during which only the LoRA weights learn and alpha "
        "waits (its gradient at an untrained LoRA says little about where LoRA helps).",
    )
    schedule: str = opt(
        "stage2",
        "Inner learning-rate schedule of the search: search (the optim schedule squeezed into "
        "the search's length) or stage2 (the first steps of the schedule stage 2 runs: the same "
        "warm-up and learning rates a LoRA sees there).",
    )

    stage2_examples: str = opt(
        "train",
        "What stage 2 trains on: train (only the search's training split, as the paper's code "
        "does; the measured default) or all (every training example, the search's validation "
        "examples included: they chose the blocks, a hyperparameter, as a held-out fold does, "
        "and the final LoRA learns from the same data as a LoRA it is compared with).",
    )

    def __post_init__(self) -> None:
        if self.budget_unit not in BUDGET_UNITS:
            raise ValueError(
                f"flexora.budget_unit {self.budget_unit!r} is not one of {', '.join(BUDGET_UNITS)}"
            )
        for key, choices in (
            ("val_loss", VAL_LOSSES),
            ("val_templates", VAL_TEMPLATES),
            ("schedule", SEARCH_SCHEDULES),
            ("stage2_examples", STAGE2_EXAMPLES),
        ):
            if getattr(self, key) not in choices:
                raise ValueError(
                    f"flexora.{key} {short_repr(getattr(self, key))} is not one of {', '.join(choices)}"
                )
        if not 0 < self.val_template_fraction < 1:
            raise ValueError(
                f"flexora.val_template_fraction must be in (0, 1), got {self.val_template_fraction}"
            )
        if not 0 <= self.alpha_warmup < 1:
            raise ValueError(f"flexora.alpha_warmup must be in [0, 1), got {self.alpha_warmup}")

        # Checked here, before the model loads and the search runs, not when the search ends.
        if self.selection not in SELECTION_RULES:
            raise ValueError(
                f"flexora.selection {short_repr(self.selection)} is not one of "
                f"{', '.join(SELECTION_RULES)}"
            )
        if self.ranks not in RANK_RULES:
            raise ValueError(
                f"flexora.ranks {short_repr(self.ranks)} is not one of {', '.join(RANK_RULES)}"
            )
        if self.selection == "topk" and self.k < 1:
            raise ValueError(f"flexora.k must be at least 1 for the topk rule, got {self.k}")

    def resolved_val_loss(self, fmt: AnswerFormat) -> str:
        """``val_loss`` with auto decided for answer format ``fmt``."""
        if self.val_loss != "auto":
            return self.val_loss
        return "full" if fmt is AnswerFormat.GENERATION else "options"


# TrainingArguments (and PEFT LoraConfig) names accepted for the keys they mean, in YAML and --set.
TRAINING_ARGUMENTS_ALIASES = {
    "learning_rate": "optim.lr",
    "num_train_epochs": "optim.epochs",
    "max_steps": "optim.max_steps",
    "per_device_train_batch_size": "optim.batch_size",
    "gradient_accumulation_steps": "optim.grad_accum",
    "warmup_ratio": "optim.warmup_ratio",
    "weight_decay": "optim.weight_decay",
    "max_grad_norm": "optim.max_grad_norm",
    "group_by_length": "optim.group_by_length",
    "dataloader_num_workers": "optim.num_workers",
    "optim": "optim.optimizer",  # only when given a name, not the optim section
    "lr_scheduler_type": "optim.lr_scheduler_type",
    "lora_r": "lora.r",
    "lora_alpha": "lora.alpha",
    "lora_dropout": "lora.dropout",
    "lora_target_modules": "lora.target_modules",
    "logging_steps": "log_every",
    "save_steps": "checkpoint_every",
    "max_seq_length": "data.max_length",
    "model_name_or_path": "model.name",
    "chat_template": "model.chat_template",
}


@dataclass
class TrainConfig:
    __aliases__: ClassVar[dict[str, str]] = TRAINING_ARGUMENTS_ALIASES

    method: str = opt("lora", f"Training method: {', '.join(METHODS)}.")
    output_dir: str = opt(
        "runs/train", "Where the adapter, manifest and checkpoints go.", path=True
    )
    seed: int = opt(0, "Seed for data order, template draws and LoRA initialisation.")
    checkpoint_every: int = opt(
        50, "Save a resumable checkpoint every N optimizer steps (0 = never)."
    )
    resume: bool = opt(
        True, "Resume from output_dir's checkpoint when one exists for the same config."
    )
    log_every: int = opt(
        10, "Log loss and speed every N optimizer steps (stderr, history.jsonl, trackers)."
    )
    report_to: str = opt("none", REPORT_TO_HELP)
    push_to_hub: bool = opt(
        False, "Upload the adapter and its model card to hub_model_id at the end (token: HF_TOKEN)."
    )
    hub_model_id: str = opt("", "Hub repository for push_to_hub, e.g. me/smollm2-boolq-paft.")
    hub_private: bool = opt(True, "Create the hub repository private.")
    model: ModelSettings = section(ModelSettings, "Base model.")
    data: DataSettings = section(DataSettings, "Task and data.")
    prompts: PromptSettings = section(PromptSettings, "Templates.")
    lora: LoraSettings = section(LoraSettings, "LoRA adapter.")
    optim: OptimSettings = section(OptimSettings, "Optimisation.")
    flexora: FlexoraSettings = section(FlexoraSettings, "Flexora layer search.")
    compute: ComputeSettings = section(
        ComputeSettings, "Memory and speed: precision, 4/8-bit weights, checkpointing, attention."
    )
    validation: ValidationSettings = section(
        ValidationSettings, "Evaluation during training, best adapter, early stopping."
    )

    def __post_init__(self) -> None:
        if self.push_to_hub and not self.hub_model_id:
            raise FlexpaftError("push_to_hub needs hub_model_id (the hub repository)")
        if self.method not in METHODS:
            raise FlexpaftError(
                f"unknown method {self.method!r} (choose from {', '.join(METHODS)})"
            )
        if self.optim.consistency > 0 and self.method not in MULTI_TEMPLATE_METHODS:
            # One template: both views would be the same prompt and the term always 0.
            raise FlexpaftError(
                f"optim.consistency needs several training templates (method paft or "
                f"flexora+paft), not method {self.method}"
            )

    def check_format(self, fmt: AnswerFormat) -> None:
        """Refuse, before the model loads, losses that need scored answer options."""
        if fmt is AnswerFormat.GENERATION and self.optim.scores_options(self.method, fmt):
            key = "optim.consistency" if self.optim.consistency > 0 else "optim.loss=options"
            raise FlexpaftError(
                f"{key} scores the answer options; format generation has none to score "
                "(use label_words, letter or option_text)"
            )

    def check_held_out(self, n_examples: int) -> None:
        """Refuse, before the model loads, held-out sets that leave nothing to train on.

        Validation during training holds out ``validation.eval_examples`` first, then Flexora's
        search ``flexora.val_examples`` of the rest (trainer.py, search.py).
        """
        parts = []
        if self.validation.enabled:
            parts.append(("validation.eval_examples", self.validation.eval_examples))
        if self.method.startswith("flexora"):
            parts.append(("flexora.val_examples", self.flexora.val_examples))
        held = sum(n for _, n in parts)
        if parts and held >= n_examples:
            named = " + ".join(f"{k}={n}" for k, n in parts)
            raise FlexpaftError(
                f"{named} would hold out {held} of the {n_examples} training examples, leaving "
                "none to train on: lower it or train on more examples"
            )
