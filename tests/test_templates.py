import pytest

from flexpaft.errors import FlexpaftError
from flexpaft.prompts import PromptSet, Template, TemplateError
from flexpaft.prompts.template import MAX_TEMPLATE_CHARS
from flexpaft.tasks import AnswerFormat, get_task

BOOLQ = get_task("boolq")
PIQA = get_task("piqa")


def test_render_substitutes_and_keeps_escaped_braces():
    t = Template("Q: {question} {{not a slot}} {question}")
    assert t.slots == ["question", "question"]
    assert t.render({"question": "why"}) == "Q: why {not a slot} why"


@pytest.mark.parametrize(
    "text, problem",
    [
        ("", "template is empty"),
        ("   ", "template is empty"),
        ("no slots here", "no slots"),
        ("Q: {question", "unbalanced braces"),
        ("Q: question}", "unbalanced braces"),
        ("{}", "empty slot"),
        ("{question.__class__}", "not a plain name"),
        ("{question[0]}", "not a plain name"),
        ("{question!r}", "not a plain name"),
        ("{question:>10}", "not a plain name"),
        ("x" * (MAX_TEMPLATE_CHARS + 1) + "{question}", "too long"),
    ],
)
def test_template_problems(text, problem):
    problems = Template(text).problems()
    assert problems and problem in problems[0]


def test_rendering_never_evaluates_code():
    # str.format would resolve attribute access; our parser refuses before rendering anything.
    with pytest.raises(TemplateError):
        Template("{passage.__class__.__mro__}").render({"passage": "x"})


def test_task_slot_problems():
    fmt = AnswerFormat.LABEL_WORDS
    assert Template("{passage}\nQ: {question}?\nAnswer:").problems(BOOLQ, fmt) == []
    p = Template("{passage} {goal} Answer:").problems(BOOLQ, fmt)
    assert any("slot {goal} is not a field of task boolq" in x for x in p)
    assert any("required slot {question} is missing" in x for x in p)
    # letter format needs the options enumerated
    p = Template("Q: {goal}\nA. {sol1}\nAnswer:").problems(PIQA, AnswerFormat.LETTER)
    assert p == ["letter format needs the options: add {options} or {B}"]
    assert Template("Q: {goal}\n{options}\nAnswer:").problems(PIQA, AnswerFormat.LETTER) == []
    with pytest.raises(TemplateError, match="template t1: .*required slot"):
        Template("{passage}", id="t1").validate(BOOLQ, fmt)


def test_render_split_for_cloze():
    t = Template("{before_blank} {option}{after_blank}")
    head, rest = t.render_split(
        {"before_blank": "Ann saw", "option": "Bob", "after_blank": " run."}, "option"
    )
    assert (head, rest) == ("Ann saw ", "Bob run.")


@pytest.mark.parametrize("ext", ["jsonl", "yaml", "txt", "csv", "xlsx"])
def test_promptset_roundtrip(tmp_path, ext):
    texts = ["Q: {question}\nAnswer:", 'He said "{question}", ok?', "{passage}, {question}\n\nA:"]
    ps = PromptSet.from_texts(texts)
    path = ps.save(tmp_path / f"set.{ext}")
    assert PromptSet.load(path).texts == texts


def test_literal_backslash_n_becomes_newline(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"template": "Q: {question}\\\\nAnswer:"}\n')  # file holds a literal backslash-n
    assert PromptSet.load(f).texts == ["Q: {question}\nAnswer:"]


def test_dedupe_and_empty_rows(tmp_path):
    f = tmp_path / "p.csv"
    f.write_text(
        'template\n"{question} A:"\n""\n"{question} A:"\n" {question} A: "\n"{question} B:"\n'
    )
    ps = PromptSet.load(f)
    assert len(ps) == 4  # the empty row is dropped on load
    assert PromptSet.load(f).deduplicate().texts == ["{question} A:", "{question} B:"]


def test_split_is_template_level_seeded_and_disjoint():
    ps = PromptSet.from_texts([f"T{i}: {{question}}" for i in range(90)])
    train, test = ps.split(1 / 9, seed=3)
    assert len(test) == 10 and len(train) == 80
    assert not set(train.texts) & set(test.texts)
    assert set(train.texts) | set(test.texts) == set(ps.texts)
    assert ps.split(1 / 9, seed=3)[1].texts == test.texts
    assert ps.split(1 / 9, seed=4)[1].texts != test.texts


def test_split_too_small():
    with pytest.raises(FlexpaftError, match="too small to split"):
        PromptSet.from_texts(["{question}"]).split()
    with pytest.raises(FlexpaftError, match="too small to split"):
        PromptSet.from_texts(["{question}", "{question}?"]).split(0.1, min_test=5)


def test_load_errors(tmp_path):
    with pytest.raises(FlexpaftError, match="prompt set not found"):
        PromptSet.load(tmp_path / "none.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"template": "x"}\n{oops\n')
    with pytest.raises(FlexpaftError, match=r"bad.jsonl:2: invalid JSON"):
        PromptSet.load(bad)
    with pytest.raises(FlexpaftError, match="unknown prompt-set format"):
        PromptSet.load(__file__)
