import json

import pytest
from conftest import SHARED_DATA, needs_shared, write_jsonl

from flexpaft.errors import FlexpaftError
from flexpaft.prompts import Template
from flexpaft.render import render
from flexpaft.tasks import AnswerFormat, get_task, load_examples, load_task, split_examples


def test_boolq_normalize_bool_gold():
    t = get_task("boolq")
    ex = t.normalize({"question": "is it", "passage": "p", "answer": False})
    assert ex.options == ["yes", "no"] and ex.gold == 1
    assert ex.fields["label_words"] == "yes or no"
    assert t.answer_strings(ex, AnswerFormat.LABEL_WORDS) == ["yes", "no"]
    assert t.answer_strings(ex, AnswerFormat.LETTER) == ["A", "B"]


def test_winogrande_aliases_and_blank():
    t = get_task("winogrande")
    ex = t.normalize(
        {
            "sentence": "Ann gave Bea a gift because _ was kind.",
            "option1": "Ann",
            "option2": "Bea",
            "answer": "2",
        }
    )
    assert ex.gold == 1
    assert ex.fields["prompt"] == ex.fields["sentence"]
    assert (ex.fields["only_option1"], ex.fields["only_option2"]) == ("Ann", "Bea")
    assert ex.fields["before_blank"] == "Ann gave Bea a gift because"
    assert ex.fields["after_blank"] == " was kind."
    # The PAFT paper's OpenCompass-style slot names validate for this task.
    tpl = Template("{prompt}\nA. {only_option1}\nB. {only_option2}\nAnswer:")
    assert tpl.problems(t, AnswerFormat.LETTER) == []


def test_hellaswag_endings_are_A_to_D():
    t = get_task("hellaswag")
    ex = t.normalize(
        {
            "ctx": "He runs",
            "activity_label": "Running",
            "endings": ["a", "b", "c", "d"],
            "label": "2",
        }
    )
    assert [ex.fields[k] for k in "ABCD"] == ["a", "b", "c", "d"] and ex.gold == 2
    assert ex.fields["options"] == "A. a\nB. b\nC. c\nD. d"


def test_arc_gold_by_label_including_numeric_labels():
    t = get_task("arc_easy")
    rec = {
        "question": "q",
        "choices": {"text": ["w", "x", "y"], "label": ["1", "2", "3"]},
        "answerKey": "3",
    }
    assert t.normalize(rec).gold == 2


def test_gold_outside_choices_is_an_error():
    t = get_task("piqa")
    with pytest.raises(FlexpaftError, match="gold answer outside the 2 choices"):
        t.normalize({"goal": "g", "sol1": "a", "sol2": "b", "label": 2}, uid="7")
    with pytest.raises(FlexpaftError, match="has no field 'sol2'"):
        t.normalize({"goal": "g", "sol1": "a", "label": 0})


def test_unknown_task_and_format():
    with pytest.raises(FlexpaftError, match="unknown task 'nope'"):
        get_task("nope")
    with pytest.raises(FlexpaftError, match="does not support the label_words format"):
        get_task("piqa").check_format(AnswerFormat.LABEL_WORDS)
    with pytest.raises(FlexpaftError, match="unknown answer format"):
        AnswerFormat.parse("essay")


def test_custom_task_yaml_and_local_csv(tmp_path):
    spec = tmp_path / "sentiment.yaml"
    spec.write_text(
        "name: sentiment\nfields: [review]\nrequired: [review]\nfixed_options: [positive, negative]\n"
        "label_words: [positive, negative]\ngold: label\ngold_kind: text\n"
        "formats: [label_words]\ndefault_format: label_words\n"
        'templates:\n  label_words: "Review: {review}\\nSentiment:"\n'
    )
    data = tmp_path / "d.csv"
    data.write_text("review,label\ngreat film,positive\nawful,negative\n")
    task = load_task(str(spec))
    exs = load_examples(task, str(data))
    assert [e.gold for e in exs] == [0, 1]
    assert (
        Template(task.templates["label_words"]).render(exs[0].fields)
        == "Review: great film\nSentiment:"
    )


def test_local_file_errors(tmp_path):
    t = get_task("boolq")
    with pytest.raises(FlexpaftError, match="data file not found"):
        load_examples(t, str(tmp_path / "none.jsonl"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(FlexpaftError):
        load_examples(t, str(empty))
    txt = tmp_path / "data.txt"
    txt.write_text("x")
    with pytest.raises(FlexpaftError, match="unsupported data file type"):
        load_examples(t, str(txt))


def test_parquet_and_json_sources(tmp_path):
    import pandas as pd

    rows = [{"goal": "g", "sol1": "a", "sol2": "b", "label": 1}]
    pd.DataFrame(rows).to_parquet(tmp_path / "p.parquet")
    (tmp_path / "p.json").write_text(json.dumps(rows))
    t = get_task("piqa")
    assert load_examples(t, str(tmp_path / "p.parquet"))[0].gold == 1
    assert load_examples(t, str(tmp_path / "p.json"))[0].options == ["a", "b"]


def test_split_examples_disjoint(tmp_path):
    t = get_task("boolq")
    rows = [{"question": f"q{i}", "passage": "p", "answer": True} for i in range(10)]
    exs = load_examples(t, str(write_jsonl(tmp_path / "b.jsonl", rows)))
    rest, held = split_examples(exs, 3, seed=1)
    assert len(rest) == 7 and len(held) == 3
    assert not {e.fields["question"] for e in rest} & {e.fields["question"] for e in held}
    with pytest.raises(FlexpaftError, match="cannot hold out"):
        split_examples(exs, 10)


@needs_shared
@pytest.mark.parametrize(
    "name",
    [
        "boolq",
        "piqa",
        "winogrande",
        "arc_easy",
        "arc_challenge",
        "commonsense_qa",
        "openbookqa",
        "copa",
    ],
)
def test_builtin_tasks_read_shared_data(name):
    task = get_task(name)
    exs = load_examples(task, str(SHARED_DATA / f"{name}.jsonl"))
    assert len(exs) >= 100
    for ex in exs[:50]:
        assert 0 <= ex.gold < len(ex.options)
    for fmt, text in task.templates.items():
        tpl = Template(text)
        assert tpl.problems(task, AnswerFormat(fmt)) == []
        r = render(task, tpl, exs[0], AnswerFormat(fmt))
        assert r.prompt and len(r.answers) == len(exs[0].options)


def test_max_field_chars_shortens_at_word_boundary(tmp_path):
    from flexpaft.settings.common import DataSettings, shorten

    assert shorten("the quick brown fox jumps", 12) == "the quick..."
    assert shorten("short", 12) == "short"
    rows = [{"question": "is it", "passage": "word " * 100, "answer": True}]
    d = DataSettings(
        task="boolq", source=str(write_jsonl(tmp_path / "b.jsonl", rows)), max_field_chars=50
    )
    _, _, exs = d.load()
    assert len(exs[0].fields["passage"]) <= 50 and exs[0].fields["passage"].endswith("...")
    assert exs[0].fields["question"] == "is it"
