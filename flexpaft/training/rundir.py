"""The training output directory: checked before any work, never clobbered.

A run writes ``adapter/``, ``checkpoint/``, ``flexora/``, ``manifest.json``, ``history.jsonl``,
``loss.png`` and ``train_templates.jsonl`` into its output directory. Before the model is loaded this module
checks that the directory is writable and that writing there destroys nothing: a non-empty
directory that is not a flexpaft run, or a finished run of another configuration, is refused
unless ``--overwrite`` is given, and even then only flexpaft's own entries are replaced.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from flexpaft.errors import FlexpaftError
from flexpaft.io import recover_directory
from flexpaft.validate import check_writable_dir

MANIFEST = "manifest.json"
CHECKPOINT_DIR = "checkpoint"
# Entries a run writes; on --overwrite these (and nothing else) are replaced.
OWN_DIRS = ("adapter", CHECKPOINT_DIR, "flexora")
OWN_FILES = (MANIFEST, "train_templates.jsonl", "history.jsonl", "loss.png")
# A file that proves a directory entry was written by flexpaft.
_MARKERS = {
    "adapter": "flexpaft_adapter.json",
    CHECKPOINT_DIR: "trainer_state.json",
    "flexora": "selection.json",
}


def _manifest(out: Path) -> dict | None:
    try:
        data = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) and "config_hash" in data else None


def _ours(out: Path, name: str) -> bool:
    p = out / name
    if name == MANIFEST:
        return _manifest(out) is not None
    if name in _MARKERS:
        # An empty directory (a run killed before its first save) holds nothing to lose.
        return p.is_dir() and (not any(p.iterdir()) or (p / _MARKERS[name]).exists())
    return name in OWN_FILES


def is_flexpaft_run(out: Path) -> bool:
    return _manifest(out) is not None or any((out / d / m).exists() for d, m in _MARKERS.items())


def check_run_dir(out: str | Path, request_hash: str, overwrite: bool = False) -> None:
    """Raise unless training into ``out`` is safe; changes nothing (every rank may call it)."""
    out = Path(out)
    check_writable_dir(out)
    if not out.is_dir():
        return
    entries = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    if not entries:
        return
    others = [n for n in entries if n not in (*OWN_DIRS, *OWN_FILES)]
    if others and not is_flexpaft_run(out):
        if not overwrite:
            shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            raise FlexpaftError(
                f"output directory {out} is not empty and holds no flexpaft run ({shown}): "
                "choose another output_dir, or --overwrite to add the run's files there "
                "(other files are kept)"
            )
    foreign = [n for n in (*OWN_DIRS, *OWN_FILES) if (out / n).exists() and not _ours(out, n)]
    if foreign:
        raise FlexpaftError(
            f"{out / foreign[0]} was not written by flexpaft and a run would replace it: "
            "move it away or choose another output_dir"
        )
    manifest = _manifest(out)
    if manifest and not overwrite:
        previous = manifest.get("request_hash") or manifest.get("config_hash")
        if previous != request_hash:
            raise FlexpaftError(
                f"{out} holds a finished run of a different configuration: choose another "
                "output_dir, or --overwrite to replace that run"
            )


def prepare_run_dir(out: str | Path, request_hash: str, overwrite: bool = False) -> None:
    """Main process, after ``check_run_dir``: repair what a killed save left behind and, on
    ``overwrite``, drop a checkpoint of another configuration (or a damaged one) so the run
    starts over; a checkpoint of this very configuration is kept, to resume from."""
    out = Path(out)
    for name in OWN_DIRS:
        recover_directory(out / name)
    ckpt = out / CHECKPOINT_DIR
    if overwrite and ckpt.is_dir() and _ours(out, CHECKPOINT_DIR):
        try:
            state = json.loads((ckpt / _MARKERS[CHECKPOINT_DIR]).read_text(encoding="utf-8"))
            same = isinstance(state, dict) and state.get("config_hash") == request_hash
        except (OSError, UnicodeDecodeError, ValueError):
            same = False
        if not same:
            shutil.rmtree(ckpt)


def finish_run_dir(out: str | Path) -> None:
    """A finished run needs no checkpoint; removing it lets a changed config reuse the
    directory with --overwrite instead of tripping over a stale checkpoint."""
    shutil.rmtree(Path(out) / CHECKPOINT_DIR, ignore_errors=True)
