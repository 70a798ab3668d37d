"""``flexpaft prompts validate|split|convert|generate|export-lm-eval``."""

from __future__ import annotations

import argparse
from pathlib import Path

from flexpaft.errors import FlexpaftError
from flexpaft.prompts import PromptSet
from flexpaft.tasks import AnswerFormat, load_task

HELP = "prompt sets: validate, split, convert, generate"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="prompts_command", required=True, metavar="ACTION")

    v = sub.add_parser(
        "validate",
        help="check every template against a task, and/or every row of a data file",
    )
    v.add_argument(
        "file",
        nargs="?",
        help="prompt set (jsonl/yaml/txt/csv/xlsx); leave it out to check the task and --data alone",
    )
    v.add_argument("--task", required=True, help="task name or task YAML")
    v.add_argument("--format", default="", help="answer format (default: the task's)")
    v.add_argument("--out", help="also save the valid, deduplicated templates here")
    v.add_argument(
        "--data",
        metavar="FILE",
        help="also check every row of this data file (jsonl/json/csv/parquet) against the task: "
        "its fields, gold answer and options; the first bad row is reported by line, exit 2",
    )

    s = sub.add_parser("split", help="split a prompt set into train/test templates")
    s.add_argument("file")
    s.add_argument(
        "--test-fraction",
        type=float,
        default=1 / 9,
        help="share of templates held out (paper: 1/9)",
    )
    s.add_argument("--min-test", type=int, default=1, help="at least this many test templates")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True, help="directory for train.jsonl and test.jsonl")

    c = sub.add_parser("convert", help="convert between jsonl, yaml, txt, csv and xlsx")
    c.add_argument("file")
    c.add_argument("out", help="output file; the format follows its extension")
    c.add_argument("--dedupe", action="store_true", help="drop exact duplicates")

    e = sub.add_parser(
        "export-lm-eval",
        help="write lm-evaluation-harness task YAMLs: one per template and a group over them",
    )
    e.add_argument("file", help="prompt set (e.g. the held-out test templates)")
    e.add_argument("--task", required=True, help="task name or task YAML")
    e.add_argument("--format", default="", help="answer format (default: the task's)")
    e.add_argument("--out", required=True, help="directory for the YAMLs and utils.py")
    e.add_argument("--source", default="", help="local data file instead of the hub dataset")
    e.add_argument("--split", default="", help="hub split (default: the task's evaluation split)")
    e.add_argument("--prefix", default="flexpaft", help="task name prefix (default: %(default)s)")

    g = sub.add_parser(
        "generate", help="PAFT stage 1: build candidate templates (offline grammar or LLMs)"
    )
    from flexpaft.commands import prompts_generate as generate_cmd

    generate_cmd.add_arguments(g)


def run(args: argparse.Namespace) -> int:
    action = args.prompts_command
    if action == "generate":
        from flexpaft.commands import prompts_generate as generate_cmd

        return generate_cmd.run(args)
    from flexpaft.validate import check_writable_dir, check_writable_file

    # Output places are checked before any work, so a bad --out never costs a run.
    if action == "split":
        check_writable_dir(args.out)
    elif action == "convert":
        check_writable_file(args.out)
    elif action == "validate" and args.out:
        check_writable_file(args.out)
    if action == "validate" and not args.file:
        return _validate_task_and_data(args)
    ps = PromptSet.load(args.file)
    if action == "validate":
        task = load_task(args.task)
        fmt = AnswerFormat.parse(args.format) if args.format else task.default_format
        task.check_format(fmt)
        unique = ps.deduplicate()
        good, bad = unique.validated(task, fmt)
        for t, reasons in bad:
            print(f"INVALID {t.id}: {'; '.join(reasons)}  |  {t.text[:70]!r}")
        if args.data:
            from flexpaft.tasks.check_rows import check_rows

            rows = check_rows(task, fmt, args.data)
            print(f"{rows} rows of {args.data} fit task {task.name} ({fmt.value})")
        print(
            f"{len(good)} valid, {len(bad)} invalid, {len(ps) - len(unique)} duplicates "
            f"({len(ps)} templates, task {task.name}, format {fmt.value})"
        )
        if args.out:
            good.save(args.out)
        return 0 if not bad else 1
    if action == "split":
        train, test = ps.deduplicate().split(args.test_fraction, args.seed, args.min_test)
        out = Path(args.out)
        train.save(out / "train.jsonl")
        test.save(out / "test.jsonl")
        print(f"{len(train)} train and {len(test)} test templates in {out}")
        return 0
    if action == "export-lm-eval":
        from flexpaft.lm_eval_export import export_lm_eval

        task = load_task(args.task)
        fmt = AnswerFormat.parse(args.format) if args.format else task.default_format
        task.check_format(fmt)
        paths = export_lm_eval(
            ps, task, fmt, args.out, args.prefix, args.source, args.split, task_ref=args.task
        )
        group = paths[0].stem
        print(f"{len(paths) - 1} lm-eval tasks and group {group} in {args.out}")
        print(
            f"lm_eval --model hf --model_args pretrained=<base>,peft=<adapter> "
            f"--include_path {args.out} --tasks {group}"
        )
        return 0
    if action == "convert":
        result = ps.deduplicate() if args.dedupe else ps
        result.save(args.out)
        print(f"{len(result)} templates -> {args.out}")
        return 0
    raise FlexpaftError(f"unknown prompts action {action}")  # argparse prevents this


def _validate_task_and_data(args: argparse.Namespace) -> int:
    """``prompts validate --task T --data D`` without a prompt set: the task definition, its
    answer format and every data row, before any template is written."""
    if not args.data:
        raise FlexpaftError(
            "prompts validate needs a prompt set file, or --data FILE to check a task and its "
            "data alone"
        )
    if args.out:
        raise FlexpaftError("--out saves valid templates: give the prompt set file too")
    from flexpaft.tasks.check_rows import check_rows

    task = load_task(args.task)
    fmt = AnswerFormat.parse(args.format) if args.format else task.default_format
    task.check_format(fmt)
    rows = check_rows(task, fmt, args.data)
    print(f"{rows} rows of {args.data} fit task {task.name} ({fmt.value})")
    print(
        f"next: flexpaft prompts generate --task {args.task} --out DIR (candidate templates "
        "for PAFT)"
    )
    return 0
