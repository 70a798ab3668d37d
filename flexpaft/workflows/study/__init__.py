"""``flexpaft study``: one comparison end to end from one YAML file.

generate candidate templates -> split them at template level -> train every method for every
seed -> evaluate every model under every unseen test set (same held-out examples for all) ->
one report per test set with 95% intervals and paired differences.

Each step is skipped when its outputs exist for the same settings, so an interrupted study
continues where it stopped, and adding a method or a seed reruns only what is new.

    config.py       StudyConfig, StudyPrompts: the YAML file, checked when it is read
    rows.py         the rows that are not training methods: base and the block baselines
    prompt_sets.py  the prompts step: train / unseen test / adversarial templates
    baselines.py    the blocks each baseline of Flexora's selection trains on
    stored.py       which earlier outputs are the same run, kept across upgrades
    runner.py       Study (the steps) and run_study (the Python API, under the directory lock)
"""

from flexpaft.workflows.study.config import StudyConfig, StudyPrompts
from flexpaft.workflows.study.rows import BLOCK_BASELINES, STUDY_METHODS, VARIANT_METHODS
from flexpaft.workflows.study.runner import Study, run_study
from flexpaft.workflows.study.stored import (
    EVAL_SETTINGS_ADDED,
    TRAIN_SETTINGS_ADDED,
    _same_config,
    _without_added_settings,
)

__all__ = [
    "BLOCK_BASELINES",
    "EVAL_SETTINGS_ADDED",
    "STUDY_METHODS",
    "TRAIN_SETTINGS_ADDED",
    "VARIANT_METHODS",
    "Study",
    "StudyConfig",
    "StudyPrompts",
    "_same_config",
    "_without_added_settings",
    "run_study",
]
