"""``flexpaft eval``: the command line of ``flexpaft.evaluate`` (``evaluation.run.run_eval``)."""

from __future__ import annotations

import argparse
import os

from flexpaft.commands.common import ALLOW_OVERLAP_HELP, flags
from flexpaft.settings.evaluate import EvalConfig
from flexpaft.settings.loading import add_config_arguments, config_from_args

HELP = "accuracy of a model (+ adapter) under every template of a prompt set"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--adapter", help="shortcut for --set adapter=...")
    p.add_argument("--output-dir", "-o", help="shortcut for --set output_dir=...")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace finished results of another evaluation in the output directory",
    )
    p.add_argument("--allow-overlap", action="store_true", help=ALLOW_OVERLAP_HELP)
    p.add_argument(
        "--own-template",
        dest="own_template",
        metavar="TEXT",
        help="your own prompt, also scored (the report's own-prompt columns); 'default' = the "
        "task's, as it is without the flag; shortcut for --set prompts.template=...",
    )
    add_config_arguments(p, EvalConfig)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(EvalConfig, flags(args), ("adapter", "output_dir", "own_template"))
    from flexpaft.evaluation.evaluator import markdown_table  # after the config: loads torch
    from flexpaft.evaluation.run import run_eval

    res = run_eval(cfg, progress=not args.quiet, overwrite=args.overwrite)
    if os.environ.get("RANK", "0") == "0":  # once under accelerate launch / torchrun
        print(markdown_table(res, cfg.name or cfg.adapter or "base"))
        print(f"results: {cfg.output_dir}/results.json")
    return 0
