"""PAFT training data for a transformers ``Trainer`` or TRL ``SFTTrainer`` the user already has.

``PaftData`` checks everything up front and builds a ``datasets.Dataset`` whose rows are rendered
and tokenized when they are read, under a template drawn per example *and per epoch* exactly as
``flexpaft train`` draws it (``train/sampling.example_templates``): the same (example, template)
pairs for the same seed and epoch, with the user's own template at ``own_rate``. The Trainer's
sampler orders the rows; the epoch reaches the rows through ``PaftEpochCallback``.

Why a ``datasets.Dataset`` with a transform rather than a torch ``Dataset``: TRL's ``SFTTrainer``
accepts only ``datasets`` objects, and a transform is the one way to have a row's content change
between epochs without re-materializing the data (a ``map`` would bake one draw in).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from flexpaft.chat import ChatFormat, resolve_chat
from flexpaft.errors import FlexpaftError
from flexpaft.hf import inputs
from flexpaft.prompts import PromptSet, Template
from flexpaft.prompts.task_templates import own_index
from flexpaft.render import Rendered, render
from flexpaft.tasks import AnswerFormat, Example, TaskSpec, load_task
from flexpaft.training.sampling import example_templates

if TYPE_CHECKING:
    import datasets

    from flexpaft.hf.callback import PaftEpochCallback

log = logging.getLogger(__name__)

# The one stored column: the row's example index. Everything else is made on access.
INDEX_COLUMN = "paft_example"


class PaftTransform:
    """The dataset's transform: a batch of example indices -> rows rendered and tokenized under
    this epoch's draw (the layout the ``loss`` needs).

    One object is shared by every copy of the dataset in this process (``__deepcopy__`` returns
    it), so ``datasets`` operations that copy the dataset (``select``, ``with_format``) still see
    the epoch the callback sets. DataLoader workers get a pickled copy each time an epoch's
    iterator starts, which carries the epoch set just before; persistent workers would keep their
    first copy, hence ``PaftEpochCallback`` refuses them.
    """

    def __init__(self, items: Any, n_templates: int, seed: int, own: int | None, own_rate: float):
        self.items = items  # RenderedDataset / OptionsDataset: (example, template) -> row
        self.n_examples = len(items)
        self.n_templates = n_templates
        self.seed, self.own, self.own_rate = seed, own, own_rate
        self.epoch = 0
        self.epoch_was_set = False
        self._served = 0  # rows made since the epoch was last set (see _warn_if_not_reset)
        self._warned = False
        self._draw: tuple[int, np.ndarray] | None = None

    def __deepcopy__(self, memo: dict) -> PaftTransform:
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.epoch_was_set, self._served = int(epoch), True, 0

    def templates_of(self, epoch: int) -> np.ndarray:
        """Template index of every example in ``epoch`` (cached for the current epoch)."""
        if self._draw is None or self._draw[0] != epoch:
            drawn = example_templates(
                self.n_examples, self.n_templates, epoch, self.seed, self.own, self.own_rate
            )
            self._draw = (epoch, drawn)
        return self._draw[1]

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        if INDEX_COLUMN not in batch:
            raise FlexpaftError(
                f"the PAFT dataset lost its {INDEX_COLUMN!r} column (got {sorted(batch)}): the "
                "trainer removed it; set remove_unused_columns=False in the training arguments"
            )
        indices = batch[INDEX_COLUMN]
        drawn = self.templates_of(self.epoch)
        rows = [self.items[(int(i), int(drawn[int(i)]))] for i in indices]
        self._served += len(rows)
        self._warn_if_not_reset()
        return {key: [row[key] for row in rows] for key in rows[0]} if rows else {}

    def _warn_if_not_reset(self) -> None:
        # Without the callback every epoch reuses epoch 0's draw: the run silently becomes
        # "one fixed random template per example". Reading well past one epoch in one process
        # without a set_epoch is the symptom we can see (workers each see a part, so this is a
        # safety net for the default num_workers=0, not a guarantee).
        if self._warned or self.epoch_was_set or self._served <= self.n_examples + 1:
            return
        self._warned = True
        log.warning(
            "the PAFT dataset was read past one epoch but nothing set its epoch, so every epoch "
            "reuses the first epoch's templates: pass callbacks=[paft.callback] to the trainer "
            "(or **paft.trainer_kwargs())"
        )


class PaftData:
    """PAFT (a template drawn per example and per epoch) for a transformers/TRL training script.

    Example, with TRL (``loss="options"`` additionally needs ``OptionsLossMixin``)::

        from flexpaft.hf import PaftData
        from trl import SFTConfig, SFTTrainer

        paft = PaftData("snips", rows, "prompts.jsonl", tokenizer)
        args = SFTConfig("out", **paft.sft_config_kwargs())
        trainer = SFTTrainer(model, args=args, processing_class=tokenizer,
                             peft_config=lora_config, **paft.trainer_kwargs())
        trainer.train()

    With ``transformers.Trainer``: ``TrainingArguments("out", **paft.training_args_kwargs())``
    and the same ``**paft.trainer_kwargs()``.

    Args:
        task: a built-in task name (``"snips"``, ``"boolq"``, ``"bigbench:<name>"``), a task
            YAML file (docs/TASKS.md), or a ``TaskSpec``.
        examples: the training examples: ``Example`` objects, or records in the task's schema
            (dicts, or a ``datasets.Dataset``), each checked and normalized by the task.
        templates: the PAFT template set: a prompt-set file (jsonl/yaml/txt/csv/xlsx; templates
            invalid for the task are skipped with a warning, as ``flexpaft train`` does) or a
            list of template texts / ``Template`` objects (every one must be valid).
        tokenizer: the model's tokenizer.
        own_template: the user's own prompt, drawn at ``own_rate`` and added to the set if
            absent (default: the task's template for the answer format).
        own_rate: share of draws that use ``own_template``, in [0, 1); the other draws are
            uniform over the rest. 0.5 is ``flexpaft train``'s PAFT default.
        seed: the draw's seed; with the same examples and templates, epoch ``e`` trains on the
            same (example, template) pairs as ``flexpaft train`` with this seed.
        max_length: tokens per sequence; the prompt is cut from the left, never the answer.
        loss: ``"answer"`` (rows of ``input_ids`` + ``labels``, prompt masked with -100: the
            usual SFT loss, any trainer) or ``"options"`` (cross-entropy over the task's answer
            options, as the evaluator ranks them; needs ``OptionsLossMixin`` on the trainer).
        answer_format: ``letter``, ``label_words``, ``option_text`` or ``generation`` (default:
            the task's).
        chat_template: ``"none"`` (raw prompt), ``"auto"`` (the tokenizer's chat template when
            it has one) or a Jinja file; use the same setting when evaluating.
        append_eos: append EOS after the answer (default: only in the generation format).
        pad_to_multiple_of: batch padding (default: 8 on a GPU, 1 on a CPU).
    """

    def __init__(
        self,
        task: str | Path | TaskSpec,
        examples: Iterable[Example] | Iterable[Mapping[str, Any]],
        templates: str | Path | Sequence[str | Template] | PromptSet,
        tokenizer: Any,
        *,
        own_template: str | Template | None = None,
        own_rate: float = 0.5,
        seed: int = 0,
        max_length: int = 1024,
        loss: str = "answer",
        answer_format: str | AnswerFormat | None = None,
        chat_template: str = "none",
        append_eos: bool | None = None,
        pad_to_multiple_of: int | None = None,
    ) -> None:
        self.task = task if isinstance(task, TaskSpec) else load_task(str(task))
        self.answer_format = inputs.checked_format(self.task, answer_format)
        fmt = self.answer_format
        self.loss = inputs.check_loss(loss, fmt)
        self.own_rate = inputs.check_rate(own_rate)
        self.seed = inputs.check_int("seed", seed, 0)
        self.max_length = inputs.check_int("max_length", max_length, 2)
        self.pad_id = inputs.pad_token_id(tokenizer)
        self.chat: ChatFormat | None = resolve_chat(chat_template, tokenizer)
        self.examples = inputs.checked_examples(self.task, examples)
        self.templates = inputs.checked_templates(self.task, fmt, templates)
        self.own_template: Template | None = None
        self.own_index: int | None = None
        if own_template is not None or self.own_rate > 0:  # checked even where not drawn
            self.own_template = inputs.checked_own_template(self.task, fmt, own_template)
        if self.own_template is not None and self.own_rate > 0:
            self.own_index = own_index(self.own_template, self.templates)
            if self.own_index is None:
                # As flexpaft train: the own prompt is drawn at own_rate, so it joins the set.
                self.templates.append(self.own_template)
                self.own_index = len(self.templates) - 1
        self.append_eos = fmt is AnswerFormat.GENERATION if append_eos is None else append_eos
        self.tokenizer = tokenizer
        self._items = inputs.rendered_items(
            self.loss,
            self.task,
            self.examples,
            self.templates,
            fmt,
            tokenizer,
            self.max_length,
            self.append_eos,
            self.chat,
        )
        inputs.check_renders(self._items, len(self.templates))
        self._transform = PaftTransform(
            self._items,
            len(self.templates),
            self.seed,
            self.own_index,
            self.own_rate,
        )
        self.dataset = _dataset(len(self.examples), self._transform)
        self.collator = _collator(self.loss, self.pad_id, pad_to_multiple_of)
        from flexpaft.hf.callback import PaftEpochCallback

        self.callback: PaftEpochCallback = PaftEpochCallback(self)

    # ---- what a trainer needs ------------------------------------------------------------
    def trainer_kwargs(self) -> dict[str, Any]:
        """``train_dataset``, ``data_collator`` and ``callbacks`` for ``Trainer``/``SFTTrainer``.

        Add your own callbacks after it: ``callbacks=[paft.callback, *mine]``.
        """
        return {
            "train_dataset": self.dataset,
            "data_collator": self.collator,
            "callbacks": [self.callback],
        }

    def training_args_kwargs(self) -> dict[str, Any]:
        """Settings ``transformers.TrainingArguments`` needs: keep the dataset's index column
        (the Trainer would drop it as "not a model input" and the rows could not be made)."""
        return {"remove_unused_columns": False}

    def sft_config_kwargs(self) -> dict[str, Any]:
        """Settings TRL's ``SFTConfig`` needs: also skip TRL's one-time tokenization, which
        would fix one template per example for the whole run (PAFT redraws every epoch)."""
        return {**self.training_args_kwargs(), "dataset_kwargs": {"skip_prepare_dataset": True}}

    # ---- inspection ----------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Render rows under ``epoch``'s draw (the callback calls this at each epoch's start)."""
        self._transform.set_epoch(inputs.check_int("epoch", epoch, 0))

    @property
    def epoch(self) -> int:
        return self._transform.epoch

    def template_indices(self, epoch: int) -> np.ndarray:
        """Index into ``templates`` of every example's template in ``epoch``."""
        return self._transform.templates_of(inputs.check_int("epoch", epoch, 0)).copy()

    def template_of(self, example: int, epoch: int) -> Template:
        """The template ``examples[example]`` is rendered with in ``epoch``."""
        return self.templates[int(self.template_indices(epoch)[example])]

    def rendered(self, example: int, epoch: int) -> Rendered:
        """``examples[example]`` as text under its ``epoch`` template (prompt and answers)."""
        return render(
            self.task,
            self.template_of(example, epoch),
            self.examples[example],
            self.answer_format,
            self.chat,
        )

    def __len__(self) -> int:
        return len(self.examples)

    def __repr__(self) -> str:
        own = (
            f"own template {self.own_template.id} at {self.own_rate:g}"
            if self.own_template is not None and self.own_index is not None
            else "no own-template share"
        )
        return (
            f"PaftData(task={self.task.name}, format={self.answer_format.value}, "
            f"examples={len(self.examples)}, templates={len(self.templates)}, {own}, "
            f"loss={self.loss}, seed={self.seed}, epoch={self.epoch})"
        )


# ---- checks: every one raises a one-line FlexpaftError naming the argument --------------------
def _dataset(n: int, transform: PaftTransform) -> datasets.Dataset:
    import datasets

    ds = datasets.Dataset.from_dict({INDEX_COLUMN: list(range(n))})
    ds.set_transform(transform)
    return ds


def _collator(loss: str, pad_id: int, multiple: int | None) -> Any:
    if multiple is None:
        import torch

        # Multiples of 8 help GPU tensor cores; on a CPU they are only extra padding.
        multiple = 8 if torch.cuda.is_available() else 1
    multiple = inputs.check_int("pad_to_multiple_of", multiple, 1)
    if loss == "options":
        from flexpaft.training.options import OptionsCollator

        return OptionsCollator(pad_id, multiple)
    from flexpaft.training.data import PadCollator

    return PadCollator(pad_id, multiple)
