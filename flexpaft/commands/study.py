"""``flexpaft study``: a whole comparison from one YAML (``workflows.study.run_study``)."""

from __future__ import annotations

import argparse
import sys

from flexpaft.settings.loading import add_config_arguments, config_from_args
from flexpaft.workflows.study import StudyConfig, run_study

HELP = (
    "a whole comparison from one YAML: prompts, every method x seed, unseen-template "
    "evaluation, reports with 95% intervals"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, StudyConfig, example="train.optim.lr=5e-4")


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(StudyConfig, args)
    written = run_study(cfg, progress=not args.quiet)
    for name, path in written.items():
        print(f"report ({name}): {path}/report.md", file=sys.stdout)
    return 0
