"""Which earlier outputs of a study are the same run: kept, not redone.

A finished training run, an evaluation or a file of block scores is kept when it was made for the
same settings. Settings that flexpaft gained after a study had run are compared at the value that
reproduces what runs made before them did (``TRAIN_SETTINGS_ADDED``, ``EVAL_SETTINGS_ADDED``), so
an upgrade keeps a study rather than retraining it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flexpaft.settings.methods import method

if TYPE_CHECKING:
    from flexpaft.settings.evaluate import EvalConfig
    from flexpaft.settings.train import TrainConfig

# Settings added to flexpaft after studies had run, with the value that reproduces what runs made
# before them did. A stored run that lacks such a key is the same run when the key has that value
# now; a key that is missing and not listed here means a new run. Add every new setting here
# (its value at the time, which stays right if its default later changes).
TRAIN_SETTINGS_ADDED: dict[str, Any] = {
    "optim": {"loss": "answer", "consistency": 0.0},
    "prompts": {"own_rate": 0.0},
    "flexora": {"stage2_examples": "train", "tolerance_se": 1.0},
}
EVAL_SETTINGS_ADDED: dict[str, Any] = {}


def finished_run(cfg: TrainConfig) -> dict[str, Any] | None:
    """The manifest of the finished training run of ``cfg`` in its output_dir, or None."""
    from flexpaft.settings.train import config_dict_hash

    out = Path(cfg.output_dir)
    if not (out / "adapter").is_dir():
        return None
    try:
        manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # a damaged file is redone, not trusted
    if not isinstance(manifest, dict):
        return None
    stored = manifest.get("config")
    if not isinstance(stored, dict):
        return None
    current = _without_added_settings(asdict(cfg), stored, TRAIN_SETTINGS_ADDED)
    if stored == current:
        return manifest
    # A run that searched its blocks records the stage-2 config the search built (block list
    # name, gate ranks), not the one requested; the hash of the request names it.
    if method(cfg.method).searches_layers and manifest.get("request_hash") == config_dict_hash(
        current
    ):
        return manifest
    return None


def evaluated(cfg: EvalConfig) -> bool:
    """The results.json in the output_dir of ``cfg`` is of these settings."""
    from flexpaft.settings.evaluate import upgrade_stored

    results = Path(cfg.output_dir) / "results.json"
    return _same_config(results, asdict(cfg), EVAL_SETTINGS_ADDED, upgrade_stored)


def stored_scores(path: Path, key: dict[str, Any]) -> list[float] | None:
    """The block scores in ``path`` when they were computed for ``key`` (``{"train": the
    training config as a dict, ...}``), else None."""
    if _same_config(path, key, {"train": TRAIN_SETTINGS_ADDED}):
        return json.loads(path.read_text(encoding="utf-8"))["scores"]
    return None


def _same_config(
    path: Path,
    cfg: dict[str, Any],
    added: dict[str, Any],
    upgrade: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> bool:
    """True when ``path`` (a manifest or results file) was written for ``cfg``: the same
    settings, apart from settings added since (``added``) at their earlier behaviour; ``upgrade``
    brings a stored config of an older shape (keys that moved) to today's."""
    if not path.is_file():
        return False
    try:
        stored = json.loads(path.read_text(encoding="utf-8")).get("config")
    except (OSError, ValueError, AttributeError):
        return False  # a damaged file is redone, not trusted
    if isinstance(stored, dict) and upgrade is not None:
        stored = upgrade(stored)
    return isinstance(stored, dict) and stored == _without_added_settings(cfg, stored, added)


def _without_added_settings(
    current: dict[str, Any], stored: dict[str, Any], added: dict[str, Any]
) -> dict[str, Any]:
    """``current`` without the settings that ``stored`` lacks and that are at the value in
    ``added`` (nested like the config: what runs made before the setting existed did).

    So a study made before an upgrade is kept rather than retrained; the same setting at any
    other value, or a missing one that ``defaults`` does not name, still means a new run.
    """
    out = {}
    for key, value in current.items():
        if key not in stored:
            if key in added and value == added[key]:
                continue
            out[key] = value
        elif isinstance(value, dict) and isinstance(stored[key], dict):
            sub = added.get(key)
            out[key] = _without_added_settings(
                value, stored[key], sub if isinstance(sub, dict) else {}
            )
        else:
            out[key] = value
    return out
