"""PAFT stage 1 end to end: candidates -> filters -> train/test split -> adversarial set, on disk.

``generate_prompts`` is the workflow behind ``flexpaft prompts generate`` and the study's prompts
step. It writes to ``out``: candidates.jsonl (every candidate with its source), train.jsonl,
test.jsonl, adversarial.jsonl, filter_report.json and filter_report.md; LLM replies are cached in
llm_cache.jsonl there (or ``cache``), so a rerun resumes without paying twice.

The generators are passed in ready to use (``llm_models``) and so is the optional base-model
score (``score_fn``): loading models and evaluating them belong to the layers above this one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from flexpaft.errors import FlexpaftError
from flexpaft.io import atomic_write_json, atomic_write_text
from flexpaft.prompts.generate.adversarial import make_adversarial
from flexpaft.prompts.generate.clients import ChatModel
from flexpaft.prompts.generate.filters import filter_candidates
from flexpaft.prompts.generate.llm import generate_with_llms
from flexpaft.prompts.generate.offline import generate_offline
from flexpaft.prompts.promptset import PromptSet
from flexpaft.tasks.spec import AnswerFormat, TaskSpec

GENERATORS = ("offline", "openai", "hf")


@dataclass(frozen=True)
class GeneratedPrompts:
    """What ``generate_prompts`` wrote into ``out``: the counts at each stage and the split."""

    out: Path
    task: str
    format: str
    candidates: int
    kept: int
    train: int
    test: int
    adversarial: int
    test_by_fraction: int  # the test templates that test_fraction alone gives of the kept ones
    min_test: int  # the floor on test templates that applied (capped at half the kept ones)

    @property
    def train_path(self) -> Path:
        return self.out / "train.jsonl"

    @property
    def test_path(self) -> Path:
        return self.out / "test.jsonl"

    @property
    def adversarial_path(self) -> Path:
        return self.out / "adversarial.jsonl"

    def summary(self) -> str:
        return (
            f"{self.task} ({self.format}): {self.candidates} candidates, {self.kept} kept -> "
            f"train {self.train}, test {self.test}, adversarial {self.adversarial}; "
            f"wrote {self.out}"
        )


def check_generators(generators: Sequence[str]) -> None:
    unknown = sorted(set(generators) - set(GENERATORS))
    if unknown:
        raise FlexpaftError(
            f"unknown generator {unknown[0]!r} (choose from {', '.join(GENERATORS)})"
        )


def generate_prompts(
    task: TaskSpec,
    fmt: AnswerFormat,
    out: str | Path,
    *,
    generators: Sequence[str] = ("offline",),
    n: int = 450,
    llm_models: Sequence[ChatModel] = (),
    n_zero_shot: int = 20,
    n_few_shot: int = 20,
    per_request: int = 5,
    seeds: Sequence[str] | None = None,
    cache: str | Path | None = None,
    temperature: float = 1.0,
    max_tokens: int = 1024,
    min_chars: int = 10,
    max_chars: int = 2000,
    near_dup_threshold: float | None = 0.9,
    score_fn: Callable[[PromptSet], list[float]] | None = None,
    min_score: float | None = None,
    test_fraction: float = 1 / 9,
    min_test: int = 50,
    adversarial: int = 1,
    seed: int = 0,
) -> GeneratedPrompts:
    """Generate, filter and split candidate templates for ``task`` in ``fmt`` into ``out``.

    ``generators`` names the sources as filter_report.json records them: ``offline`` draws ``n``
    templates from the grammar; the LLM ones (``openai``, ``hf``) are the ``llm_models``, asked for
    ``n_zero_shot`` + ``n_few_shot`` templates each (few-shot examples: the task's template and
    ``seeds``). ``score_fn`` gives each template a base-model score; with ``min_score`` the
    templates under it are dropped. ``test_fraction`` of the kept templates become the unseen test
    set, at least ``min_test`` where the set allows (never more than half); ``adversarial``
    variants are made per test template (0: none).
    """
    from flexpaft.validate import check_writable_dir

    check_generators(generators)
    if not 0 < test_fraction < 1:
        raise FlexpaftError(f"the test fraction must be between 0 and 1, got {test_fraction}")
    for name, value in (("n", n), ("min_test", min_test), ("adversarial", adversarial)):
        if value < 0:
            raise FlexpaftError(f"{name} must be at least 0, got {value}")
    out = Path(out)
    check_writable_dir(out)

    texts: list[str] = []
    sources: list[str] = []
    generation: dict = {}
    if llm_models:
        gen = generate_with_llms(
            task,
            fmt,
            list(llm_models),
            n_zero_shot=n_zero_shot,
            n_few_shot=n_few_shot,
            per_request=per_request,
            seeds=list(seeds) if seeds is not None else None,
            cache=cache or out / "llm_cache.jsonl",
            seed=seed,
            temperature=temperature,
            max_tokens=max_tokens,
        )
        # LLM candidates first: the near-duplicate filter keeps the first of a pair.
        texts += gen.prompts.texts
        sources += gen.sources
        generation["llm"] = gen.stats
        generation["llm_totals"] = gen.totals()
    if "offline" in generators:
        offline = generate_offline(task, fmt, n, seed)
        texts += offline.texts
        sources += ["offline"] * len(offline)
        generation["offline"] = len(offline)

    candidates = PromptSet.from_texts(texts, name=f"{task.name}.{fmt.value}")
    kept, report = filter_candidates(
        candidates,
        task,
        fmt,
        min_chars=min_chars,
        max_chars=max_chars,
        near_dup_threshold=near_dup_threshold,
        score_fn=score_fn,
        min_score=min_score,
    )
    # min_test holds where the set is big enough; a test set never takes more than half.
    floor = max(1, min(min_test, len(kept) // 2))
    train, test = kept.split(test_fraction, seed=seed, min_test=floor)
    adv = (
        make_adversarial(test, task, fmt, adversarial, seed=seed)
        if adversarial > 0
        else PromptSet([], f"{test.name}.adversarial")
    )

    rows = "".join(
        json.dumps({"template": t, "source": s}, ensure_ascii=False) + "\n"
        for t, s in zip(texts, sources)
    )
    atomic_write_text(out / "candidates.jsonl", rows)
    train.save(out / "train.jsonl")
    test.save(out / "test.jsonl")
    adv.save(out / "adversarial.jsonl")
    summary = {
        "task": task.name,
        "format": fmt.value,
        "generators": list(generators),
        "generation": generation,
        "split": {
            "test_fraction": test_fraction,
            "min_test": floor,
            "train": len(train),
            "test": len(test),
            "adversarial": len(adv),
            "seed": seed,
        },
        **report.to_dict(),
    }
    atomic_write_json(out / "filter_report.json", summary)
    atomic_write_text(out / "filter_report.md", report.to_markdown())
    return GeneratedPrompts(
        out=out,
        task=task.name,
        format=fmt.value,
        candidates=len(candidates),
        kept=len(kept),
        train=len(train),
        test=len(test),
        adversarial=len(adv),
        test_by_fraction=round(len(kept) * test_fraction),
        min_test=floor,
    )
