"""The settings of every command, as dataclasses with help text: torch-free, loadable from YAML
(``TrainConfig.from_yaml``), overridable with ``--set``, checked before anything loads.

One key means one thing everywhere: ``model``, ``data`` and ``prompts`` are read alike by train,
search and eval, so one YAML file serves all three (each command leaves the others' settings to
them).
"""

from flexpaft.settings.common import DataSettings, ModelSettings
from flexpaft.settings.evaluate import EvalConfig, EvalPrompts
from flexpaft.settings.methods import METHODS, Method
from flexpaft.settings.train import (
    FlexoraSettings,
    LoraSettings,
    OptimSettings,
    PromptSettings,
    TrainConfig,
    ValidationSettings,
)

# A file shared by train, search and eval: each reads its own keys and leaves the other's.
TrainConfig.__siblings__ = (EvalConfig,)
EvalConfig.__siblings__ = (TrainConfig,)

__all__ = [
    "METHODS",
    "DataSettings",
    "EvalConfig",
    "EvalPrompts",
    "FlexoraSettings",
    "LoraSettings",
    "Method",
    "ModelSettings",
    "OptimSettings",
    "PromptSettings",
    "TrainConfig",
    "ValidationSettings",
]
