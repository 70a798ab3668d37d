"""``--help`` works for every command and stays fast: no torch, transformers or peft behind it.

The import checks run in a fresh interpreter: other tests in this process import torch, so
``sys.modules`` here says nothing about what the command line loads.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flexpaft.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ["train", "eval", "prompts", "search", "report", "study", "push", "demo"]
PROMPTS_ACTIONS = ["validate", "split", "convert", "export-lm-eval", "generate"]
HEAVY = ("torch", "transformers", "peft")


def _help(argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_bare_command_help_lists_every_command(flag, capsys):
    assert _help([flag]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: flexpaft")
    for name in COMMANDS:
        assert f"    {name} " in out
    # The study's help had a bare % ("95% intervals") that crashed argparse's formatting.
    assert "95% intervals" in out


@pytest.mark.parametrize(
    "argv", [[c, "--help"] for c in COMMANDS] + [["prompts", a, "--help"] for a in PROMPTS_ACTIONS]
)
def test_every_command_help_exits_0_with_usage(argv, capsys):
    assert _help(argv) == 0
    assert capsys.readouterr().out.startswith(f"usage: flexpaft {' '.join(argv[:-1])}")


def test_parser_knows_every_command():
    # A new command added to build_parser must be added to COMMANDS above to get its help tested.
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert list(sub.choices) == COMMANDS
    prompts = next(a for a in sub.choices["prompts"]._actions if a.dest == "prompts_command")
    assert sorted(prompts.choices) == sorted(PROMPTS_ACTIONS)


# Runs each argv through cli.main in one fresh interpreter, reporting the exit code and which heavy
# modules were loaded at that point, one JSON line per argv.
PROBE = """
import json, sys
import flexpaft.cli as cli
heavy = {heavy!r}
out = []
for argv in {argvs!r}:
    try:
        code = cli.main(argv) if argv else (cli.build_parser() and 0)
    except SystemExit as e:
        code = e.code
    out.append([argv, code, [m for m in heavy if m in sys.modules]])
print(json.dumps(out))
"""


def _probe(argvs, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = PROBE.format(heavy=HEAVY, argvs=argvs)
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_help_imports_no_torch_transformers_or_peft(tmp_path):
    # Each --help in its own process, so one command's imports cannot hide another's.
    argvs = [[]] + [[c, "--help"] for c in COMMANDS] + [["--help"]]
    argvs += [["prompts", a, "--help"] for a in PROMPTS_ACTIONS]
    for argv in argvs:
        [(got_argv, code, loaded)] = _probe([argv], tmp_path)
        assert code == 0, got_argv
        assert loaded == [], f"{got_argv or 'build_parser()'} loaded {loaded}"


def test_argument_and_config_errors_fail_before_torch(tmp_path):
    argvs = [
        ["bogus"],
        ["train", "--bogus"],
        ["train", "--set", "nosuchkey=1"],
        ["train", "--set", "optim.lr=-1"],
        ["eval", "--set", "nosuchkey=1"],
        ["eval", "--set", "batch_size=0"],
        ["search", "--set", "nosuchkey=1"],
        ["study", "--set", "nosuchkey=1"],
        ["demo", "--train-examples", "0"],
        ["push", str(tmp_path / "no_adapter"), "--repo-id", "me/x"],
    ]
    for argv in argvs:
        [(got_argv, code, loaded)] = _probe([argv], tmp_path)
        assert code == 2, got_argv
        assert loaded == [], f"{got_argv} loaded {loaded}"


def test_demo_sizes_default_to_the_machine_at_run_time():
    from flexpaft.workflows.demo import CPU_SIZE, GPU_SIZE, resolve_sizes

    args = build_parser().parse_args(["demo", "--test-templates", "5"])
    # Left at None by the parser (no torch there), with both settings in the help.
    assert args.train_examples is None and args.test_examples is None
    resolve_sizes(args, gpu=False)
    assert args.train_examples == CPU_SIZE["train_examples"]
    assert args.test_examples == CPU_SIZE["test_examples"]
    assert args.test_templates == 5  # given on the command line: kept
    args = build_parser().parse_args(["demo"])
    resolve_sizes(args, gpu=True)
    assert args.test_templates == GPU_SIZE["test_templates"]


def test_demo_help_gives_both_default_sizes(capsys):
    assert _help(["demo", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "training examples (default: 320 on a CPU, 400 on a GPU)" in out
    assert "(default: 8 on a CPU, 50 on a GPU)" in out
