"""The study's prompts step: candidate templates split at template level into ``prompts/``.

train.jsonl (what the prompt-set methods train on), test.jsonl (the unseen test set, never
trained on) and adversarial.jsonl (its perturbed variants), generated offline
(``prompts.generate.generate_prompts``) or split off a given pool (``prompts.candidates``).
test.jsonl marks the step as done; an adversarial.jsonl missing beside it is made again.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from flexpaft.errors import FlexpaftError
from flexpaft.workflows.study.config import StudyConfig

log = logging.getLogger(__name__)


def prepare_prompts(cfg: StudyConfig, prompts_dir: Path) -> None:
    """Write the study's prompt sets into ``prompts_dir`` unless test.jsonl is there already."""
    from flexpaft.prompts.generate.pipeline import generate_prompts
    from flexpaft.tasks import load_task

    if (prompts_dir / "test.jsonl").is_file():
        log.info("prompts: %s exists, kept", prompts_dir)
        _adversarial_up_to_date(cfg, prompts_dir)
        return
    p = cfg.prompts
    if p.candidates:
        _split_candidates(cfg, prompts_dir)
        return
    task = load_task(cfg.data.task)
    written = generate_prompts(
        task,
        cfg.data.answer_format(task),
        prompts_dir,
        n=p.n,
        # Exactly `test` unseen templates: the fraction of n, and the floor where filters
        # dropped candidates.
        test_fraction=p.test / p.n,
        min_test=p.test,
        adversarial=p.adversarial,
        seed=p.seed,
    )
    print(written.summary(), file=sys.stderr)


def _adversarial_up_to_date(cfg: StudyConfig, prompts_dir: Path) -> None:
    """Regenerate adversarial.jsonl when it is missing; warn when it is not what the settings give.

    The variants are a deterministic function of the unseen test templates, the task's answer
    format, ``prompts.adversarial`` and ``prompts.seed`` (``make_adversarial``), so a deleted
    file comes back exactly as generated. A file that differs (the count or seed changed after
    the prompts step) is kept: evaluations already done used it, and they are keyed by its
    path, not its content.
    """
    from flexpaft.prompts import PromptSet
    from flexpaft.prompts.generate.adversarial import make_adversarial
    from flexpaft.tasks import load_task

    p = cfg.prompts
    if not p.adversarial:
        return
    path = prompts_dir / "adversarial.jsonl"
    task = load_task(cfg.data.task)
    fmt = cfg.data.answer_format(task)
    test = PromptSet.load(prompts_dir / "test.jsonl")
    want = make_adversarial(test, task, fmt, p.adversarial, seed=p.seed)
    if not path.is_file():
        log.warning("prompts: %s was missing, regenerated", path)
        want.save(path)
    elif PromptSet.load(path).texts != want.texts:
        log.warning(
            "prompts: %s was made with other settings than prompts.adversarial=%d, seed=%d; "
            "kept (delete %s and eval/ to redo them)",
            path,
            p.adversarial,
            p.seed,
            prompts_dir,
        )


def _split_candidates(cfg: StudyConfig, prompts_dir: Path) -> None:
    """A given pool, validated for the task, split at template level like generated ones."""
    from flexpaft.prompts.generate.adversarial import make_adversarial
    from flexpaft.prompts.task_templates import load_valid_set

    p = cfg.prompts
    if not Path(p.candidates).is_file():
        raise FlexpaftError(f"prompts.candidates: no such file {p.candidates}")
    task, fmt, _ = cfg.data.load()
    pool = load_valid_set(p.candidates, task, fmt)
    if not 1 <= p.test < len(pool):
        raise FlexpaftError(
            f"prompts.test={p.test}: {p.candidates} has {len(pool)} valid templates"
        )
    train, test = pool.split(p.test / len(pool), seed=p.seed, min_test=p.test)
    train.save(prompts_dir / "train.jsonl")
    if p.adversarial:
        make_adversarial(test, task, fmt, p.adversarial, seed=p.seed).save(
            prompts_dir / "adversarial.jsonl"
        )
    # Written last: its presence marks the prompts step as done.
    test.save(prompts_dir / "test.jsonl")
    log.info("prompts: %d train, %d unseen test from %s", len(train), len(test), p.candidates)
