"""Adversarial prompts derived from test templates: typos, casing, whitespace, option markers.

The PAFT paper's later version reports Con, accuracy on adversarial prompts. These variants keep
every ``{slot}`` and every option letter intact (the letter is the answer), so each one still
validates for the task and asks the same question; only the surface a robust model should
ignore changes. Perturbations touch literal text only, never slot names.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

from flexpaft.prompts.generate.phrasings import enumeration_slots, escape_literal, load_bank
from flexpaft.prompts.promptset import PromptSet
from flexpaft.prompts.template import Template, parse_template
from flexpaft.tasks.spec import LETTERS, AnswerFormat, TaskSpec

Pieces = list[tuple[str, str | None]]

_WORD4 = re.compile(r"[A-Za-z]{4,}")
# Only words of two or more letters are re-cased: a lone letter may be an option marker.
_WORD2 = re.compile(r"[A-Za-z]{2,}")
_MARKER_AT_END = re.compile(
    r"(?:option |Option |OPTION )?(?:\((?P<p>[A-Z])\)|\[(?P<b>[A-Z])\]|(?P<l>[A-Z])(?:[.):]| -))\s*$"
)


def _typo(pieces: Pieces, rng: random.Random, task: TaskSpec) -> Pieces:
    spots = [
        (i, m.start(), m.end()) for i, (lit, _) in enumerate(pieces) for m in _WORD4.finditer(lit)
    ]
    if not spots:
        return pieces
    out = list(pieces)
    chosen = rng.sample(spots, min(len(spots), rng.choice((1, 2))))
    # Right to left, so an edit never shifts the position of one still to come.
    for i, start, end in sorted(chosen, reverse=True):
        lit, slot = out[i]
        word = lit[start:end]
        # Inside the word, so the first and last letters stay and it remains recognisable.
        j = rng.randrange(1, len(word) - 2)
        kind = rng.choice(("swap", "drop", "double"))
        if kind == "swap":
            new = word[:j] + word[j + 1] + word[j] + word[j + 2 :]
        elif kind == "drop":
            new = word[:j] + word[j + 1 :]
        else:
            new = word[: j + 1] + word[j] + word[j + 1 :]
        out[i] = (lit[:start] + new + lit[end:], slot)
    return out


def _casing(pieces: Pieces, rng: random.Random, task: TaskSpec) -> Pieces:
    change: Callable[[str], str] = rng.choice((str.lower, str.upper, str.capitalize))
    return [(_WORD2.sub(lambda m: change(m.group()), lit), slot) for lit, slot in pieces]


def _whitespace(pieces: Pieces, rng: random.Random, task: TaskSpec) -> Pieces:
    kind = rng.choice(("double_space", "blank_lines", "join_lines", "indent"))
    out = []
    for lit, slot in pieces:
        if kind == "double_space":
            lit = lit.replace(" ", "  ")
        elif kind == "blank_lines":
            lit = lit.replace("\n", "\n\n")
        elif kind == "join_lines":
            lit = lit.replace("\n", " ")
        else:
            lit = lit.replace("\n", "\n  ")
        out.append((lit, slot))
    return out


def _markers(pieces: Pieces, rng: random.Random, task: TaskSpec) -> Pieces:
    per_option = enumeration_slots(task)
    if not per_option:
        return pieces
    index = {name: i for i, names in enumerate(per_option) for name in names}
    found = []
    for k, (lit, slot) in enumerate(pieces):
        if slot in index:
            m = _MARKER_AT_END.search(lit)
            letter = m and (m.group("p") or m.group("b") or m.group("l"))
            if not m or letter != LETTERS[index[slot]]:
                return pieces  # a layout we do not recognise: leave it alone
            found.append((k, m))
    if len(found) != len(per_option):
        return pieces
    current = pieces[found[0][0]][0][found[0][1].start() :]
    styles = [s for s in load_bank()["format"]["option_markers"] if s.replace("@", "A") != current]
    style = rng.choice(styles)
    out = list(pieces)
    for k, m in found:
        lit, slot = out[k]
        out[k] = (lit[: m.start()] + style.replace("@", LETTERS[index[slot]]), slot)
    return out


PERTURBATIONS: dict[str, Callable[[Pieces, random.Random, TaskSpec], Pieces]] = {
    "typo": _typo,
    "casing": _casing,
    "whitespace": _whitespace,
    "marker": _markers,
}


def _assemble(pieces: Pieces) -> str:
    text = "".join(escape_literal(lit) + ("{" + slot + "}" if slot else "") for lit, slot in pieces)
    # The answer is appended after the cue: no trailing whitespace, whatever was perturbed.
    return text.rstrip()


def perturb(
    template: Template, task: TaskSpec, rng: random.Random, kinds: list[str] | None = None
) -> str:
    """One perturbed text: one or two kinds of change, applied to literal text only."""
    kinds = kinds or rng.sample(sorted(PERTURBATIONS), rng.choice((1, 2)))
    pieces = list(template.pieces)
    for kind in kinds:
        pieces = PERTURBATIONS[kind](pieces, rng, task)
    return _assemble(pieces)


def make_adversarial(
    test: PromptSet,
    task: TaskSpec,
    fmt: AnswerFormat,
    n_per_template: int = 1,
    seed: int = 0,
) -> PromptSet:
    """``n_per_template`` perturbed variants of each test template, deterministic for a seed.

    Every variant differs from every test template and from the other variants, and validates
    for ``task`` in ``fmt``; a template too short to vary gets fewer.
    """
    fmt = AnswerFormat.parse(fmt)
    originals = set(test.texts)
    seen: set[str] = set()
    texts: list[str] = []
    for t in test:
        rng = random.Random(f"flexpaft-adversarial:{seed}:{t.text}")
        made = 0
        for _ in range(20 * max(n_per_template, 1)):
            if made >= n_per_template:
                break
            text = perturb(t, task, rng)
            if text in originals or text in seen or Template(text).problems(task, fmt):
                continue
            # The perturbed text must parse back to the same slots in the same order.
            if [s for _, s in parse_template(text) if s] != t.slots:
                continue
            seen.add(text)
            texts.append(text)
            made += 1
    return PromptSet.from_texts(texts, name=f"{test.name or task.name}.adversarial")
