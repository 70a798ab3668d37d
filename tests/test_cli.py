"""One end-to-end test per command, plus the bad-input contract: one line, exit 2, nothing lost."""

import json

import pytest
from conftest import boolq_rows, build_model, build_tokenizer, write_jsonl

from flexpaft.cli import main

TEMPLATES = [
    "{passage}\nQuestion: {question}?\nAnswer:",
    "Passage: {passage}\nQ: {question}?\nA:",
    "Read: {passage}\nIs it true: {question}?\nReply yes or no:",
    "{question}? Context: {passage}\nAnswer:",
]


@pytest.fixture
def boolq_files(tmp_path):
    data = write_jsonl(tmp_path / "boolq.jsonl", boolq_rows(24))
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"template": t} for t in TEMPLATES])
    return data, prompts


def run(capsys, *argv):
    code = main(["-q", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_train_then_eval(tmp_path, tiny_model_dir, boolq_files, capsys):
    data, prompts = boolq_files
    common = [f"model.name={tiny_model_dir}", f"data.source={data}", "data.limit=16"]
    code, out, err = run(
        capsys,
        "train",
        "--method",
        "paft",
        "-o",
        tmp_path / "run",
        *sum(
            (
                ["--set", s]
                for s in common
                + [
                    f"prompts.prompt_set={prompts}",
                    "optim.max_steps=2",
                    "optim.batch_size=4",
                    "optim.num_workers=0",
                ]
            ),
            [],
        ),
    )
    assert code == 0, err
    assert "adapter:" in out and (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["method"] == "paft" and manifest["templates"]["count"] == 4

    code, out, err = run(
        capsys,
        "eval",
        "--adapter",
        tmp_path / "run" / "adapter",
        "-o",
        tmp_path / "ev",
        *sum(
            (
                ["--set", s]
                for s in [
                    f"model.name={tiny_model_dir}",
                    f"data.source={data}",
                    "data.skip=16",
                    f"prompt_set={prompts}",
                    "reference_template=default",
                ]
            ),
            [],
        ),
    )
    assert code == 0, err
    res = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert len(res["per_template"]) == 4 and all(t["n"] == 8 for t in res["per_template"])
    assert "reference" in res and "| template | accuracy |" in out
    assert (tmp_path / "ev" / "results.md").is_file()


def test_prompts_validate_split_convert_generate(tmp_path, boolq_files, capsys):
    _, prompts = boolq_files
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"template": TEMPLATES[0]}, {"template": "{goal}?"}])
    code, out, _ = run(capsys, "prompts", "validate", bad, "--task", "boolq")
    assert (
        code == 1
        and "slot {goal} is not a field of task boolq" in out
        and "1 valid, 1 invalid" in out
    )
    code, out, _ = run(capsys, "prompts", "validate", prompts, "--task", "boolq")
    assert code == 0 and "4 valid, 0 invalid" in out

    code, out, _ = run(
        capsys, "prompts", "split", prompts, "--test-fraction", "0.25", "--out", tmp_path / "s"
    )
    assert code == 0 and "3 train and 1 test" in out

    code, _, _ = run(capsys, "prompts", "convert", prompts, tmp_path / "p.xlsx")
    assert code == 0
    code, _, _ = run(capsys, "prompts", "convert", tmp_path / "p.xlsx", tmp_path / "p.yaml")
    assert code == 0
    from flexpaft.prompts import PromptSet

    assert PromptSet.load(tmp_path / "p.yaml").texts == TEMPLATES

    code, _, err = run(
        capsys,
        "prompts",
        "generate",
        "--task",
        "boolq",
        "--format",
        "label_words",
        "--n",
        "60",
        "--split",
        "0.2",
        "--min-test",
        "5",
        "--out",
        tmp_path / "gen",
    )
    assert code == 0, err
    assert len(PromptSet.load(tmp_path / "gen" / "test.jsonl")) >= 5


@pytest.fixture
def other_adapter(tmp_path):
    """An adapter trained for a model of another shape (vocabulary and width differ)."""
    from peft import LoraConfig, get_peft_model

    tok = build_tokenizer()
    model = build_model(len(tok) + 64, layers=2)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    peft_model.save_pretrained(tmp_path / "other")
    return tmp_path / "other"


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing_file", "data file not found"),
        ("unknown_task", "unknown task 'nosuchtask'"),
        ("bad_slot", "slot {goal} is not a field of task boolq"),
        ("other_adapter", "does not fit this base model"),
        ("empty_dataset", "is empty"),
        ("gold_outside", "gold answer outside the 2 choices"),
        ("malformed_yaml", "malformed YAML"),
        ("missing_adapter", "adapter not found"),
    ],
)
def test_bad_input_one_line_exit_2(
    case, message, tmp_path, tiny_model_dir, boolq_files, other_adapter, capsys
):
    data, prompts = boolq_files
    base = [
        "--set",
        f"model.name={tiny_model_dir}",
        "--set",
        "optim.max_steps=1",
        "--set",
        "optim.num_workers=0",
    ]
    argv = ["train", "-o", tmp_path / "r", "--set", f"data.source={data}", *base]
    if case == "missing_file":
        argv = ["train", "--set", f"data.source={tmp_path / 'nope.jsonl'}", *base]
    elif case == "unknown_task":
        argv += ["--set", "data.task=nosuchtask"]
    elif case == "bad_slot":
        argv += ["--set", "prompts.template={goal} Answer:"]
    elif case == "other_adapter":
        argv = [
            "eval",
            "--adapter",
            other_adapter,
            "--set",
            f"model.name={tiny_model_dir}",
            "--set",
            f"data.source={data}",
            "-o",
            tmp_path / "ev",
        ]
    elif case == "missing_adapter":
        argv = [
            "eval",
            "--adapter",
            tmp_path / "none",
            "--set",
            f"model.name={tiny_model_dir}",
            "--set",
            f"data.source={data}",
            "-o",
            tmp_path / "ev",
        ]
    elif case == "empty_dataset":
        (tmp_path / "empty.jsonl").write_text("")
        argv = ["train", "--set", f"data.source={tmp_path / 'empty.jsonl'}", *base]
    elif case == "gold_outside":
        rows = [{"goal": "g", "sol1": "a", "sol2": "b", "label": 3}]
        argv += [
            "--set",
            "data.task=piqa",
            "--set",
            f"data.source={write_jsonl(tmp_path / 'p.jsonl', rows)}",
        ]
    elif case == "malformed_yaml":
        cfg = tmp_path / "c.yaml"
        cfg.write_text("optim: {lr: 1e-4\n")
        argv = ["train", "--config", cfg]
    code, _, err = run(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("flexpaft: error:") and message in lines[0], err
    assert "Traceback" not in err


def test_failed_eval_keeps_earlier_results(tmp_path, tiny_model_dir, boolq_files, capsys):
    data, prompts = boolq_files
    args = [
        "eval",
        "-o",
        tmp_path / "ev",
        "--set",
        f"model.name={tiny_model_dir}",
        "--set",
        f"data.source={data}",
    ]
    assert run(capsys, *args)[0] == 0
    before = (tmp_path / "ev" / "results.json").read_text()
    code, _, _ = run(capsys, *args, "--set", "prompt_set=/no/such/file.jsonl")
    assert code == 2 and (tmp_path / "ev" / "results.json").read_text() == before


def test_help_lists_config_keys(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "optim.lr" in out and "prompts.mode" in out


def test_generate_with_base_accuracy_floor(tmp_path, tiny, tiny_model_dir, boolq_files, capsys):
    from flexpaft.evaluation.evaluator import evaluate_templates
    from flexpaft.prompts import PromptSet
    from flexpaft.tasks import AnswerFormat, get_task, load_examples

    data, _ = boolq_files
    args = [
        "prompts",
        "generate",
        "--task",
        "boolq",
        "--format",
        "label_words",
        "--n",
        "24",
        "--split",
        "0.25",
        "--min-test",
        "2",
        "--adversarial",
        "0",
        "--out",
        tmp_path / "g",
        "--score-model",
        tiny_model_dir,
        "--score-data",
        data,
        "--score-examples",
        "8",
    ]
    code, _, err = run(capsys, *args, "--min-base-accuracy", "0.5")
    assert code == 0, err
    report = json.loads((tmp_path / "g" / "filter_report.json").read_text())
    cands = PromptSet.load(tmp_path / "g" / "candidates.jsonl")
    # Independent check: the base-model accuracy the filter used is what the evaluator gives,
    # and exactly the templates under the floor were dropped for it.
    task = get_task("boolq")
    exs = load_examples(task, str(data), shuffle=True, seed=0)[:8]
    res = evaluate_templates(
        *tiny, task, AnswerFormat.LABEL_WORDS, list(cands), exs, progress=False
    )
    ours = {t.id: a for t, a in zip(cands, res.accuracies)}
    assert report["scores"] == pytest.approx(ours)
    assert report["counts"]["low_score"] == sum(a < 0.5 for a in ours.values())
    code, _, err = run(
        capsys,
        "prompts",
        "generate",
        "--task",
        "boolq",
        "--out",
        tmp_path / "h",
        "--min-base-accuracy",
        "0.5",
    )
    assert code == 2 and "needs --score-data" in err


def test_interrupted_evaluation_resumes_per_template(tmp_path, tiny_model_dir, boolq_files, capsys):
    from flexpaft.evaluation.evaluator import TemplateResult
    from flexpaft.evaluation.run import EvalConfig, PartialResults, _resume_key
    from flexpaft.prompts import PromptSet
    from flexpaft.settings.loading import load_config

    data, prompts = boolq_files
    sets = [
        "--set",
        f"model.name={tiny_model_dir}",
        "--set",
        f"data.source={data}",
        "--set",
        f"prompt_set={prompts}",
    ]
    cfg = load_config(
        EvalConfig, None, [s for s in sets if s != "--set"] + [f"output_dir={tmp_path / 'ev'}"]
    )
    _, _, examples = cfg.data.load()
    first = PromptSet.load(prompts)[0]
    # A result "already computed" by an interrupted run, with a marker accuracy no model gives.
    planted = TemplateResult(
        first.id, first.text, 0.123, len(examples), [0] * len(examples), [0] * len(examples)
    )
    partial = PartialResults(tmp_path / "ev" / "partial.jsonl", _resume_key(cfg, examples))
    partial.add(planted)
    with open(partial.path, "a") as f:
        f.write('{"key": "torn')  # killed mid-write
    code, _, err = run(capsys, "eval", "-o", tmp_path / "ev", *sets)
    assert code == 0, err
    res = json.loads((tmp_path / "ev" / "results.json").read_text())
    by_id = {t["id"]: t["accuracy"] for t in res["per_template"]}
    assert by_id[first.id] == 0.123 and len(by_id) == 4  # reused, the other three scored
    assert not partial.path.exists()  # finished: nothing left to resume
    # Another configuration (other examples) must not reuse it.
    other = load_config(EvalConfig, None, [s for s in sets if s != "--set"] + ["data.limit=5"])
    assert _resume_key(other, other.data.load()[2]) != partial.key


def test_evaluate_templates_skips_done_and_reports_new(tiny):
    from flexpaft.evaluation.evaluator import evaluate_templates
    from flexpaft.prompts import Template
    from flexpaft.tasks import AnswerFormat, get_task

    task = get_task("boolq")
    exs = [task.normalize(r) for r in boolq_rows(6)]
    ts = [Template(t, f"t{i}") for i, t in enumerate(TEMPLATES)]
    full = evaluate_templates(
        *tiny, task, AnswerFormat.LABEL_WORDS, ts, exs, progress=False, pairs_per_call=6
    )
    seen = []
    done = {"t1": full.per_template[1]}
    again = evaluate_templates(
        *tiny,
        task,
        AnswerFormat.LABEL_WORDS,
        ts,
        exs,
        progress=False,
        pairs_per_call=6,
        done=done,
        on_result=lambda r: seen.append(r.id),
    )
    assert seen == ["t0", "t2", "t3"]  # t1 was not scored again
    assert again.accuracies == full.accuracies
