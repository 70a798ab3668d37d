"""PAFT inside your own transformers ``Trainer`` or TRL ``SFTTrainer`` script.

::

    from flexpaft.hf import PaftData

    paft = PaftData("snips", rows, "prompts.jsonl", tokenizer)  # checks everything up front
    args = SFTConfig("out", **paft.sft_config_kwargs())  # Trainer: training_args_kwargs()
    trainer = SFTTrainer(model, args=args, processing_class=tokenizer, **paft.trainer_kwargs())
    trainer.train()

``loss="options"`` (the loss ``flexpaft train`` uses for PAFT) adds ``OptionsLossMixin`` to the
trainer class. TRL is optional: nothing here imports it. See docs/HF.md.
"""

from flexpaft.hf.callback import PaftEpochCallback
from flexpaft.hf.data import PaftData, PaftTransform
from flexpaft.hf.loss import OptionsLossMixin

__all__ = ["OptionsLossMixin", "PaftData", "PaftEpochCallback", "PaftTransform"]
