"""Built-in task specs, in the Hugging Face datasets' own schemas.

Slot aliases follow the PAFT paper's released templates (OpenCompass reader names): Winogrande's
``{prompt} {only_option1} {only_option2}`` are ``sentence option1 option2``; HellaSwag's and RACE's
``{A}..{D}`` are the entries of ``endings`` / ``options``.
"""

from __future__ import annotations

from flexpaft.errors import FlexpaftError
from flexpaft.tasks.spec import AnswerFormat, TaskSpec

LET, WORDS, CLOZE, GEN = (
    AnswerFormat.LETTER,
    AnswerFormat.LABEL_WORDS,
    AnswerFormat.OPTION_TEXT,
    AnswerFormat.GENERATION,
)
MC = (LET, CLOZE, GEN)
SNIPS_INTENTS = (
    "AddToPlaylist",
    "BookRestaurant",
    "GetWeather",
    "PlayMusic",
    "RateBook",
    "SearchCreativeWork",
    "SearchScreeningEvent",
)

BUILTIN_TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in [
        TaskSpec(
            name="boolq",
            description="Answer a yes/no question about a passage of text.",
            fields=("question", "passage"),
            required=("question",),
            fixed_options=("yes", "no"),
            label_words=("yes", "no"),
            gold="answer",
            gold_kind="bool",
            formats=(WORDS, LET, CLOZE, GEN),
            default_format=WORDS,
            templates={
                "label_words": "{passage}\nQuestion: {question}?\nAnswer:",
                "letter": "{passage}\nQuestion: {question}?\n{options}\nAnswer:",
                "option_text": "{passage}\nQuestion: {question}?\nAnswer:",
                "generation": "{passage}\nQuestion: {question}? Answer yes or no.\nAnswer:",
            },
            hf_path="google/boolq",
            hf_split="validation",
        ),
        TaskSpec(
            name="piqa",
            description="Choose the more sensible solution to reach a physical goal.",
            fields=("goal", "sol1", "sol2"),
            required=("goal",),
            options=("sol1", "sol2"),
            option_slots=("A", "B"),
            gold="label",
            gold_kind="index",
            formats=MC,
            templates={
                "letter": "Question: {goal}\nA. {sol1}\nB. {sol2}\nAnswer:",
                "option_text": "Question: {goal}\nAnswer:",
                "generation": "Question: {goal}\nA. {sol1}\nB. {sol2}\nAnswer with A or B.\nAnswer:",
            },
            hf_path="ybisk/piqa",
            hf_split="validation",
        ),
        TaskSpec(
            name="winogrande",
            description="Choose which of two names or nouns fills the blank (_) in a sentence.",
            fields=("sentence", "option1", "option2"),
            required=("sentence",),
            options=("option1", "option2"),
            option_slots=("A", "B"),
            aliases={"prompt": "sentence", "only_option1": "option1", "only_option2": "option2"},
            blank_field="sentence",
            gold="answer",
            gold_kind="one_based",
            formats=MC,
            templates={
                "letter": "{sentence}\nWhat does the _ refer to?\nA. {option1}\nB. {option2}\nAnswer:",
                "option_text": "{before_blank} {option}{after_blank}",
                "generation": "{sentence}\nWhat does the _ refer to?\nA. {option1}\nB. {option2}\nAnswer:",
            },
            hf_path="allenai/winogrande",
            hf_name="winogrande_xl",
            hf_split="validation",
        ),
        TaskSpec(
            name="hellaswag",
            description="Choose the most plausible continuation of a short scene description.",
            fields=("ctx", "activity_label"),
            required=("ctx",),
            options="endings",
            option_slots=("A", "B", "C", "D"),
            gold="label",
            gold_kind="index",
            formats=MC,
            templates={
                "letter": "{ctx}\nA. {A}\nB. {B}\nC. {C}\nD. {D}\nAnswer:",
                "option_text": "{activity_label}: {ctx}",
                "generation": "{ctx}\nA. {A}\nB. {B}\nC. {C}\nD. {D}\nAnswer:",
            },
            hf_path="Rowan/hellaswag",
            hf_split="validation",
        ),
        TaskSpec(
            name="race",
            description="Answer a reading-comprehension question about an article.",
            fields=("article", "question"),
            required=("article", "question"),
            options="options",
            option_slots=("A", "B", "C", "D"),
            gold="answer",
            gold_kind="letter",
            formats=MC,
            templates={
                "letter": "Article: {article}\nQuestion: {question}\nA. {A}\nB. {B}\nC. {C}\nD. {D}\nAnswer:",
                "option_text": "Article: {article}\nQuestion: {question}\nAnswer:",
                "generation": "Article: {article}\nQuestion: {question}\nA. {A}\nB. {B}\nC. {C}\nD. {D}\nAnswer:",
            },
            hf_path="ehovy/race",
            hf_name="middle",
            hf_split="test",
        ),
        *[
            TaskSpec(
                name=name,
                description=desc,
                fields=(qfield,),
                required=(qfield,),
                aliases={"question": qfield} if qfield != "question" else {},
                options="choices.text",
                option_slots=tuple("ABCDE"[:n]),
                option_labels="choices.label",
                gold="answerKey",
                gold_kind="option_label",
                formats=MC,
                templates={
                    "letter": "Question: {" + qfield + "}\n{options}\nAnswer:",
                    "option_text": "Question: {" + qfield + "}\nAnswer:",
                    "generation": "Question: {"
                    + qfield
                    + "}\n{options}\nAnswer with the letter.\nAnswer:",
                },
                hf_path=path,
                hf_name=hf_name,
                hf_split=split,
            )
            for name, desc, qfield, n, path, hf_name, split in [
                (
                    "arc_easy",
                    "Answer a grade-school science question.",
                    "question",
                    5,
                    "allenai/ai2_arc",
                    "ARC-Easy",
                    "test",
                ),
                (
                    "arc_challenge",
                    "Answer a hard grade-school science question.",
                    "question",
                    5,
                    "allenai/ai2_arc",
                    "ARC-Challenge",
                    "test",
                ),
                (
                    "commonsense_qa",
                    "Answer a question that needs commonsense knowledge.",
                    "question",
                    5,
                    "tau/commonsense_qa",
                    "",
                    "validation",
                ),
                (
                    "openbookqa",
                    "Answer an elementary science question.",
                    "question_stem",
                    4,
                    "allenai/openbookqa",
                    "main",
                    "test",
                ),
            ]
        ],
        # SNIPS 2017 intents (CC0): the demo's task, shipped with the package (flexpaft/data/
        # README.md), so it needs no hub and no archive. Each label word is one token of
        # SmolLM2's vocabulary, so scoring is one forward pass per prompt (evaluate/scoring.py).
        TaskSpec(
            name="snips",
            # One sentence, like every built-in task's: the offline generator writes it into
            # templates, and a version that listed the seven intents in prose made a template
            # under which every model answered the first one listed (docs/RESULTS.md).
            description="Name the intent of a voice-assistant request.",
            fields=("text",),
            required=("text",),
            fixed_options=SNIPS_INTENTS,
            label_words=(
                "playlist",
                "restaurant",
                "weather",
                "music",
                "rating",
                "search",
                "movies",
            ),
            gold="intent",
            gold_kind="text",
            formats=(WORDS, LET, CLOZE, GEN),
            default_format=WORDS,
            templates={
                "label_words": "Request: {text}\nIntent:",
                "letter": "Request: {text}\n{options}\nIntent:",
                "option_text": "Request: {text}\nIntent:",
                "generation": "Request: {text}\nIntent ({label_words}):",
            },
            hf_split="test",
            hf_train_split="train",
            packaged_data={"train": "snips_train.jsonl", "test": "snips_test.jsonl"},
        ),
        TaskSpec(
            name="copa",
            description="Choose the more plausible cause or effect of a premise.",
            fields=("premise", "question", "choice1", "choice2"),
            required=("premise",),
            options=("choice1", "choice2"),
            option_slots=("A", "B"),
            gold="label",
            gold_kind="index",
            formats=MC,
            templates={
                "letter": "Premise: {premise}\nWhat is the {question}?\nA. {choice1}\nB. {choice2}\nAnswer:",
                "option_text": "Premise: {premise}\nWhat is the {question}?\nAnswer:",
                "generation": "Premise: {premise}\nWhat is the {question}?\nA. {choice1}\nB. {choice2}\nAnswer:",
            },
            hf_path="aps/super_glue",
            hf_name="copa",
            hf_split="validation",
        ),
    ]
}


def get_task(name: str) -> TaskSpec:
    """A built-in task by name (custom tasks are loaded by ``load_task_file``)."""
    if name in BUILTIN_TASKS:
        return BUILTIN_TASKS[name]
    if name.startswith("bigbench:"):
        from flexpaft.tasks.bigbench import bigbench_task

        return bigbench_task(name.split(":", 1)[1])
    raise FlexpaftError(
        f"unknown task {name!r} (built-in: {', '.join(sorted(BUILTIN_TASKS))}; "
        "or a task YAML file, or bigbench:<task>)"
    )
