"""Bring your own task: the shipped example (docs/TASKS.md) runs, and each mistake a task YAML can
hold is reported naming the key that fixes it."""

import json
from pathlib import Path

import pytest
from conftest import write_jsonl

from flexpaft.cli import main
from flexpaft.errors import FlexpaftError
from flexpaft.tasks import AnswerFormat, TaskSpec, load_task

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_TASK = ROOT / "configs" / "tasks" / "intent_example.yaml"
EXAMPLE_DATA = ROOT / "configs" / "data" / "intent_example.jsonl"
LABELS = ["playlist", "restaurant", "weather", "music", "book", "search", "movie"]

# The worked example of docs/TASKS.md, minus what each test changes.
BASE = (
    "name: intents\n"
    "fields: [text]\n"
    "required: [text]\n"
    "fixed_options: [weather, music]\n"
    "label_words: [weather, music]\n"
    "gold: intent\n"
    "gold_kind: text\n"
    "formats: [label_words, letter]\n"
    "default_format: label_words\n"
)


def _task_file(tmp_path, text, name="task.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _cli(capsys, *argv):
    code = main(["-q", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


# ---- the shipped example ---------------------------------------------------------------------
def test_example_task_reads_its_data_through_the_config_path():
    from flexpaft.settings.loading import load_config
    from flexpaft.settings.train import TrainConfig

    cfg = load_config(
        TrainConfig, None, [f"data.task={EXAMPLE_TASK}", f"data.source={EXAMPLE_DATA}"]
    )
    task, fmt, examples = cfg.data.load("train")
    rows = [json.loads(line) for line in EXAMPLE_DATA.read_text().splitlines()]
    assert fmt is AnswerFormat.LABEL_WORDS
    assert len(examples) == len(rows) == 21
    # Every example's gold index points at its row's intent word (order after the data shuffle).
    by_text = {r["text"]: r["intent"] for r in rows}
    for ex in examples:
        assert ex.options == LABELS
        assert LABELS[ex.gold] == by_text[ex.fields["text"]]
    assert sorted({LABELS[ex.gold] for ex in examples}) == sorted(LABELS)


def test_example_task_validates_with_its_data(tmp_path, capsys):
    task = load_task(str(EXAMPLE_TASK))
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"template": t} for t in task.templates.values()])
    code, out, err = _cli(
        capsys, "prompts", "validate", prompts, "--task", EXAMPLE_TASK, "--data", EXAMPLE_DATA
    )
    assert code == 0, err
    assert f"21 rows of {EXAMPLE_DATA} fit task intent_example (label_words)" in out
    assert "3 valid, 0 invalid" in out


def test_task_and_data_validate_without_a_prompt_set(tmp_path, capsys):
    code, out, err = _cli(
        capsys, "prompts", "validate", "--task", EXAMPLE_TASK, "--data", EXAMPLE_DATA
    )
    assert code == 0, err
    assert f"21 rows of {EXAMPLE_DATA} fit task intent_example (label_words)" in out
    assert "flexpaft prompts generate --task" in out
    # Neither a prompt set nor data: one line naming both ways.
    code, _, err = _cli(capsys, "prompts", "validate", "--task", EXAMPLE_TASK)
    assert code == 2 and "or --data FILE" in err and len(err.strip().splitlines()) == 1


def test_example_task_trains_on_the_tiny_model(tmp_path, tiny_model_dir, capsys):
    code, out, err = _cli(
        capsys,
        "train",
        "-o",
        tmp_path / "run",
        *sum(
            (
                ["--set", s]
                for s in [
                    f"model.name={tiny_model_dir}",
                    f"data.task={EXAMPLE_TASK}",
                    f"data.source={EXAMPLE_DATA}",
                    "optim.max_steps=1",
                    "optim.batch_size=4",
                    "optim.num_workers=0",
                ]
            ),
            [],
        ),
    )
    assert code == 0, err
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["steps"] == 1


# ---- mistakes in the definition, each naming its key ------------------------------------------
@pytest.mark.parametrize(
    "change, message",
    [
        # A gold_kind typo was found only at the first row, without the accepted values.
        (
            ("gold_kind: text", "gold_kind: label"),
            "gold_kind 'label' is not one of index, one_based, letter, bool, option_label, text",
        ),
        # The label_words format without the words it scores.
        (
            ("label_words: [weather, music]\n", ""),
            "the label_words format needs label_words, one answer word per option",
        ),
        (
            ("formats: [label_words, letter]", "formats: [letter]"),
            "default_format label_words is not among formats (letter); add it to formats",
        ),
        (
            ("label_words: [weather, music]", "label_words: [weather, music, news]"),
            "3 label_words for 2 fixed_options; give one word per option",
        ),
        (("fixed_options: [weather, music]\n", ""), "has no options: set fixed_options"),
        (
            ("gold_kind: text", "gold_kind: option_label"),
            "gold_kind option_label needs option_labels",
        ),
        (
            ("required: [text]", "required: [utterance]"),
            "required slot 'utterance' is not in fields",
        ),
        # YAML reads a bare word as a string, which tuple() would split into letters.
        (("fields: [text]", "fields: text"), "fields must be a list (YAML: fields: [a, b])"),
        # YAML 1.1 reads yes/no as booleans.
        (
            ("fixed_options: [weather, music]", "fixed_options: [yes, no]"),
            "fixed_options[0] is true: YAML reads yes/no/on/off as true/false, so quote the word",
        ),
        (("gold: intent", "gold: [intent]"), "gold must be a string"),
        (
            (
                "default_format: label_words\n",
                "default_format: label_words\ntemplates:\n  words: x\n",
            ),
            "templates key 'words' is not an answer format",
        ),
    ],
)
def test_definition_mistake_names_the_key(tmp_path, change, message):
    old, new = change
    assert old in BASE
    path = _task_file(tmp_path, BASE.replace(old, new))
    with pytest.raises(FlexpaftError) as e:
        load_task(str(path))
    assert message in str(e.value)


def test_base_definition_loads(tmp_path):
    # The parametrized mistakes above start from a valid task: only their change is wrong.
    task = load_task(str(_task_file(tmp_path, BASE)))
    assert task.label_words == ("weather", "music") and task.gold_kind == "text"


def test_builtin_tasks_pass_the_definition_checks():
    from flexpaft.tasks import BUILTIN_TASKS

    for task in BUILTIN_TASKS.values():
        task.check_definition()


def test_unsupported_format_says_where_formats_are_listed(tmp_path):
    task = load_task(str(_task_file(tmp_path, BASE)))
    with pytest.raises(FlexpaftError, match="a task YAML lists its formats under formats:"):
        task.check_format(AnswerFormat.GENERATION)


def test_label_words_format_without_words_names_the_key():
    # A spec built in code (no YAML check) still says which key is missing when scored.
    task = TaskSpec(name="t", fields=("x",), fixed_options=("a", "b"))
    ex = task.normalize({"x": "1", "label": 0})
    with pytest.raises(FlexpaftError, match="set label_words"):
        task.answer_strings(ex, AnswerFormat.LABEL_WORDS)


# ---- mistakes in the data, found per row ----------------------------------------------------
def test_gold_written_as_text_under_gold_kind_index_suggests_gold_kind_text(tmp_path):
    task = load_task(str(_task_file(tmp_path, BASE.replace("gold_kind: text", "gold_kind: index"))))
    with pytest.raises(FlexpaftError) as e:
        task.normalize({"text": "rain?", "intent": "weather"})
    assert "not an integer choice index (gold_kind: index)" in str(e.value)
    assert "needs gold_kind: text" in str(e.value)


def test_gold_text_that_is_no_option_lists_the_options(tmp_path):
    task = load_task(str(_task_file(tmp_path, BASE)))
    with pytest.raises(FlexpaftError) as e:
        task.normalize({"text": "rain?", "intent": "Weather"})
    assert "not one of the options ['weather', 'music'] (gold_kind: text matches exactly)" in str(
        e.value
    )


@pytest.mark.parametrize(
    "rows, message",
    [
        (
            ['{"text": "rain?", "intent": "weather"}', "", '{"text": "jazz", "intent": "jazz"}'],
            "line 3: has gold 'intent' = 'jazz', which is not one of the options",
        ),
        (
            ['{"text": "rain?", "intent": "weather"}', '{"txt": "jazz", "intent": "music"}'],
            "line 2: has an empty (null) 'text'",  # datasets fills a missing key with null
        ),
        (
            ['{"text": ["rain", "?"], "intent": "weather"}'],
            "line 1: has a list in 'text' where text belongs",
        ),
    ],
)
def test_validate_data_reports_the_first_bad_row_by_line(tmp_path, capsys, rows, message):
    task = _task_file(tmp_path, BASE)
    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(rows) + "\n")
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"template": "{text}\nIntent:"}])
    code, out, err = _cli(capsys, "prompts", "validate", prompts, "--task", task, "--data", data)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"flexpaft: error: {data} ")
    assert message in err and "(task intents)" in err


def test_validate_data_checks_label_words_against_each_rows_options(tmp_path, capsys):
    # Options read per row (a list field): a row with more choices than label words cannot be
    # scored in the label_words format.
    task = _task_file(
        tmp_path,
        "name: pick\nfields: [q]\noptions: choices\nlabel_words: [first, second]\n"
        "formats: [label_words, letter]\ndefault_format: label_words\n",
    )
    data = write_jsonl(
        tmp_path / "rows.jsonl",
        [
            {"q": "a", "choices": ["x", "y"], "label": 0},
            {"q": "b", "choices": ["x", "y", "z"], "label": 2},
        ],
    )
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"template": "{q}\nAnswer:"}])
    code, _, err = _cli(capsys, "prompts", "validate", prompts, "--task", task, "--data", data)
    assert code == 2
    assert "line 2: has 3 options but the task has 2 label_words (one per option)" in err
    # In the letter format the same rows are fine.
    letter = write_jsonl(tmp_path / "l.jsonl", [{"template": "{q}\n{options}\nAnswer:"}])
    code, out, err = _cli(
        capsys, "prompts", "validate", letter, "--task", task, "--data", data, "--format", "letter"
    )
    assert code == 0, err
    assert f"2 rows of {data} fit task pick (letter)" in out


def test_default_format_is_the_first_listed_format(tmp_path):
    # Listing formats without a default_format meant letter, which such a task may not support.
    task = load_task(str(_task_file(tmp_path, BASE.replace("default_format: label_words\n", ""))))
    assert task.default_format is AnswerFormat.LABEL_WORDS
