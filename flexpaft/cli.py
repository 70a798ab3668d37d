"""The ``flexpaft`` command line: it builds the parser and runs one command module.

Every command (``flexpaft.commands.<verb>``) is a thin layer over the Python API; each takes a
YAML config (``--config``) plus ``--set key=value`` overrides, and user mistakes print one line
and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from flexpaft.errors import FlexpaftError

log = logging.getLogger("flexpaft")

# (verb, command module under flexpaft.commands). Each module has HELP, add_arguments(parser)
# and run(args), and imports only argparse and config classes at module level: building the
# parser must not load torch (tests/test_help.py).
COMMANDS = (
    ("train", "train"),
    ("eval", "eval"),
    ("prompts", "prompts"),
    ("search", "search"),
    ("report", "report"),
    ("study", "study"),
    ("push", "push"),
    ("demo", "demo"),
)


def build_parser() -> argparse.ArgumentParser:
    from flexpaft.version import __version__

    parser = argparse.ArgumentParser(
        prog="flexpaft",
        description="Robust, efficient LoRA fine-tuning: PAFT (prompt-agnostic) and Flexora "
        "(layer search).",
    )
    parser.add_argument("--version", action="version", version=f"flexpaft {__version__}")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars or info logs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for verb, module_name in COMMANDS:
        module = importlib.import_module(f"flexpaft.commands.{module_name}")
        # argparse %-formats help text: a literal % ("95% intervals") must be doubled.
        p = sub.add_parser(verb, help=module.HELP.replace("%", "%%"))
        module.add_arguments(p)
        p.set_defaults(func=module.run)
    return parser


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
