"""``flexpaft demo``: the whole flow offline on the packaged task (``workflows/demo.py``)."""

from __future__ import annotations

import argparse

from flexpaft.workflows.demo import CPU_SIZE, DEFAULT_TASK, FULL_SIZE_HELP, GPU_SIZE

HELP = "offline demo: fine-tune the embedded model, evaluate across held-out templates"


def _size_help(key: str) -> str:
    return f"{CPU_SIZE[key]} on a CPU, {GPU_SIZE[key]} on a GPU"


def add_arguments(p: argparse.ArgumentParser) -> None:
    # The sizes default to None and are decided in run(): asking torch for a GPU here would
    # load torch for every `--help`.
    p.epilog = FULL_SIZE_HELP
    p.add_argument("--task", default=DEFAULT_TASK, help="task (default: %(default)s)")
    p.add_argument(
        "--model", default="embedded", help="base model (default: the embedded SmolLM2-135M)"
    )
    p.add_argument("--out", "-o", default="runs/demo", help="output directory")
    p.add_argument(
        "--train-examples",
        type=int,
        default=None,
        help="training examples (default: " + _size_help("train_examples") + ")",
    )
    p.add_argument(
        "--test-examples",
        type=int,
        default=None,
        help="held-out test examples, taken after the training ones (0 = all the rest; "
        "default: " + _size_help("test_examples") + ")",
    )
    p.add_argument(
        "--balance-test",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="test on equally many examples of every answer, so the label prior scores chance "
        "(default: on)",
    )
    p.add_argument(
        "--test-templates",
        type=int,
        default=None,
        help="held-out templates to evaluate under (default: " + _size_help("test_templates") + ")",
    )
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument(
        "--paft",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also train PAFT, with templates drawn from the training set",
    )
    p.add_argument(
        "--own-template",
        default="",
        metavar="TEXT",
        help="your own prompt: the one-prompt LoRA trains on it and every model is also scored "
        "under it, for the own-prompt table (default: the task's template)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--bf16",
        choices=("auto", "on", "off"),
        default="auto",
        help="bf16 arithmetic for training: bf16 autocast, LoRA weights stay fp32 (evaluation "
        "keeps the model's default dtype: fp32 on a CPU). auto: on where the hardware computes "
        "bf16 natively (a GPU, or a CPU with AVX512-BF16/AMX: about 1.5x faster training "
        "there), off elsewhere, where it would be emulated and slower",
    )
    p.add_argument(
        "--chat-template",
        default="",
        help="auto, none or a Jinja file, for training and evaluation alike (default: the "
        "config default, model.chat_template)",
    )


def run(args: argparse.Namespace) -> int:
    from flexpaft.workflows.demo import run_demo

    return run_demo(args)
