"""The ``flexpaft`` command line: train, eval, search, report, prompts, demo.

Every command takes a YAML config (``--config``) plus ``--set key=value`` overrides; user mistakes
print one line and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from flexpaft.errors import FlexpaftError
from flexpaft.settings.schema import add_config_arguments, config_from_args

log = logging.getLogger("flexpaft")

ALLOW_OVERLAP_HELP = (
    "shortcut for --set data.allow_overlap=true: train on a task's evaluation split, or "
    "evaluate an adapter on examples it was trained on"
)


def _cmd_train(args: argparse.Namespace) -> int:
    from flexpaft.settings.train import TrainConfig

    cfg = config_from_args(TrainConfig, _flags(args), ("method", "output_dir"))
    from flexpaft.train.trainer import train  # after the config is checked: this loads torch

    res = train(cfg, progress=not args.quiet, overwrite=args.overwrite)
    m = res.manifest
    if os.environ.get("RANK", "0") == "0":  # once under accelerate launch / torchrun
        print(
            f"adapter: {res.adapter_dir}  ({m['steps']} steps, {m['train_seconds']} s, "
            f"{m['tokens_per_second']} tokens/s, layers {_ranges(m['layers'])})"
        )
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from flexpaft.settings.evaluate import EvalConfig

    cfg = config_from_args(
        EvalConfig, _flags(args), ("adapter", "output_dir", "reference_template")
    )
    from flexpaft.evaluate.evaluator import (
        markdown_table,
    )  # after the config is checked: loads torch
    from flexpaft.evaluate.run import run_eval

    res = run_eval(cfg, progress=not args.quiet, overwrite=args.overwrite)
    if os.environ.get("RANK", "0") == "0":  # once under accelerate launch / torchrun
        print(markdown_table(res, cfg.name or cfg.adapter or "base"))
        print(f"results: {cfg.output_dir}/results.json")
    return 0


def _flags(args: argparse.Namespace) -> argparse.Namespace:
    """Boolean flags as ``--set`` overrides placed before the user's own (which win)."""
    if getattr(args, "allow_overlap", False):
        args.set = ["data.allow_overlap=true", *args.set]
    return args


def _ranges(layers: list[int]) -> str:
    if not layers:
        return "-"
    out, start, prev = [], layers[0], layers[0]
    for x in layers[1:] + [None]:
        if x is not None and x == prev + 1:
            prev = x
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if x is not None:
            start = prev = x
    return ",".join(out)


def _cmd_prompts(args: argparse.Namespace) -> int:
    from flexpaft.commands import prompts as prompts_cmd

    return prompts_cmd.run(args)


def build_parser() -> argparse.ArgumentParser:
    # Only config classes and argument definitions load here, none of torch, transformers or
    # peft: `--help` and a mistyped flag answer in a fraction of a second (tests/test_help.py).
    from flexpaft import __version__
    from flexpaft.commands import prompts as prompts_cmd
    from flexpaft.settings.evaluate import EvalConfig
    from flexpaft.settings.train import TrainConfig

    parser = argparse.ArgumentParser(
        prog="flexpaft",
        description="Robust, efficient LoRA fine-tuning: PAFT (prompt-agnostic) and Flexora (layer search).",
    )
    parser.add_argument("--version", action="version", version=f"flexpaft {__version__}")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars or info logs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "train", help="fine-tune a LoRA adapter (lora, paft, topaccuracy, flexora, flexora+paft)"
    )
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
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "eval", help="accuracy of a model (+ adapter) under every template of a prompt set"
    )
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
        dest="reference_template",
        metavar="TEXT",
        help="your own prompt, also scored (the report's own-prompt columns); 'default' = the "
        "task's; shortcut for --set reference_template=...",
    )
    add_config_arguments(p, EvalConfig)
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("prompts", help="prompt sets: validate, split, convert, generate")
    prompts_cmd.add_arguments(p)
    p.set_defaults(func=_cmd_prompts)

    for name, module, helptext in _optional_commands():
        # argparse %-formats help text: a literal % ("95% intervals") must be doubled.
        p = sub.add_parser(name, help=helptext.replace("%", "%%"))
        module.add_arguments(p)
        p.set_defaults(func=module.run)
    return parser


def _optional_commands() -> list[tuple[str, object, str]]:
    """Commands whose modules live beside their method (search, report, demo)."""
    import importlib

    found = []
    for name, modname, helptext in [
        (
            "search",
            "flexpaft.commands.search",
            "Flexora: search which layers get LoRA (bilevel, unrolled differentiation)",
        ),
        (
            "report",
            "flexpaft.commands.report",
            "robustness report: several runs side by side over unseen templates",
        ),
        (
            "study",
            "flexpaft.workflows.study",
            "a whole comparison from one YAML: prompts, every method x seed, unseen-template "
            "evaluation, reports with 95% intervals",
        ),
        (
            "push",
            "flexpaft.hub",
            "upload an adapter with its model card to the Hugging Face hub (token: HF_TOKEN)",
        ),
        (
            "demo",
            "flexpaft.workflows.demo",
            "offline demo: fine-tune the embedded model, evaluate across held-out templates",
        ),
    ]:
        try:
            found.append((name, importlib.import_module(modname), helptext))
        except ModuleNotFoundError as e:
            if e.name != modname:
                raise
    return found


def _setup_logging(quiet: bool) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO, format="%(message)s", stream=sys.stderr
    )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch.utils.data")
    if "transformers" in sys.modules:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    else:
        # The same settings, read by transformers when a command first imports it: importing it
        # here would cost seconds before a config error could be reported.
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def main(argv: list[str] | None = None) -> int:
    """Run one command; every way it can end is an exit status, never a traceback for the user:
    2 for their mistakes and for what the operating system refused (disk full, read-only,
    permissions, names too long), 130 for Ctrl-C at any point (start-up and argument parsing
    included), and a quiet 1 when the reader of stdout went away (``... | head``)."""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        _setup_logging(args.quiet)
        return int(args.func(args) or 0)
    except FlexpaftError as e:
        print(f"flexpaft: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("flexpaft: interrupted (finished outputs and checkpoints are kept)", file=sys.stderr)
        return 130
    except BrokenPipeError:
        _stdout_gone()
        return 1
    except OSError as e:
        from flexpaft.os_errors import describe_os_error

        print(f"flexpaft: error: {describe_os_error(e)}", file=sys.stderr)
        return 2
    except Exception as e:
        # safetensors reports a failed write as its own error type; write sites translate it
        # (io.write_error), this catches one that got past them.
        if type(e).__name__ == "SafetensorError" and "I/O error" in str(e):
            print(f"flexpaft: error: {str(e).splitlines()[0]}", file=sys.stderr)
            return 2
        raise


def _stdout_gone() -> None:
    """The reader of our stdout exited (``flexpaft prompts validate ... | head``): point stdout
    at /dev/null so that the interpreter's final flush does not fail a second time (the
    Python documentation's recipe for SIGPIPE)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
