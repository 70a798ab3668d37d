"""``flexpaft search``: run Flexora's layer search only and write its outputs.

Writes to ``<output_dir>/flexora/``: selection.json (chosen layers and a PEFT LoraConfig for
them), alpha.jsonl (alpha and gates every step), alpha.png (alpha per layer over the search) and a
resumable checkpoint. ``flexpaft train --method flexora`` runs the same search, then stage 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from flexpaft.errors import FlexpaftError
from flexpaft.settings.schema import add_config_arguments, config_from_args
from flexpaft.settings.train import TrainConfig

# The search needs to know whether templates come from a prompt set (PAFT) or are single.
SEARCH_METHOD = {
    "lora": "flexora",
    "flexora": "flexora",
    "paft": "flexora+paft",
    "flexora+paft": "flexora+paft",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, TrainConfig, example="flexora.unroll=2")
    parser.add_argument("--output-dir", "-o", help="shortcut for --set output_dir=...")


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(TrainConfig, args, ("output_dir",))
    if cfg.method not in SEARCH_METHOD:
        raise FlexpaftError(
            f"flexpaft search needs method flexora or flexora+paft (lora and paft are mapped "
            f"to them), got {cfg.method!r}"
        )
    cfg = dataclasses.replace(cfg, method=SEARCH_METHOD[cfg.method])
    from flexpaft.validate import check_writable_dir

    check_writable_dir(cfg.output_dir)
    if os.environ.get("RANK", "0") != "0":  # under a launcher the main process holds it
        return _search(cfg, args)
    from flexpaft.locks import run_dir_lock

    with run_dir_lock(cfg.output_dir, "flexpaft search"):
        return _search(cfg, args)


def _search(cfg: TrainConfig, args: argparse.Namespace) -> int:
    from accelerate.utils import set_seed

    from flexpaft.methods.flexora.search import (
        ALPHA_LOG,
        ALPHA_PLOT,
        SEARCH_DIR,
        SELECTION,
        search_layers,
    )
    from flexpaft.methods.templates import training_templates
    from flexpaft.train.compute import check_compute, load_for_training
    from flexpaft.train.trainer import make_accelerator

    acc = make_accelerator(cfg)
    check_compute(cfg.compute, acc.device)
    set_seed(cfg.seed)
    task, fmt, examples = cfg.data.load("train")
    model, tok = load_for_training(cfg.model, cfg.compute, acc.device)
    templates, _ = training_templates(cfg, task, fmt, examples, model, tok)
    outcome = search_layers(
        cfg,
        model,
        tok,
        task,
        fmt,
        examples,
        templates,
        acc,
        progress=not getattr(args, "quiet", False),
    )
    if acc.is_main_process:
        out = Path(cfg.output_dir) / SEARCH_DIR
        print(
            f"selected layers ({outcome.rule}, {len(outcome.layers)} of {outcome.n_blocks}): "
            f"{','.join(map(str, outcome.layers))}"
        )
        print(f"selection: {out / SELECTION}  alpha: {out / ALPHA_LOG}  plot: {out / ALPHA_PLOT}")
    return 0
