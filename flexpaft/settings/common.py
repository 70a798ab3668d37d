"""Settings shared by every command: which model, which task and which slice of its data."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from flexpaft.chat import CHOICES_HELP
from flexpaft.errors import FlexpaftError
from flexpaft.settings.schema import opt
from flexpaft.tasks import AnswerFormat, Example, TaskSpec, load_examples, load_task


@dataclass
class ModelSettings:
    name: str = opt(
        "embedded",
        "Base model: hub id, local directory, .gguf file, or 'embedded' (SmolLM2-135M-Instruct).",
        path=True,
    )
    dtype: str = opt("auto", "auto (bf16 on GPU, fp32 on CPU), float32, bfloat16 or float16.")
    trust_remote_code: bool = opt(
        False, "Allow model code from the hub to run (off unless you trust it)."
    )
    # 'none' by measurement (docs/RESULTS.md): on SmolLM2-135M-Instruct the chat template left
    # accuracy unchanged and made answers more template-sensitive.
    chat_template: str = opt("none", CHOICES_HELP)
    gguf_dtype: str = opt(
        "bfloat16",
        "A .gguf model is dequantized once into a cached checkpoint of this dtype: bfloat16 "
        "(half the disk) or float32.",
    )

    def load(self, device: Any = None) -> tuple[Any, Any]:
        """(model, tokenizer) as these settings describe them."""
        from flexpaft.models import load_model

        return load_model(self.name, self.dtype, device, self.trust_remote_code, self.gguf_dtype)


@dataclass
class DataSettings:
    task: str = opt("boolq", "Built-in task name, bigbench:<task>, or a task YAML file.", path=True)
    source: str = opt(
        "",
        "Data: local jsonl/json/csv/parquet file or hub dataset id ('' = the task's hub dataset).",
        path=True,
    )
    split: str = opt(
        "",
        "Dataset split for hub sources ('' = the task's train split for training, its "
        "validation/test split for evaluation).",
    )
    config_name: str = opt("", "Hub dataset configuration name ('' = the task's).")
    revision: str = opt("", "Hub dataset revision: branch, tag or commit ('' = latest).")
    allow_overlap: bool = opt(
        False,
        "Allow evaluating an adapter on examples it was trained on (same content hash) and "
        "training on a task's evaluation split (--allow-overlap).",
    )
    format: str = opt(
        "", "Answer format: letter, label_words, option_text, generation ('' = task default)."
    )
    limit: int = opt(0, "Use at most this many examples (0 = all).")
    skip: int = opt(
        0, "Skip this many examples first (after shuffling), e.g. to keep a test split apart."
    )
    balance_labels: bool = opt(
        False,
        "Keep equally many examples of every gold answer within the selected slice (after skip "
        "and limit; the rarest answer sets the count), so the majority label is worth no more "
        "than chance: BoolQ is 62% 'yes'.",
    )
    max_field_chars: int = opt(
        0,
        "Shorten every text field longer than this many characters, at a word boundary "
        "(0 = off; for quick experiments with long passages).",
    )
    max_length: int = opt(
        1024, "Maximum tokens per training sequence (the prompt is cut from the left)."
    )
    answer_eos: str | bool = opt(
        "auto",
        "Training: append EOS after the answer? auto = only in the generation format, where the "
        "model must learn to stop; scored formats never look past the answer, and an EOS target "
        "halves the weight of the answer token in the loss (true / false to force).",
    )

    def appends_eos(self, fmt: AnswerFormat) -> bool:
        choice = str(self.answer_eos).lower()
        if choice not in ("auto", "true", "false"):
            raise FlexpaftError(f"data.answer_eos must be auto, true or false, not {choice!r}")
        if choice == "auto":
            return fmt is AnswerFormat.GENERATION
        return choice == "true"

    def answer_format(self, task: TaskSpec) -> AnswerFormat:
        fmt = AnswerFormat.parse(self.format) if self.format else task.default_format
        task.check_format(fmt)
        return fmt

    def load(self, role: str = "eval") -> tuple[TaskSpec, AnswerFormat, list[Example]]:
        """The task, its answer format, and the selected examples.

        ``role`` picks the default hub split: the task's train split for ``"train"``, its
        evaluation split otherwise; training on the evaluation split is refused (splits.py).

        Examples are shuffled with a fixed data seed (not the training seed), so ``skip`` and
        ``limit`` carve the same disjoint slices in every run: train on ``limit=1000`` and
        evaluate on ``skip=1000`` without overlap.
        """
        task = load_task(self.task)
        fmt = self.answer_format(task)
        split = self.split or (task.hf_train_split if role == "train" else task.hf_split)
        if role == "train":
            from flexpaft.splits import check_training_split

            check_training_split(task, self.source, split, self.allow_overlap)
        examples = load_examples(
            task,
            self.source or None,
            split,
            shuffle=True,
            seed=0,
            config_name=self.config_name or None,
            revision=self.revision or None,
        )
        if self.skip:
            examples = examples[self.skip :]
        if self.limit:
            examples = examples[: self.limit]
        if self.balance_labels:
            from flexpaft.data_checks import check_one_label

            check_one_label(
                examples, f"{self.source or task.name} (skip={self.skip}, limit={self.limit})"
            )
            # Within the slice, so a balanced training slice never reaches into the test slice.
            examples = balance_by_gold(examples)
        if self.max_field_chars:
            for ex in examples:
                ex.fields = {k: shorten(v, self.max_field_chars) for k, v in ex.fields.items()}
        if not examples:
            raise FlexpaftError(
                f"no examples left in {self.source or task.name} after skip={self.skip}"
            )
        return task, fmt, examples


def balanced_window(data: DataSettings, skip: int, n: int) -> int:
    """Raw examples after the first ``skip`` that hold ``n`` label-balanced test examples.

    The shortest window in which every gold answer occurs ``ceil(n / answers)`` times, so
    ``balance_labels`` inside it keeps exactly that many of each (the first ones, in data order)
    and the test slice never reaches back into training.
    """
    rest_cfg = replace(data, skip=skip, limit=0, balance_labels=False)
    _, _, rest = rest_cfg.load()
    golds = sorted({e.gold for e in rest})
    need = -(-n // len(golds))  # ceil: per answer
    counts = dict.fromkeys(golds, 0)
    for i, ex in enumerate(rest, 1):
        counts[ex.gold] += 1
        if min(counts.values()) >= need:
            return i
    raise FlexpaftError(
        f"only {min(counts.values())} examples of the rarest answer after the first {skip}: "
        f"too few for {n} label-balanced test examples"
    )


def balance_by_gold(examples: list[Example]) -> list[Example]:
    """The examples with every gold answer equally often, original order kept.

    Each class keeps its first ``m`` examples (``m`` = the rarest class's count), and the classes
    are interleaved in the original order.
    """
    by_gold: dict[int, list[Example]] = {}
    for ex in examples:
        by_gold.setdefault(ex.gold, []).append(ex)
    if len(by_gold) < 2:
        return examples
    m = min(len(v) for v in by_gold.values())
    # Round-robin over classes so any prefix is balanced too.
    return [by_gold[g][i] for i in range(m) for g in sorted(by_gold)]


def shorten(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters at a word boundary, marked with '...'."""
    if len(text) <= limit:
        return text
    keep = max(0, limit - 3)
    cut = text[:keep] if text[keep : keep + 1] == " " else text[:keep].rsplit(" ", 1)[0]
    return cut + "..."
