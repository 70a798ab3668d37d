"""``flexpaft train``: the command line of ``flexpaft.train`` (``recipe.train``)."""

from __future__ import annotations

import argparse
import os

from flexpaft.commands.common import ALLOW_OVERLAP_HELP, flags, layer_ranges
from flexpaft.settings.loading import add_config_arguments, config_from_args
from flexpaft.settings.train import TrainConfig

HELP = "fine-tune a LoRA adapter (lora, paft, topaccuracy, flexora, flexora+paft)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", help="shortcut for --set method=...")
    p.add_argument("--output-dir", "-o", help="shortcut for --set output_dir=...")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="train into a non-empty output directory or over a finished run of another "
        "configuration (only flexpaft's own files there are replaced)",
    )
    p.add_argument("--allow-overlap", action="store_true", help=ALLOW_OVERLAP_HELP)
    add_config_arguments(p, TrainConfig)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(TrainConfig, flags(args), ("method", "output_dir"))
    from flexpaft.recipe import train  # after the config is checked: this loads torch

    res = train(cfg, progress=not args.quiet, overwrite=args.overwrite)
    m = res.manifest
    if os.environ.get("RANK", "0") == "0":  # once under accelerate launch / torchrun
        print(
            f"adapter: {res.adapter_dir}  ({m['steps']} steps, {m['train_seconds']} s, "
            f"{m['tokens_per_second']} tokens/s, layers {layer_ranges(m['layers'])})"
        )
    return 0
