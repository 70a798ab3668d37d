import random
import re

from flexpaft.prompts.generate.adversarial import make_adversarial, perturb
from flexpaft.prompts.generate.filters import normalize_text
from flexpaft.prompts.promptset import PromptSet
from flexpaft.prompts.template import Template
from flexpaft.tasks import BUILTIN_TASKS, AnswerFormat

PIQA = BUILTIN_TASKS["piqa"]
LET = AnswerFormat.LETTER
BASE = Template("Choose the better solution.\nQuestion: {goal}\nA. {sol1}\nB. {sol2}\nAnswer:")


def rngs(n=40):
    return [random.Random(i) for i in range(n)]


def test_typos_change_only_literal_words_a_little():
    for rng in rngs():
        text = perturb(BASE, PIQA, rng, ["typo"])
        assert text != BASE.text
        assert Template(text).slots == ["goal", "sol1", "sol2"]
        assert abs(len(text) - len(BASE.text)) <= 2
        assert "A. {sol1}\nB. {sol2}" in text, "markers have no 4-letter words to touch"


def test_casing_keeps_option_letters_upper_case():
    seen = set()
    for rng in rngs():
        text = perturb(BASE, PIQA, rng, ["casing"])
        assert "\nA. {sol1}\nB. {sol2}\n" in text
        assert normalize_text(text) == normalize_text(BASE.text)
        seen.add(text.splitlines()[-1])
    assert seen == {"answer:", "ANSWER:", "Answer:"}


def test_whitespace_changes_spacing_only_and_never_ends_in_whitespace():
    for rng in rngs():
        text = perturb(BASE, PIQA, rng, ["whitespace"])
        assert normalize_text(text) == normalize_text(BASE.text)
        assert text == text.rstrip() and text.endswith("Answer:")


def test_marker_change_is_consistent_across_options():
    styles = set()
    for rng in rngs():
        text = perturb(BASE, PIQA, rng, ["marker"])
        a = re.search(r"\n(.*)\{sol1\}", text).group(1)
        b = re.search(r"\n(.*)\{sol2\}", text).group(1)
        assert a != "A. " and a.replace("A", "B") == b
        styles.add(a)
    assert {"(A) ", "A) ", "[A] "} <= styles


def test_marker_change_leaves_the_options_slot_alone():
    arc = BUILTIN_TASKS["arc_easy"]
    t = Template("Question: {question}\n{options}\nAnswer:")
    assert perturb(t, arc, random.Random(0), ["marker"]) == t.text


def test_escaped_braces_survive():
    t = Template("Use {{curly}} braces. {goal}\nA. {sol1}\nB. {sol2}\nAnswer:")
    for rng in rngs(10):
        text = perturb(t, PIQA, rng, ["casing", "typo"])
        assert Template(text).slots == ["goal", "sol1", "sol2"]
        assert "{{" in text and "}}" in text


def test_make_adversarial_is_valid_distinct_and_deterministic():
    test = PromptSet.from_texts(
        [
            BASE.text,
            "Goal - {goal}\n(A) {A}\n(B) {B}\nWhich one works? Reply with {option_letters}.\nThe answer is",
        ],
        "t",
    )
    adv = make_adversarial(test, PIQA, LET, n_per_template=3, seed=0)
    assert len(adv) == 6
    assert len(set(adv.texts)) == 6 and not set(adv.texts) & set(test.texts)
    for t in adv:
        assert t.problems(PIQA, LET) == []
        assert t.text == t.text.rstrip()
    assert adv.texts == make_adversarial(test, PIQA, LET, n_per_template=3, seed=0).texts
    assert adv.texts != make_adversarial(test, PIQA, LET, n_per_template=3, seed=1).texts
    # Each variant keeps its source's slots in order.
    assert [Template(x).slots for x in adv.texts[:3]] == [["goal", "sol1", "sol2"]] * 3


def test_winogrande_cloze_variants_keep_the_blank_layout():
    wino = BUILTIN_TASKS["winogrande"]
    test = PromptSet.from_texts(
        ["Fill in the blank.\nSentence: {before_blank} {option}{after_blank}"]
    )
    for t in make_adversarial(test, wino, AnswerFormat.OPTION_TEXT, 5, seed=0):
        assert t.text.endswith("{option}{after_blank}")
        assert t.problems(wino, AnswerFormat.OPTION_TEXT) == []
