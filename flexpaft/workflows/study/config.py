"""What a study is made of: ``StudyConfig`` (one YAML file) and its ``StudyPrompts`` section.

Every value is checked when the config is built, before anything is loaded: the methods (the
rows of ``rows.STUDY_METHODS``), the variants (a training method under its own settings), the
counts and the split of the candidate templates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from flexpaft.errors import FlexpaftError, short_repr
from flexpaft.settings.common import DataSettings, ModelSettings
from flexpaft.settings.schema import opt, section
from flexpaft.workflows.study.rows import STUDY_METHODS, VARIANT_METHODS, row_of


@dataclass
class StudyPrompts:
    n: int = opt(450, "Offline candidate templates to generate (the PAFT paper has ~450).")
    test: int = opt(50, "Unseen test templates split off the candidates (never trained on).")
    adversarial: int = opt(
        1, "Adversarial variants per test template (typos, casing, markers; 0 = none)."
    )
    seed: int = opt(0, "Seed of generation, split and adversarial variants.")
    candidates: str = opt(
        "",
        "Candidate templates file to split instead of generating (e.g. the PAFT paper's prompts "
        "in ../shared/prompts/paft/): `test` of them become the unseen test set.",
        path=True,
    )
    train_set: str = opt(
        "",
        "Training templates file to use instead of the generated training split (e.g. the "
        "paper's prompts in ../shared/prompts/paft/); the generated test split stays unseen.",
        path=True,
    )
    extra_test_sets: dict[str, str] = opt(
        {},
        "More unseen test sets, NAME: template file (e.g. templates written by other people).",
        path=True,
    )


@dataclass
class StudyConfig:
    output_dir: str = opt("runs/study", "Where every step of the study writes.", path=True)
    report_dir: str = opt(
        "",
        "Where the reports go ('' = OUTPUT_DIR/report): two study configs that share one "
        "output_dir (its prompts, and every run they both define identically) keep their own "
        "reports.",
        path=True,
    )
    methods: list[str] = opt(
        ["base", "lora", "topaccuracy", "paft"],
        f"Methods to compare: {', '.join(STUDY_METHODS)}. random, lora_drop, grad_probe, "
        "first_last, top_half and bottom_half are LoRA on the blocks a baseline picks (random, "
        "lora_drop, grad_probe and first_last: as many as flexora selected for the same seed, so "
        "they need flexora); they are judged against flexora.",
    )
    seeds: list[int] = opt([0], "Training seeds; each method is trained once per seed.")
    train_examples: int = opt(2000, "Training examples (the first ones of the shuffled data).")
    test_examples: int = opt(300, "Held-out test examples, taken after the training ones.")
    balance_test: bool = opt(
        True,
        "Test on equally many examples of each gold answer, so that the majority label scores "
        "chance and an accuracy above it cannot come from the label prior.",
    )
    balance_train: bool = opt(
        False,
        "Train on equally many examples of each gold answer too (the training slice is "
        "downsampled to its rarest answer), so that the label prior earns nothing in training.",
    )
    train: dict[str, Any] = opt(
        {},
        "Training settings for every method, as flexpaft train keys (optim.lr: 5e-4, ...).",
    )
    eval: dict[str, Any] = opt({}, "Evaluation settings, as flexpaft eval keys (batch_size: 32).")
    random_draws: int = opt(
        3,
        "random: block selections drawn per seed (distinct while possible), each its own run "
        "random-dD-sS and its own row random-dD in the reports.",
    )
    lora_drop_steps: int = opt(
        0,
        "lora_drop: optimizer steps of the short LoRA run on every block that ranks the blocks "
        "(0 = as many as the flexora search of the same seed took: the same cost).",
    )
    lora_drop_batches: int = opt(
        8, "lora_drop: training batches over which each block's LoRA output norm is averaged."
    )
    grad_probe_batches: int = opt(
        8, "grad_probe: training batches over which each block's LoRA gradient norm is averaged."
    )
    own_template: str = opt(
        "",
        "The user's own prompt ('' = the task's template): the single-prompt methods train on "
        "it (prompts.template; prompts.own_rate draws it under paft), and every model is also "
        "scored under it on the unseen set, for the reports' own-prompt tables.",
    )
    variants: dict[str, dict[str, Any]] = opt(
        {},
        "More rows, each a method under its own training settings: NAME: {method: paft, train: "
        "{prompts.own_rate: 0.25}}. NAME is the row and its run directories (NAME-sSEED); "
        f"method is one of {', '.join(VARIANT_METHODS)}; train is applied after the study's "
        "`train`, for this row only (e.g. a setting that only one method accepts).",
    )
    bootstrap: int = opt(2000, "Bootstrap replicates for the reports' 95% intervals.")
    thresholds: list[float] = opt([0.6, 0.7], "Top@t thresholds shown in the reports.")
    model: ModelSettings = section(ModelSettings, "Base model.")
    data: DataSettings = section(DataSettings, "Task and data (limit/skip are set by the study).")
    prompts: StudyPrompts = section(StudyPrompts, "Candidate templates and unseen test sets.")

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if m not in STUDY_METHODS]
        if bad:
            raise FlexpaftError(
                f"unknown study method {bad[0]!r} (choose from {', '.join(STUDY_METHODS)})"
            )
        if not self.methods and not self.variants:
            raise FlexpaftError("a study needs at least one method or variant")
        if not self.seeds:
            raise FlexpaftError("a study needs at least one seed")
        if self.train_examples < 1 or self.test_examples < 1:
            raise FlexpaftError("train_examples and test_examples must be at least 1")
        if (
            self.random_draws < 1
            or self.lora_drop_batches < 1
            or self.grad_probe_batches < 1
            or self.lora_drop_steps < 0
        ):
            raise FlexpaftError(
                "random_draws and lora_drop_batches must be at least 1, lora_drop_steps >= 0"
            )
        for name, v in self.variants.items():
            _check_variant(name, v)
        if self.prompts.adversarial < 0:
            raise FlexpaftError(
                f"prompts.adversarial must be 0 (none) or more, not {self.prompts.adversarial}"
            )
        if not 1 <= self.prompts.test < self.prompts.n:
            raise FlexpaftError(
                f"prompts.test must be between 1 and prompts.n - 1 ({self.prompts.n - 1}), "
                f"not {self.prompts.test}"
            )


_VARIANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")


def _check_variant(name: str, v: Any) -> None:
    """A variant row: a name that is neither a method nor a run label, a method, a train mapping."""
    if not isinstance(name, str) or not _VARIANT_NAME.fullmatch(name):
        raise FlexpaftError(
            f"variant name {short_repr(name)}: use letters, digits and _ . + - (64 at most)"
        )
    if name in STUDY_METHODS or row_of(name) is not None:
        raise FlexpaftError(f"variant name {name!r} is taken by a study method or run label")
    if not isinstance(v, dict):
        raise FlexpaftError(f"variant {name}: expected a mapping with method and train")
    extra = set(v) - {"method", "train"}
    if extra:
        raise FlexpaftError(f"variant {name}: unknown key {sorted(extra)[0]!r} (method, train)")
    if v.get("method") not in VARIANT_METHODS:
        raise FlexpaftError(
            f"variant {name}: method {short_repr(v.get('method'))} is not one of "
            f"{', '.join(VARIANT_METHODS)}"
        )
    if not isinstance(v.get("train", {}), dict):
        raise FlexpaftError(f"variant {name}: train must be a mapping of flexpaft train keys")
