"""The loss over a task's answer options, as a mixin for a transformers or TRL trainer."""

from __future__ import annotations

from typing import Any

import torch

from flexpaft.errors import FlexpaftError
from flexpaft.training.options import is_options_batch, option_scores, options_loss


def _no_options() -> FlexpaftError:
    return FlexpaftError(
        "OptionsLossMixin trains on answer options, which this data lacks: build it with "
        "PaftData(..., loss='options') and pass data_collator=paft.collator"
    )


def _first_row(data: Any) -> Any:
    try:
        return data[0] if len(data) else None
    except Exception:  # an IterableDataset, or a dataset that fails later with its own error
        return None


class OptionsLossMixin:
    """Train on flexpaft's options loss: the cross-entropy of the ranking of the task's answer
    options (by summed log-probability, as flexpaft's evaluator ranks them) against the gold one.

    Put it first among the bases; the data must come from ``PaftData(..., loss="options")``::

        from flexpaft.hf import OptionsLossMixin
        from trl import SFTTrainer

        class PaftSFTTrainer(OptionsLossMixin, SFTTrainer):
            pass

    Works the same with ``transformers.Trainer``. Why a mixin rather than ``compute_loss_func``:
    the options batch is not "model outputs + labels" (the loss needs each option's answer
    tokens and the gold index), and TRL deprecates ``compute_loss_func`` (an extra forward pass).

    The loss is a mean over the micro-batch's examples, so the Trainer divides it by the number
    of accumulation steps (``loss_is_scaled_for_ga = False``); DDP's gradient average then makes
    it the mean over the global batch.
    """

    loss_is_scaled_for_ga = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        import transformers

        if not hasattr(transformers.Trainer, "loss_is_scaled_for_ga"):
            # transformers < 5.19 reads only this flag: False makes it divide by the steps.
            self.model_accepts_loss_kwargs = False
        targs = self.args  # type: ignore[attr-defined]
        if getattr(targs, "loss_type", "nll") not in ("nll", "chunked_nll"):
            raise FlexpaftError(
                f"loss_type={targs.loss_type!r} is a token-level loss; the options loss replaces "
                "it: leave loss_type at its default"
            )
        if getattr(targs, "label_smoothing_factor", 0) > 0:
            raise FlexpaftError(
                "label_smoothing_factor does not apply to the options loss: set it to 0"
            )
        row = _first_row(getattr(self, "train_dataset", None))
        if isinstance(row, dict) and not is_options_batch(row):
            raise _no_options()  # here, before training, rather than at the first step

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """Mean options cross-entropy of the batch; ``num_items_in_batch`` (a token count) does
        not apply to a per-example loss."""
        if not is_options_batch(inputs):
            raise _no_options()
        if not return_outputs:
            return options_loss(model, inputs)
        # Evaluation asks for outputs: the option scores, so compute_metrics can rank them.
        from transformers.modeling_outputs import CausalLMOutput

        scores = option_scores(model, inputs)
        loss = torch.nn.functional.cross_entropy(scores, inputs["gold"])
        return loss, CausalLMOutput(loss=loss, logits=scores)
