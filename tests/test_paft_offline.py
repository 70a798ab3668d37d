import pytest

from flexpaft.errors import FlexpaftError
from flexpaft.paft.filters import normalize_text
from flexpaft.paft.offline import generate_offline, recase
from flexpaft.paft.phrasings import load_bank
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
    for t in generate_offline(BUILTIN_TASKS["boolq"], AnswerFormat.LABEL_WORDS, 100, seed=0):
        assert any(t.text.lower().endswith(c) for c in cues), t.text
    for t in generate_offline(BUILTIN_TASKS["piqa"], AnswerFormat.OPTION_TEXT, 100, seed=0):
        last = t.text.splitlines()[-1]
        assert "{" not in last, "the option text is the continuation of a cue, not of a slot"
        assert "{sol1}" not in t.text and "{A}" not in t.text and "{options}" not in t.text
    for t in generate_offline(BUILTIN_TASKS["winogrande"], AnswerFormat.OPTION_TEXT, 100, seed=0):
        assert t.text.endswith("{before_blank} {option}{after_blank}"), t.text
    for t in generate_offline(BUILTIN_TASKS["race"], AnswerFormat.GENERATION, 100, seed=0):
        assert "{option_letters}" in t.text or "letter" in t.text.lower(), t.text
    for t in generate_offline(BUILTIN_TASKS["boolq"], AnswerFormat.GENERATION, 100, seed=0):
        assert "{label_words}" in t.text, t.text


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


def test_recase_changes_literal_text_only():
    assert recase("Pick {option_letters}. Use {A}", "upper") == "PICK {option_letters}. USE {A}"
    assert recase("Keep {{Braces}} {Goal}", "lower") == "keep {{braces}} {Goal}"
    assert Template(recase("Keep {{Braces}} {Goal}", "lower")).slots == ["Goal"]
