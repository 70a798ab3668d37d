"""Training configuration: one dataclass tree, loadable from YAML and overridable with --set."""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from typing import ClassVar

from flexpaft.errors import FlexpaftError, short_repr
from flexpaft.io import sha256_json
from flexpaft.settings.common import DataSettings, ModelSettings
from flexpaft.settings.compute import ComputeSettings
from flexpaft.settings.flexora import FlexoraSettings
from flexpaft.settings.loading import Loadable
from flexpaft.settings.methods import METHODS, Method
from flexpaft.settings.methods import method as method_row
from flexpaft.settings.schema import opt, section
from flexpaft.tasks.spec import AnswerFormat

# TrainingArguments.optim names that need no extra package, built as the HF Trainer builds them
# with its default arguments.
OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "adafactor", "sgd", "adagrad", "rmsprop")
# transformers.SchedulerType names that need no scheduler-specific arguments.
SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
)


REPORT_TO_HELP = (
    "Experiment trackers, through accelerate: none, tensorboard, wandb, trackio, a comma list, "
    "or all (every one installed). history.jsonl and loss.png are written in any case."
)


# Which validation metric is better when higher ("max") or lower ("min").
VALIDATION_METRICS = {"accuracy": "max", "min_accuracy": "max", "loss": "min"}


@dataclass
class ValidationSettings:
    eval_every: int = opt(
        0,
        "Evaluate on the validation split every N optimizer steps and at the last step "
        "(0 = no evaluation during training).",
    )
    eval_examples: int = opt(
        64, "Validation examples held out from the training data (never trained on)."
    )
    eval_templates: str = opt(
        "",
        "Held-out templates to evaluate under (prompt set file; '' = the training templates).",
        path=True,
    )
    max_eval_templates: int = opt(4, "Use at most the first N of those templates.")
    metric: str = opt(
        "accuracy",
        "Which evaluation's adapter is saved: accuracy (mean over templates), min_accuracy "
        "(the worst template) or loss (answer cross-entropy, lower is better).",
    )
    early_stopping_patience: int = opt(
        0, "Stop after this many evaluations without improvement of metric (0 = never stop)."
    )
    batch_size: int = opt(16, "Sequences per forward pass when evaluating.")

    def __post_init__(self) -> None:
        if self.metric not in VALIDATION_METRICS:
            raise ValueError(
                f"metric must be one of {', '.join(VALIDATION_METRICS)}, got {self.metric!r}"
            )
        if self.eval_every < 0 or self.early_stopping_patience < 0:
            raise ValueError("eval_every and early_stopping_patience must be >= 0")
        if self.eval_every and self.eval_examples < 1:
            raise ValueError("eval_examples must be at least 1 when eval_every is set")
        if self.max_eval_templates < 1 or self.batch_size < 1:
            raise ValueError("max_eval_templates and batch_size must be at least 1")

    @property
    def enabled(self) -> bool:
        return self.eval_every > 0


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
        if self.layers_to_transform is not None:
            if not self.layers_to_transform:
                # PEFT reads an empty list as "every block": a silent no-op selection.
                raise ValueError(
                    "lora.layers_to_transform is empty, which PEFT reads as every block: list "
                    "block indices, or leave it null for every block"
                )
            if min(self.layers_to_transform) < 0:
                raise ValueError(
                    f"lora.layers_to_transform: block {min(self.layers_to_transform)} is "
                    "negative; blocks count from 0"
                )


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

    def resolved_loss(self, method: Method | str, fmt: AnswerFormat) -> str:
        """``loss`` with auto decided for ``method``'s row (or its name) and answer format
        ``fmt``."""
        if self.loss != "auto":
            return self.loss
        row = method if isinstance(method, Method) else method_row(method)
        return row.auto_loss if fmt is not AnswerFormat.GENERATION else "answer"

    def scores_options(self, method: Method | str, fmt: AnswerFormat) -> bool:
        """Training batches hold every option's answer (the options loss or consistency)."""
        return self.resolved_loss(method, fmt) == "options" or self.consistency > 0


TRAIN_LOSSES = ("auto", "answer", "options")


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
class TrainConfig(Loadable):
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
        try:
            spec = method_row(self.method)
        except ValueError as e:
            raise FlexpaftError(str(e)) from None
        if self.optim.consistency > 0 and not spec.draws_templates:
            # One template: both views would be the same prompt and the term always 0.
            drawing = " or ".join(m.name for m in METHODS.values() if m.draws_templates)
            raise FlexpaftError(
                f"optim.consistency needs several training templates (method {drawing}), "
                f"not method {self.method}"
            )

    @property
    def spec(self) -> Method:
        """This run's method as a row of the methods table: its template and layer policies."""
        return method_row(self.method)

    def check_format(self, fmt: AnswerFormat) -> None:
        """Refuse, before the model loads, losses that need scored answer options."""
        if fmt is AnswerFormat.GENERATION and self.optim.scores_options(self.spec, fmt):
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
        if self.spec.searches_layers:
            parts.append(("flexora.val_examples", self.flexora.val_examples))
        held = sum(n for _, n in parts)
        if parts and held >= n_examples:
            named = " + ".join(f"{k}={n}" for k, n in parts)
            raise FlexpaftError(
                f"{named} would hold out {held} of the {n_examples} training examples, leaving "
                "none to train on: lower it or train on more examples"
            )


def config_hash(cfg: TrainConfig) -> str:
    """Hash of everything that changes the trained weights (not logging or output settings)."""
    return config_dict_hash(asdict(cfg))


def config_dict_hash(d: dict) -> str:
    """``config_hash`` of a TrainConfig as a dict (``asdict``); ``d`` is not changed."""
    d = copy.deepcopy(d)
    for k in ("output_dir", "resume", "checkpoint_every", "log_every", "report_to"):
        d.pop(k)
    for k in ("push_to_hub", "hub_model_id", "hub_private"):
        d.pop(k)
    d["optim"].pop("num_workers")
    # Recomputing activations or compiling changes speed and memory, not the arithmetic.
    for k in ("gradient_checkpointing", "torch_compile", "torch_compile_backend"):
        d.get("compute", {}).pop(k, None)
    return sha256_json(d)[:16]
