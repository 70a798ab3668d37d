"""``flexora``: the settings of Flexora's layer search and of the selection it makes."""

from __future__ import annotations

from dataclasses import dataclass

from flexpaft.errors import short_repr
from flexpaft.settings.schema import opt
from flexpaft.tasks.spec import AnswerFormat

BUDGET_UNITS = ("auto", "rows", "pass")
VAL_LOSSES = ("auto", "options", "full")
VAL_TEMPLATES = ("auto", "train", "heldout")
SEARCH_SCHEDULES = ("search", "stage2")
STAGE2_EXAMPLES = ("all", "train")
# The selection rules and the stage-2 rank rules (methods/flexora/select.py applies them); here so
# the config check needs no torch import.
SELECTION_RULES = ("validated", "positive", "gate", "topk", "fraction")
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
        "Auto length (search_steps = search_examples = 0): the search's share of one pass over "
        "its training split, the same number of outer steps on every machine. An outer step is "
        "one optimizer step of the inner loop (unroll = K: K of them), so 1 (a whole pass, the "
        "paper's length) is stage 2's optimizer steps per epoch on that split, "
        "floor(ceil(train_examples / (optim.batch_size x processes)) / optim.grad_accum), "
        "divided by K (rounded up) when unrolling; shares below 1 are rounded down (at least "
        "1 step). A whole "
        "pass (34 outer steps, no early stop) lifted flexora+paft by 6.4 points over half a "
        "pass on snips (docs/RESULTS.md); 0.1 with alpha_warmup=0 is the cheap setting.",
    )
    budget_unit: str = opt(
        "auto",
        "How the search's compute, recorded as compute_share in selection.json (its "
        "forward+backward work over stage 2's), is counted; it no longer changes the search's "
        "length (before 2026-12-07 it did, and a GPU searched half as long as a CPU): rows (a "
        "micro-batch is one unit however many row chunks it runs as: time follows rows, as on a "
        "CPU), pass (every forward+backward call is one unit: a pass costs the same for 2 rows "
        "as for 8, as on a GPU at LoRA batch sizes), auto (pass on an accelerator, rows on a "
        "CPU).",
    )
    stable_steps: int = opt(
        10,
        "Stop the search once the selection (for the positive and validated rules: alpha's sign "
        "pattern) has not changed for this many outer steps (0 = never stop early).",
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
        "How alpha's gradient is taken. 0 (default) = first-order alternating steps, as the "
        "paper's code runs them: one inner optimizer step of the LoRA weights with the gates "
        "held constant, then alpha's gradient of the validation loss with the LoRA weights held "
        "constant. K > 0 = K-step unrolled hypergradient: K differentiable inner steps (an "
        "AdamW surrogate whose second moment is held constant), alpha's gradient through them, "
        "then the K steps committed with the real optimizer (about 3x the work per inner step).",
    )
    selection: str = opt(
        "validated",
        "How the selected blocks are chosen from alpha. validated (default): blocks ranked by "
        "alpha, and the count decided on the validation batches: the top-k blocks for k = the "
        "positive and gate rules' counts, N/4, N/2, 3N/4 and N (all blocks) are each scored with "
        "the search's own LoRA, only the candidate blocks' LoRA on, and the smallest whose "
        "validation loss is within tolerance_se paired standard errors of the best (and of all "
        "N blocks) is kept; selection.json records every rung. positive (alpha > 0, the "
        "paper's), gate (gate > 1), topk (the k largest), fraction (the top ceil(fraction x N)).",
    )
    tolerance_se: float = opt(
        1.0,
        "validated rule: how many paired standard errors (of the per-example validation-loss "
        "difference) above the best rung, and above all N blocks, a smaller selection may "
        "validate and still be kept (1: the one-standard-error rule; 0: the best rung, smallest "
        "on ties).",
    )
    own_check: bool = opt(
        True,
        "validated rule: also score the rungs on the validation examples rendered under the "
        "user's own prompt (prompts.template, the one plain flexora trains on), and keep a "
        "smaller selection only where it is within tolerance_se paired standard errors of all N "
        "blocks there too. Unseen wordings alone can favour fewer blocks (less fitted to the "
        "one prompt) while the prompt the user deploys loses accuracy; the own prompt is never "
        "a wording alpha learns from.",
    )
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
        "all",
        "What stage 2 trains on: all (every training example, the search's validation examples "
        "included: they chose the blocks, a hyperparameter, as a held-out fold does, and the "
        "final LoRA learns from the same data as a LoRA it is compared with; when every block "
        "is selected, stage 2 is that LoRA) or train (only the search's training split, as the "
        "paper's code does; the default before 2026-12-07).",
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
        if self.unroll < 0 or self.val_batches < 1:
            raise ValueError("flexora.unroll must be >= 0 and flexora.val_batches >= 1")
        if not self.alpha_lr > 0:
            raise ValueError(f"flexora.alpha_lr must be positive, got {self.alpha_lr}")
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
        if not self.tolerance_se >= 0:  # NaN included
            raise ValueError(f"flexora.tolerance_se must be >= 0, got {self.tolerance_se}")
        if self.selection == "topk" and self.k < 1:
            raise ValueError(f"flexora.k must be at least 1 for the topk rule, got {self.k}")

    def resolved_val_loss(self, fmt: AnswerFormat) -> str:
        """``val_loss`` with auto decided for answer format ``fmt``."""
        if self.val_loss != "auto":
            return self.val_loss
        return "full" if fmt is AnswerFormat.GENERATION else "options"
