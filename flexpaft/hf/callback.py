"""The trainer callback that makes PAFT's per-epoch redraw happen, and refuses the settings that
would silently undo it."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from flexpaft.errors import FlexpaftError
from flexpaft.packing import attention_implementation
from flexpaft.training.compute import attention_without_cudnn
from flexpaft.training.options import is_options_batch, packs_options

if TYPE_CHECKING:
    from flexpaft.hf.data import PaftData


class PaftEpochCallback(TrainerCallback):
    """Sets the PAFT dataset's epoch at every epoch's start, and checks the trainer's settings.

    ``on_epoch_begin`` runs before the Trainer creates the epoch's DataLoader iterator, so the
    rows of epoch ``e`` (rendered in this process, or in workers that receive the dataset when
    the iterator starts) use epoch ``e``'s draw. A resumed run restarts at the checkpoint's epoch
    and gets that epoch's draw back.

    During training it also keeps PyTorch's cuDNN attention kernel off, as ``flexpaft train``
    does (train/compute.py): its backward returns NaN gradients on left-padded batches on
    H100/H200, and every PAFT batch is left-padded.
    """

    def __init__(self, paft: PaftData) -> None:
        self.paft = paft
        self._hook: Any = None
        self._attention: attention_without_cudnn | None = None

    def on_init_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # At the end of the trainer's __init__: the settings are known, nothing has run yet.
        if getattr(args, "remove_unused_columns", False):
            raise FlexpaftError(
                "PAFT needs remove_unused_columns=False in the training arguments (the Trainer "
                "would drop the dataset's index column, from which each row is rendered): add "
                "**paft.training_args_kwargs() (TrainingArguments) or **paft.sft_config_kwargs() "
                "(SFTConfig)"
            )
        if hasattr(args, "dataset_kwargs") and not _skips_preparation(args.dataset_kwargs):
            # TRL 1.16 refuses the dataset itself before we get here; older TRL would tokenize
            # it once, fixing epoch 0's templates for the whole run.
            raise FlexpaftError(
                "PAFT needs SFTConfig(dataset_kwargs={'skip_prepare_dataset': True}) (TRL's "
                "one-time tokenization would fix one template per example for the whole run): "
                "add **paft.sft_config_kwargs()"
            )
        if getattr(args, "dataloader_persistent_workers", False) and (
            getattr(args, "dataloader_num_workers", 0) > 0
        ):
            raise FlexpaftError(
                "PAFT needs dataloader_persistent_workers=False: persistent workers keep the "
                "dataset copy of the first epoch, so every epoch would reuse its templates"
            )

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._release()  # what a run that raised left behind (no callback sees an exception)
        loader = kwargs.get("train_dataloader")
        if self.paft.loss == "options":
            collate = getattr(loader, "collate_fn", None)
            if loader is not None and collate is not self.paft.collator:
                raise FlexpaftError(
                    "loss='options' needs flexpaft's collator (it builds the answer-options "
                    "batch): pass data_collator=paft.collator, or **paft.trainer_kwargs()"
                )
            model = kwargs.get("model")
            if model is not None:
                # Multi-token options packed after one shared prompt where the model's attention
                # takes a 4D mask; set before the first batch is drawn (and workers start).
                self.paft.collator.packed = packs_options(attention_implementation(model))
                self._hook = model.register_forward_pre_hook(
                    self._refuse_options_batch, with_kwargs=True
                )
        self._attention = attention_without_cudnn()
        self._attention.__enter__()

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # state.epoch is epoch + steps done / steps per epoch, exactly a whole number at an
        # epoch's start (steps / steps == 1.0); on resume, the checkpoint's value, whose floor
        # is the epoch being resumed.
        self.paft.set_epoch(math.floor(state.epoch or 0))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._release()

    def _release(self) -> None:
        """Remove the hook and give SDPA its kernels back. A run that dies of an error no
        callback sees keeps cuDNN attention off until the next train() or process end: the
        safe side, it only costs speed."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self._attention is not None:
            self._attention.__exit__(None, None, None)
            self._attention = None

    def _refuse_options_batch(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        # The options loss calls the model with the prompt tensors only; a whole options batch
        # reaching forward() means the trainer's own loss ran on it, which would train on
        # nothing (the prompts' labels are all -100) without an error.
        if is_options_batch(kwargs):
            self._release()
            raise FlexpaftError(
                "loss='options' needs the options loss in the trainer: "
                "class MyTrainer(OptionsLossMixin, SFTTrainer) (or Trainer), "
                "from flexpaft.hf import OptionsLossMixin"
            )


def _skips_preparation(dataset_kwargs: Any) -> bool:
    if isinstance(dataset_kwargs, str):  # SFTConfig accepts a JSON string from the command line
        import json

        try:
            dataset_kwargs = json.loads(dataset_kwargs)
        except ValueError:
            return False
    return isinstance(dataset_kwargs, dict) and bool(dataset_kwargs.get("skip_prepare_dataset"))
