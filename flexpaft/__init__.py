"""flexpaft: robust, efficient LoRA fine-tuning of causal language models.

Data flow: task + prompt set -> examples rendered under sampled templates -> trainer (LoRA,
optionally gated and searched) -> PEFT adapter -> evaluator under many templates -> report.

The Python API (the command line is a thin layer over it)::

    import flexpaft

    cfg = flexpaft.TrainConfig.from_yaml("configs/boolq_paft.yaml", optim__epochs=1)
    run = flexpaft.train(cfg)                      # -> TrainResult: adapter_dir, manifest, metrics
    ev = flexpaft.evaluate(flexpaft.EvalConfig.from_yaml(
        None, adapter=str(run.adapter_dir), prompts={"prompt_set": "test.jsonl"}))
    flexpaft.report({"paft": ev.output_dir}, "runs/report")

PAFT inside your own TRL or transformers ``Trainer`` script: ``flexpaft.hf``. Flexora's layer
search on your own model and data, returning a ``peft.LoraConfig``: ``flexpaft.search_layers``.

Names load on first use, so ``import flexpaft`` (and ``flexpaft --help``) does not import torch.
"""

from importlib import import_module
from typing import Any

from flexpaft.version import __version__

# public name -> (module, attribute)
_API = {
    "train": ("flexpaft.recipe", "train"),
    "search": ("flexpaft.recipe", "search"),
    "evaluate": ("flexpaft.evaluation.run", "evaluate"),
    "report": ("flexpaft.reporting.write", "write_report"),
    "study": ("flexpaft.workflows.study", "run_study"),
    "search_layers": ("flexpaft.methods.flexora.peft_search", "search_layers"),
    "TrainResult": ("flexpaft.recipe", "TrainResult"),
    "EvalRun": ("flexpaft.evaluation.run", "EvalRun"),
    "Report": ("flexpaft.reporting.write", "Report"),
    "LayerSelection": ("flexpaft.methods.flexora.peft_search", "LayerSelection"),
    "TrainConfig": ("flexpaft.settings.train", "TrainConfig"),
    "EvalConfig": ("flexpaft.settings.evaluate", "EvalConfig"),
    "StudyConfig": ("flexpaft.workflows.study", "StudyConfig"),
    "METHODS": ("flexpaft.settings.methods", "METHODS"),
    "FlexpaftError": ("flexpaft.errors", "FlexpaftError"),
}


def __getattr__(name: str) -> Any:
    if name in _API:
        module, attr = _API[name]
        value = getattr(import_module(module), attr)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'flexpaft' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])


__all__ = ["__version__", *_API]
