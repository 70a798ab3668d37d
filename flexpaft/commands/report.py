"""``flexpaft report RUN...``: the command line of ``flexpaft.reporting.write.write_report``."""

from __future__ import annotations

import argparse
import sys

HELP = "robustness report: several runs side by side over unseen templates"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "runs",
        nargs="+",
        metavar="RUN",
        help="eval output directory or results.json; NAME=PATH sets the label "
        "(default: the run's name)",
    )
    parser.add_argument("--out", "-o", default="runs/report", help="output directory")
    parser.add_argument(
        "--thresholds",
        action="append",
        metavar="T,T,...",
        # One comma-separated value, so the option never swallows the RUN arguments after it.
        help="Top@t thresholds, e.g. 0.6,0.7 for small models or 60,70 in percent "
        "(default 0.8,0.85,0.9)",
    )
    parser.add_argument(
        "--reference-template",
        metavar="ID",
        help="test template to measure PDR against when a run has no reference entry",
    )
    parser.add_argument(
        "--allow-mismatch",
        action="store_true",
        help="report runs with different tasks, formats, templates or example counts anyway",
    )
    parser.add_argument(
        "--html", action="store_true", help="also write a self-contained report.html"
    )
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=2000,
        metavar="B",
        help="bootstrap replicates for the 95%% intervals (0 = no intervals)",
    )
    parser.add_argument(
        "--seeds",
        action="store_true",
        help="runs that share a label (NAME=PATH with the same NAME) are seeds of one method: "
        "one row, averaged, with mean ± std over seeds",
    )
    parser.add_argument(
        "--bootstrap-seed", type=int, default=0, help="seed of the bootstrap resampling"
    )


def run(args: argparse.Namespace) -> int:
    from flexpaft.reporting.tables import console_text
    from flexpaft.reporting.write import write_report

    written = write_report(
        args.runs,
        args.out,
        thresholds=args.thresholds,
        reference_template=args.reference_template,
        allow_mismatch=args.allow_mismatch,
        html=args.html,
        bootstrap=args.bootstrap,
        bootstrap_seed=args.bootstrap_seed,
        seeds=args.seeds,
    )
    for w in written.warnings:
        print(f"flexpaft: warning: {w}", file=sys.stderr)
    text = console_text(written.data, summary=not getattr(args, "quiet", False))
    if text:
        print(text)
    print(f"report: {written.output_dir}/ ({', '.join(written.files)})")
    return 0
