"""The second fault matrix: values read as YAML, hostile YAML, torn stored state, silently wrong
data, late errors (issue 22, items 3-6). docs/RELIABILITY.md lists each case.

Cases run in-process through ``flexpaft.cli.main`` like tests/test_bad_inputs.py: exit 2, one
``flexpaft: error:`` line naming the problem, no traceback, nothing written. Guards that need a
model in hand (checkpoint tensor shapes) are tested on the reader itself.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
from conftest import boolq_rows
from test_bad_inputs import TEMPLATES, Case, _snapshot, shared  # noqa: F401  (shared: fixture)

from flexpaft.cli import main
from flexpaft.errors import FlexpaftError, short_repr
from flexpaft.settings.loading import load_config

# Nine lines, under 1 KB: expands to 9^9 (387 million) strings.
BOMB = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi")
)
# The same on one line, for --set: a flow sequence whose items alias the ones before.
BOMB_FLOW = (
    "[&a [lol, lol, lol, lol, lol, lol, lol, lol, lol], "
    + ", ".join(f"&{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi"))
    + "]"
)


def _adapter_set(c: Case, name: str, content: str | bytes) -> str:
    """``adapter=PATH`` of a copy of the good adapter with ``name`` replaced."""
    return f"adapter={c.adapter(**{name.replace('.', '__'): content})}"


def _results_with(c: Case, **change) -> Path:
    data = json.loads((c.s["results"] / "results.json").read_text())
    data["per_template"][0].update(change)
    return c.file("bad/results.json", json.dumps(data))


CASES = {
    # ---- paths and free text: never YAML-coerced; ~, $VARS, control characters -------------
    "train-output-newline": (
        lambda c: c.train(out=f"{c.tmp}/a\nb"),
        "output_dir: a path cannot contain the control character '\\n'",
    ),
    "train-output-nul-via-set": (
        lambda c: c.train(f"output_dir={c.tmp}/a\x01b"),
        "cannot contain the control character '\\x01'",
    ),
    "train-output-unset-var": (
        lambda c: c.train(out="${FLEXPAFT_TEST_UNSET}/x"),
        "output_dir: $FLEXPAFT_TEST_UNSET is not set in the environment",
    ),
    "train-output-empty-var": (
        lambda c: c.train(out="$FLEXPAFT_TEST_EMPTY/x"),
        "$FLEXPAFT_TEST_EMPTY is empty in the environment",
    ),
    "eval-adapter-unknown-user": (
        lambda c: c.eval("adapter=~flexpaft_no_such_user/a"),
        "adapter: cannot expand '~flexpaft_no_such_user'",
    ),
    "train-config-output-yes": (
        lambda c: ["train", "--config", c.file("c.yaml", "output_dir: yes\n")],
        "output_dir: expected text, got True",
    ),
    "train-config-output-octal": (
        lambda c: ["train", "--config", c.file("c.yaml", "output_dir: 0755\n")],
        "output_dir: expected text, got 493",
    ),
    "train-config-template-null": (
        lambda c: ["train", "--config", c.file("c.yaml", "prompts:\n  template: null\n")],
        "prompts.template: expected text, got None",
    ),
    # ---- hostile YAML: alias bombs, recursion, capped echoes ------------------------------------
    "train-config-alias-bomb": (
        lambda c: ["train", "--config", c.file("c.yaml", BOMB + "optim: *i\n")],
        "refused: its aliases expand past",
    ),
    "train-config-recursive-alias": (
        lambda c: ["train", "--config", c.file("c.yaml", "optim: &a {x: *a}\n")],
        "an alias refers to the node that contains it",
    ),
    "validate-alias-bomb": (
        lambda c: ["prompts", "validate", c.file("p.yaml", BOMB), "--task", "boolq"],
        "refused: its aliases expand past",
    ),
    "task-file-alias-bomb": (
        lambda c: c.train(c.keyfile("data.task", "t.yaml", BOMB)),
        "refused: its aliases expand past",
    ),
    "train-set-alias-bomb": (
        lambda c: c.train("lora.target_modules=" + BOMB_FLOW),
        "YAML in --set lora.target_modules refused: its aliases expand past",
    ),
    # ---- late or wrong errors: refused before the model loads -----------------------------------
    "train-flexora-selection": (
        lambda c: c.train("method=flexora", "flexora.selection=best", "model.name=/nonexistent"),
        "flexora.selection 'best' is not one of validated, positive, gate, topk, fraction",
    ),
    "train-flexora-ranks": (
        lambda c: c.train("flexora.ranks=wide", "model.name=/nonexistent"),
        "flexora.ranks 'wide' is not one of uniform, gate",
    ),
    "train-flexora-topk-zero": (
        lambda c: c.train("flexora.selection=topk", "flexora.k=0", "model.name=/nonexistent"),
        "flexora.k must be at least 1 for the topk rule",
    ),
    "train-alpha-pattern-nan": (
        lambda c: c.train("lora.alpha_pattern={q_proj: .nan}"),
        "lora.alpha_pattern.q_proj: expected a finite number, got nan",
    ),
    "train-rank-pattern-text": (
        lambda c: c.train("lora.rank_pattern={q_proj: big}"),
        "lora.rank_pattern.q_proj: expected an integer",
    ),
    # ---- stored state read back: checked, "damaged", never a traceback --------------------------
    "train-checkpoint-step-text": (
        lambda c: (c.file("out/checkpoint/trainer_state.json", '{"step": "3"}'), c.train())[1],
        "trainer_state.json: step is '3', not a number",
    ),
    "train-checkpoint-step-negative": (
        lambda c: (c.file("out/checkpoint/trainer_state.json", '{"step": -5}'), c.train())[1],
        "step is -5, not 0 or more",
    ),
    "train-checkpoint-step-float": (
        lambda c: (c.file("out/checkpoint/trainer_state.json", '{"step": 1e9}'), c.train())[1],
        "step is 1000000000.0, not a whole number",
    ),
    "train-checkpoint-seconds-nan": (
        lambda c: (c.file("out/checkpoint/trainer_state.json", '{"seconds": NaN}'), c.train())[1],
        "seconds is nan, not 0 or more",
    ),
    "eval-train-hashes-binary": (
        lambda c: c.eval(_adapter_set(c, "train_hashes.txt", b"\xff\xfe\x00")),
        "train_hashes.txt is damaged: not text (byte 0)",
    ),
    "eval-train-hashes-not-hash": (
        lambda c: c.eval(_adapter_set(c, "train_hashes.txt", "0123456789abcdef\nzz\n")),
        "train_hashes.txt is damaged: line 2 is not a 16-digit hex hash ('zz')",
    ),
    "eval-adapter-info-not-object": (
        lambda c: c.eval(_adapter_set(c, "flexpaft_adapter.json", "[1, 2]")),
        "flexpaft_adapter.json is damaged: not a JSON object ([1, 2]): restore",
    ),
    "eval-adapter-info-chat-edited": (
        lambda c: c.eval(_adapter_set(c, "flexpaft_adapter.json", '{"chat_template": "yes"}')),
        "flexpaft_adapter.json is damaged: chat_template is 'yes'",
    ),
    "eval-partial-not-object": (
        lambda c: (c.file("out/partial.jsonl", "[1, 2]\n"), c.eval())[1],
        "partial.jsonl is damaged: line 1 is not a JSON object ([1, 2]): delete it",
    ),
    "report-accuracy-text": (
        lambda c: ["report", _results_with(c, accuracy="high"), "-o", c.out],
        "is damaged: template 1: accuracy is 'high', not between 0 and 1",
    ),
    "report-correct-wrong-length": (
        lambda c: ["report", _results_with(c, correct=[1]), "-o", c.out],
        "is damaged: template 1: n is 4 but 1 correct and 4 predictions",
    ),
    # ---- silently wrong data -------------------------------------------------------------------
    "data-question-list": (
        lambda c: c.train(source=c.jsonl("d.jsonl", _rows(question=["is", "it"]))),
        "d.jsonl line 3: has a list in 'question' where text belongs (['is', 'it'])",
    ),
    "data-passage-object": (
        lambda c: c.train(source=c.jsonl("d.jsonl", _rows(passage={"text": "x"}))),
        "line 3: has an object in 'passage' where text belongs",
    ),
    "data-piqa-option-list": (
        lambda c: c.train(
            "data.task=piqa",
            source=c.jsonl("p.jsonl", [{"goal": "g", "sol1": ["a"], "sol2": "b", "label": 0}]),
        ),
        "p.jsonl line 1: has a list as option 'sol1' where text belongs",
    ),
    "data-balance-one-label": (
        lambda c: c.train(
            "data.balance_labels=true",
            source=c.jsonl("d.jsonl", [{**r, "answer": True} for r in boolq_rows(6)]),
        ),
        "data.balance_labels: all 6 examples of",
    ),
    "split-min-test-zero": (
        lambda c: [
            "prompts",
            "split",
            c.s["prompts"],
            "--min-test",
            "0",
            "--test-fraction",
            "0.05",
            "--out",
            c.out,
        ],  # fmt: skip
        "gives an empty test set",
    ),
    "validate-csv-headerless-commas": (
        lambda c: [
            "prompts",
            "validate",
            c.file("p.csv", "{passage}, {question}?\n"),
            "--task",
            "boolq",
        ],  # fmt: skip
        "row 1 has 2 comma-separated cells and there is no 'template' header",
    ),
}


def _rows(**change) -> list[dict]:
    rows = boolq_rows(6)
    rows[2] = {**rows[2], **change}
    return rows


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input2(case, tmp_path, shared, capsys, monkeypatch):  # noqa: F811
    monkeypatch.delenv("FLEXPAFT_TEST_UNSET", raising=False)
    monkeypatch.setenv("FLEXPAFT_TEST_EMPTY", "")
    build, message = CASES[case]
    argv = [str(a) for a in build(Case(tmp_path, shared))]
    before = _snapshot(tmp_path, shared["root"])
    code = main(["-q", *argv])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("flexpaft: error:"), err
    assert message in lines[0], err
    assert "Traceback" not in err and len(lines[0]) < 600
    assert _snapshot(tmp_path, shared["root"]) == before


# ---- paths and free text ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "typed, meant",
    [
        ("exp #3", "exp #3"),  # YAML: a comment, "exp"
        ("yes", "yes"),  # YAML: True
        ("0755", "0755"),  # YAML: 493
        ("1e3", "1e3"),
        ("null", "null"),  # YAML: None
        ("'quoted'", "quoted"),  # one quoted YAML string is unquoted
        ("a: b", "a: b"),  # YAML: a mapping
    ],
)
def test_output_dir_is_taken_as_typed(typed, meant):
    from flexpaft.settings.train import TrainConfig

    assert load_config(TrainConfig, None, [f"output_dir={typed}"]).output_dir == meant


def test_cli_output_flag_is_taken_as_typed(tmp_path):
    import argparse

    from flexpaft.evaluation.run import EvalConfig
    from flexpaft.settings.loading import config_from_args

    args = argparse.Namespace(config=None, set=["name=no"], adapter="", output_dir="exp #3")
    cfg = config_from_args(EvalConfig, args, ("adapter", "output_dir"))
    assert (cfg.output_dir, cfg.name) == ("exp #3", "no")


def test_home_and_variables_are_expanded_in_paths_only(monkeypatch, tmp_path):
    from flexpaft.settings.train import TrainConfig

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("RUN_DIR", "/srv/runs")
    cfg = load_config(
        TrainConfig,
        None,
        ["output_dir=${RUN_DIR}/x", "prompts.prompt_set=~/p.jsonl", "prompts.template=$RUN_DIR"],
    )
    assert cfg.output_dir == "/srv/runs/x"
    assert cfg.prompts.prompt_set == f"{tmp_path}/p.jsonl"
    # A template is text, not a path: "$RUN_DIR" in it is the user's text.
    assert cfg.prompts.template == "$RUN_DIR"
    # A quoted ~ (no shell expanded it) means the home directory, as it would unquoted.
    assert load_config(TrainConfig, None, ["output_dir=~"]).output_dir == str(tmp_path)


def test_yaml_file_strings_and_merge_key(tmp_path):
    from flexpaft.workflows.study import StudyConfig

    f = tmp_path / "s.yaml"
    f.write_text(
        "defaults: &d {batch_size: 8, max_length: 64}\n"
        "output_dir: 'exp #3'\n"
        "eval:\n  <<: *d\n  max_length: 128\n"
    )
    from flexpaft.settings.loading import read_yaml

    data = read_yaml(f)
    assert data["eval"] == {"batch_size": 8, "max_length": 128}
    data.pop("defaults")
    f.write_text(json.dumps(data))
    assert load_config(StudyConfig, f).eval == {"batch_size": 8, "max_length": 128}
    assert load_config(StudyConfig, f).output_dir == "exp #3"


def test_duplicate_keys_are_still_refused_but_a_merge_override_is_not(tmp_path):
    from flexpaft.yaml_input import load_yaml

    assert load_yaml("b: &b {x: 1}\nc: {<<: *b, x: 2}\n", "f") == {
        "b": {"x": 1},
        "c": {"x": 2},
    }
    with pytest.raises(FlexpaftError, match="duplicate key 'x'"):
        load_yaml("c: {x: 1, x: 2}\n", "f")


# ---- hostile YAML -----------------------------------------------------------------------------
def test_alias_bomb_is_refused_quickly():
    from flexpaft.yaml_input import load_yaml

    assert len(BOMB) < 1024
    t0 = time.perf_counter()
    with pytest.raises(FlexpaftError, match="refused: its aliases expand past"):
        load_yaml(BOMB, "bomb.yaml")
    # Not a timing test of speed, only of "does not hang": the unguarded walk takes minutes.
    assert time.perf_counter() - t0 < 60


def test_a_document_with_many_small_aliases_still_loads():
    from flexpaft.yaml_input import load_yaml

    text = "base: &b {r: 8, alpha: 16}\n" + "".join(f"run{i}: *b\n" for i in range(500))
    assert load_yaml(text, "f")["run499"] == {"r": 8, "alpha": 16}


def test_short_repr_never_builds_the_whole_repr():
    big: list = ["lol"] * 9
    for _ in range(8):
        big = [big] * 9  # 9^9 strings, shared
    loop: list = [1]
    loop.append(loop)
    for value in (big, loop, "x" * 10**7, {"k": big}):
        assert len(short_repr(value)) <= 80
    assert short_repr("yes") == "'yes'"


def test_prompt_entry_error_echo_is_capped(tmp_path):
    from flexpaft.prompts import PromptSet

    p = tmp_path / "p.jsonl"
    p.write_text(json.dumps({"template": {"a": "b" * 10**6}}) + "\n")
    with pytest.raises(FlexpaftError) as e:
        PromptSet.load(p)
    assert "entry 1 is not a template" in str(e.value) and len(str(e.value)) < 300


# ---- late errors --------------------------------------------------------------------------------
def test_selection_rules_are_defined_once():
    # The config checks the rule names without torch; the selector applies the same tuple.
    from flexpaft.methods.flexora import select
    from flexpaft.settings import flexora as config

    assert select.RULES is config.SELECTION_RULES


# ---- stored state: checkpoints ------------------------------------------------------------------
@pytest.fixture()
def lora_pair(tiny_model_dir):
    """A tiny LoRA model with an optimizer that has taken one step, and a checkpoint of it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    def build(r: int):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        model = get_peft_model(model, LoraConfig(r=r, target_modules=["q_proj", "v_proj"]))
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-3)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        sum(p.sum() for p in params).backward()
        opt.step()
        return model, opt, sched

    return build


def test_checkpoint_of_another_rank_is_damaged_not_a_traceback(tmp_path, lora_pair):
    from flexpaft.training.checkpoint import Position, load_checkpoint, save_checkpoint

    model2, opt2, sched2 = lora_pair(2)
    save_checkpoint(tmp_path / "ck", model2, opt2, sched2, Position(step=1))
    model4, opt4, sched4 = lora_pair(4)
    with pytest.raises(FlexpaftError, match=r"is damaged \(optim.pt: exp_avg of parameter 0 has"):
        load_checkpoint(tmp_path / "ck", model4, opt4, sched4)


def test_adapter_tensors_of_another_rank_are_damaged(tmp_path, lora_pair):
    from flexpaft.training.checkpoint import load_lora_state, save_lora_state

    model2, _, _ = lora_pair(2)
    (tmp_path / "ck").mkdir()
    save_lora_state(tmp_path / "ck", model2)
    model4, _, _ = lora_pair(4)
    with pytest.raises(FlexpaftError, match=r"adapter.safetensors: .*lora_A.* has shape \[2, "):
        load_lora_state(tmp_path / "ck", model4)


def test_checkpoint_of_the_same_shapes_still_loads(tmp_path, lora_pair):
    from flexpaft.training.checkpoint import Position, load_checkpoint, save_checkpoint

    model, opt, sched = lora_pair(2)
    save_checkpoint(tmp_path / "ck", model, opt, sched, Position(step=1, seconds=2.5))
    again = lora_pair(2)
    assert load_checkpoint(tmp_path / "ck", *again).step == 1


def test_checkpoint_past_the_runs_last_step_is_damaged(tmp_path, shared, capsys):  # noqa: F811
    """Same configuration (the hash matches), but a step the run can never have reached."""
    from flexpaft.settings.train import TrainConfig, config_hash

    c = Case(tmp_path, shared)
    argv = [str(a) for a in c.train()]
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    cfg = load_config(TrainConfig, None, [f"output_dir={c.out}", *sets])
    state = {"step": 10**9, "config_hash": config_hash(cfg)}
    c.file("out/checkpoint/trainer_state.json", json.dumps(state))
    assert main(["-q", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert "step 1000000000 is past this run's 1 steps" in err and len(err.splitlines()) == 1


def test_history_with_a_non_object_line_is_damaged(tmp_path):
    from types import SimpleNamespace

    from flexpaft.training.tracking import RunLog

    (tmp_path / "history.jsonl").write_text('{"step": 1, "loss": 2.0}\n"oops"\n')
    acc = SimpleNamespace(is_main_process=True, log_with=[])
    with pytest.raises(FlexpaftError, match=r"history.jsonl is damaged: line 2 is not a JSON"):
        RunLog(tmp_path, acc, {}, 1, "p")
    (tmp_path / "history.jsonl").write_text('{"step": "1"}\n')
    with pytest.raises(FlexpaftError, match=r"line 1: step is '1', not a number"):
        RunLog(tmp_path, acc, {}, 1, "p")
    # A line torn by a kill mid-append is skipped, as before.
    (tmp_path / "history.jsonl").write_text('{"step": 1}\n{"step": 2, "lo')
    assert RunLog(tmp_path, acc, {}, 5, "p").rows == [{"step": 1}]


def test_partial_results_of_the_same_key_are_checked(tmp_path):
    from flexpaft.evaluation.run import PartialResults

    good = {"id": "t", "text": "x", "accuracy": 0.5, "n": 2, "correct": [1, 0],
            "predictions": [0, 1]}  # fmt: skip
    p = tmp_path / "partial.jsonl"
    p.write_text(
        json.dumps({"key": "k", "result": good}) + "\n{torn\n"
        + json.dumps({"key": "other", "result": {"junk": 1}}) + "\n"
    )  # fmt: skip
    assert PartialResults(p, "k").results["t"].accuracy == 0.5
    p.write_text(json.dumps({"key": "k", "result": {**good, "accuracy": math.inf}}) + "\n")
    with pytest.raises(FlexpaftError, match="line 1: accuracy is inf"):
        PartialResults(p, "k")


# ---- silently wrong data: warnings before the work ---------------------------------------------
def test_duplicate_rows_and_long_prompts_are_warned_before_training(tmp_path, shared, caplog):  # noqa: F811
    c = Case(tmp_path, shared)
    rows = [boolq_rows(2)[0]] * 7 + [boolq_rows(2)[1]]
    argv = c.train("data.max_length=8", source=c.jsonl("d.jsonl", rows))
    assert main(["-q", *[str(a) for a in argv]]) == 0
    err = caplog.text
    assert "flexpaft: warning: 6 of the 8 training examples repeat another one" in err
    assert "checked prompts with their answer are longer than data.max_length=8 tokens" in err


def test_eval_with_a_tiny_max_length_warns(tmp_path, shared, caplog):  # noqa: F811
    c = Case(tmp_path, shared)
    assert main(["-q", *[str(a) for a in c.eval("max_length=4")]]) == 0
    err = caplog.text
    assert "flexpaft: warning: 4 of 4 checked prompts are longer than max_length=4 tokens" in err


def test_no_warning_for_clean_data(tmp_path, shared, caplog):  # noqa: F811
    c = Case(tmp_path, shared)
    assert main(["-q", *[str(a) for a in c.eval()]]) == 0
    assert "flexpaft: warning" not in caplog.text


# ---- prompt files ------------------------------------------------------------------------------
def test_xlsx_round_trip_keeps_templates_starting_with_equals(tmp_path):
    pytest.importorskip("openpyxl")
    from flexpaft.prompts import PromptSet

    texts = ["=Q: {question}? {passage}\nA:", *TEMPLATES]
    PromptSet.from_texts(texts).save(tmp_path / "p.xlsx")
    assert PromptSet.load(tmp_path / "p.xlsx").texts == texts


def test_a_header_row_is_not_read_as_a_template(tmp_path):
    openpyxl = pytest.importorskip("openpyxl")
    from flexpaft.prompts import PromptSet

    wb = openpyxl.Workbook()
    for row in [["Prompt templates"], *[[t] for t in TEMPLATES]]:
        wb.active.append(row)
    wb.save(tmp_path / "h.xlsx")
    assert PromptSet.load(tmp_path / "h.xlsx").texts == [t for t in TEMPLATES]
    (tmp_path / "h.csv").write_text("Prompts\n" + "".join(f'"{t}"\n' for t in TEMPLATES))
    assert PromptSet.load(tmp_path / "h.csv").texts == TEMPLATES
