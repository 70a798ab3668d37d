import re

import pytest

from flexpaft.errors import FlexpaftError
from flexpaft.prompts.generate.filters import normalize_text
from flexpaft.prompts.generate.offline import generate_offline, recase
from flexpaft.prompts.generate.phrasings import load_bank
from flexpaft.prompts.template import Template
from flexpaft.tasks import BUILTIN_TASKS, AnswerFormat, TaskSpec

ALL = [(name, fmt) for name, task in BUILTIN_TASKS.items() for fmt in task.formats]

PIQA_RECORD = {
    "goal": "Dry wet shoes",
    "sol1": "Stuff them with paper.",
    "sol2": "Boil them.",
    "label": 0,
}


@pytest.mark.parametrize("name,fmt", ALL, ids=[f"{n}-{f.value}" for n, f in ALL])
def test_every_builtin_task_and_format_gives_300_valid_distinct_candidates(name, fmt):
    task = BUILTIN_TASKS[name]
    ps = generate_offline(task, fmt, n=300, seed=0)
    assert len(ps) == 300
    for t in ps:
        assert t.problems(task, fmt) == [], t.text
        assert t.text == t.text.rstrip(), "the answer is appended after the cue"
    # Distinct even after normalizing case, spacing and punctuation.
    assert len({normalize_text(t.text) for t in ps}) == 300


def test_deterministic_for_a_seed():
    task = BUILTIN_TASKS["piqa"]
    a = generate_offline(task, AnswerFormat.LETTER, 50, seed=3)
    b = generate_offline(task, AnswerFormat.LETTER, 50, seed=3)
    c = generate_offline(task, AnswerFormat.LETTER, 50, seed=4)
    assert a.texts == b.texts
    assert a.texts != c.texts


def test_letter_markers_are_upper_case_letters_in_order():
    task = BUILTIN_TASKS["piqa"]
    markers = load_bank()["format"]["option_markers"]
    schemes = [("{A}", "{B}"), ("{sol1}", "{sol2}")]
    for t in generate_offline(task, AnswerFormat.LETTER, 300, seed=0):
        # Exactly one marker style and one slot naming scheme, upper-case letters, A before B.
        found = [
            (m, a, b)
            for m in markers
            for a, b in schemes
            if m.replace("@", "A") + a in t.text and m.replace("@", "B") + b in t.text
        ]
        assert found, t.text
        m, a, b = found[0]
        assert t.text.index(a) < t.text.index(b)


def test_variable_option_count_uses_the_options_slot():
    # ARC has 3 to 5 choices, so per-option slots {A}..{E} would render empty options.
    task = BUILTIN_TASKS["arc_easy"]
    for t in generate_offline(task, AnswerFormat.LETTER, 100, seed=0):
        assert "{options}" in t.text and "{E}" not in t.text


def test_formats_follow_their_rules():
    cues = [c.lower() for c in load_bank()["cues"]["label_words"]]
    boolq = generate_offline(BUILTIN_TASKS["boolq"], AnswerFormat.LABEL_WORDS, 200, seed=0)
    with_cue = [t for t in boolq if any(t.text.lower().endswith(c) for c in cues)]
    # Label words may end without a cue (FLAN-style), about a fifth of the time; most have one.
    assert 0.65 * len(boolq) <= len(with_cue) <= 0.92 * len(boolq)
    for t in generate_offline(BUILTIN_TASKS["piqa"], AnswerFormat.OPTION_TEXT, 100, seed=0):
        ot_cues = [c.lower() for c in load_bank()["tasks"]["piqa"]["cues"]["option_text"]]
        # The option text is the continuation of a cue, not of a slot.
        assert any(t.text.lower().endswith(c) for c in ot_cues), t.text
        assert "{sol1}" not in t.text and "{A}" not in t.text and "{options}" not in t.text
    for t in generate_offline(BUILTIN_TASKS["winogrande"], AnswerFormat.OPTION_TEXT, 100, seed=0):
        assert t.text.endswith("{before_blank} {option}{after_blank}"), t.text
    for t in generate_offline(BUILTIN_TASKS["race"], AnswerFormat.GENERATION, 100, seed=0):
        assert "{option_letters}" in t.text or "letter" in t.text.lower(), t.text
    for t in generate_offline(BUILTIN_TASKS["boolq"], AnswerFormat.GENERATION, 100, seed=0):
        assert "{label_words}" in t.text, t.text


def test_boolq_structures_vary_beyond_wording():
    texts = generate_offline(BUILTIN_TASKS["boolq"], AnswerFormat.LABEL_WORDS, 300, seed=0).texts
    question_first = [t for t in texts if t.index("{question}") < t.index("{passage}")]
    assert 0.2 * len(texts) <= len(question_first) <= 0.4 * len(texts)
    assert any("<" in t and "</" in t for t in texts), "xml-style markup"
    assert any("### " in t for t in texts), "markdown headings"
    assert any("\n" not in t for t in texts), "everything on one line"
    assert any("\n- yes\n- no" in t.lower() for t in texts), "a FLAN-style word list"
    # The instruction does not always lead: some templates start with a field.
    assert any(t.startswith(("{", "[", "<", "###")) for t in texts)


def test_rendered_piqa_prompt_shows_goal_options_and_ends_with_cue():
    task = BUILTIN_TASKS["piqa"]
    example = task.normalize(PIQA_RECORD)
    t = generate_offline(task, AnswerFormat.LETTER, 1, seed=0)[0]
    text = t.render(example.fields)
    assert "Dry wet shoes" in text
    assert text.index("Stuff them with paper.") < text.index("Boil them.")
    assert not text.endswith(" ") and "{" not in text


def test_unsupported_format_is_a_user_error():
    with pytest.raises(FlexpaftError, match="does not support the label_words format"):
        generate_offline(BUILTIN_TASKS["piqa"], AnswerFormat.LABEL_WORDS, 10, seed=0)


def test_custom_task_gets_a_generic_bank():
    task = TaskSpec.from_mapping(
        {
            "name": "my_sentiment",
            "description": "Is the {review} positive?",  # braces must come out literal
            "fields": ["review"],
            "required": ["review"],
            "fixed_options": ["positive", "negative"],
            "label_words": ["positive", "negative"],
            "formats": ["label_words", "letter"],
        }
    )
    ps = generate_offline(task, AnswerFormat.LABEL_WORDS, 60, seed=0)
    assert len(ps) == 60
    assert all(t.problems(task, AnswerFormat.LABEL_WORDS) == [] for t in ps)
    rendered = [t.render(task.normalize({"review": "Great", "label": 0}).fields) for t in ps]
    assert any("Is the {review} positive?" in r for r in rendered)
    # Its answers are positive/negative, so no cue may ask for yes or no.
    assert not any("yes or no" in t.text.lower() for t in ps)
    yes_no = TaskSpec.from_mapping(
        {
            "name": "my_yes_no",
            "description": "Is the review positive?",
            "fields": ["review"],
            "required": ["review"],
            "fixed_options": ["yes", "no"],
            "label_words": ["yes", "no"],
            "formats": ["label_words"],
        }
    )
    yes_no_set = generate_offline(yes_no, AnswerFormat.LABEL_WORDS, 200, seed=0)
    assert any("yes or no" in t.text.lower() for t in yes_no_set)


def test_recase_changes_literal_text_only():
    assert recase("Pick {option_letters}. Use {A}", "upper") == "PICK {option_letters}. USE {A}"
    assert recase("Keep {{Braces}} {Goal}", "lower") == "keep {{braces}} {Goal}"
    assert Template(recase("Keep {{Braces}} {Goal}", "lower")).slots == ["Goal"]


# ---- the `prompts generate` command, offline ----------------------------------------------------
def _cli(argv):
    import argparse

    from flexpaft.commands import prompts_generate as generate_cmd

    parser = argparse.ArgumentParser()
    generate_cmd.add_arguments(parser)
    return generate_cmd.run(parser.parse_args(argv))


def test_generate_command_offline_writes_every_output(tmp_path):
    import json

    from flexpaft.prompts.promptset import PromptSet

    out = tmp_path / "out"
    argv = ["--task", "boolq", "--n", "120", "--split", "1/9", "--min-test", "20"]
    assert _cli(argv + ["--adversarial", "2", "--out", str(out)]) == 0
    task, fmt = BUILTIN_TASKS["boolq"], AnswerFormat.LABEL_WORDS  # boolq's default format
    train, test = PromptSet.load(out / "train.jsonl"), PromptSet.load(out / "test.jsonl")
    adv = PromptSet.load(out / "adversarial.jsonl")
    report = json.loads((out / "filter_report.json").read_text())
    assert report["total"] == 120 and report["kept"] == len(train) + len(test)
    # 1/9 of ~118 is 13, below --min-test 20, so the test set has 20.
    assert len(test) == 20 and len(adv) == 40
    assert not set(train.texts) & set(test.texts)
    assert all(t.problems(task, fmt) == [] for t in [*train, *test, *adv])
    rows = [json.loads(x) for x in (out / "candidates.jsonl").read_text().splitlines()]
    assert len(rows) == 120 and {r["source"] for r in rows} == {"offline"}
    assert "candidates kept." in (out / "filter_report.md").read_text()
    # Same seed, same files.
    out2 = tmp_path / "again"
    _cli(argv + ["--adversarial", "2", "--out", str(out2)])
    assert (out2 / "test.jsonl").read_text() == (out / "test.jsonl").read_text()


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--generator", "offline,gpt"], "unknown generator 'gpt'"),
        (["--generator", "openai"], "--generator openai needs --models"),
        (["--split", "9/1"], "--split must be between 0 and 1"),
        (["--near-dup-threshold", "high"], "--near-dup-threshold must be a number or 'off'"),
        (["--format", "label_words"], "does not support the label_words format"),
    ],
)
def test_generate_command_user_errors(tmp_path, argv, message):
    with pytest.raises(FlexpaftError, match=re.escape(message)):
        _cli(["--task", "piqa", "--out", str(tmp_path)] + argv)


def test_a_task_without_a_question_gets_templates_that_name_the_answer_words():
    # A minimal classification task: text and label words, no question, no template of its own.
    from flexpaft.prompts.generate.offline import generate_offline
    from flexpaft.prompts.task_templates import default_template
    from flexpaft.tasks.spec import AnswerFormat, TaskSpec

    words = ["negative", "neutral", "positive"]
    task = TaskSpec.from_mapping(
        {
            "name": "reviews",
            "fields": ["text"],
            "required": ["text"],
            "fixed_options": words,
            "label_words": words,
            "gold": "label",
            "gold_kind": "text",
        }  # fmt: skip
    )
    assert task.default_format is AnswerFormat.LABEL_WORDS  # label words, not letters A/B/C
    for seed in (0, 1):
        ps = generate_offline(task, AnswerFormat.LABEL_WORDS, n=288, seed=seed)
        assert len(ps) == 288
        for t in ps:
            low = t.text.lower()
            assert "{label_words}" in t.text or all(w in low for w in words), t.text
            assert "question" not in low, t.text
    # Its own template, made from its fields, names the words too.
    assert default_template(task, AnswerFormat.LABEL_WORDS).text == (
        "Text: {text}\nAnswer ({label_words}):"
    )
