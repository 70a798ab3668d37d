"""``flexpaft study``: one comparison end to end from one YAML file.

generate candidate templates -> split them at template level -> train every method for every
seed -> evaluate every model under every unseen test set (same held-out examples for all) ->
one report per test set with 95% intervals and paired differences.

Each step writes its own outputs (``prompts/``, ``train/METHOD-sSEED/``, ``eval/SET/RUN/``,
``report/SET/``) and is skipped when they already exist for the same settings, so an interrupted
study continues where it stopped, and adding a method or a seed reruns only what is new. The
steps are the ordinary ``flexpaft`` commands, so every run of a study can be reproduced by hand.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from .config import add_config_arguments, config_from_args, load_config, opt, section
from .errors import FlexpaftError
from .settings import DataSettings, ModelSettings

log = logging.getLogger(__name__)

STUDY_METHODS = ("base", "lora", "topaccuracy", "paft", "flexora", "flexora+paft")
# Methods that draw templates from the training split of the prompt set.
_USES_PROMPT_SET = ("topaccuracy", "paft", "flexora+paft")


@dataclass
class StudyPrompts:
    n: int = opt(450, "Offline candidate templates to generate (the PAFT paper has ~450).")
    test: int = opt(50, "Unseen test templates split off the candidates (never trained on).")
    adversarial: int = opt(
        1, "Adversarial variants per test template (typos, casing, markers; 0 = none)."
    )
    seed: int = opt(0, "Seed of generation, split and adversarial variants.")
    candidates: str = opt(
        "",
        "Candidate templates file to split instead of generating (e.g. the PAFT paper's prompts "
        "in ../shared/prompts/paft/): `test` of them become the unseen test set.",
    )
    train_set: str = opt(
        "",
        "Training templates file to use instead of the generated training split (e.g. the "
        "paper's prompts in ../shared/prompts/paft/); the generated test split stays unseen.",
    )
    extra_test_sets: dict[str, str] = opt(
        {},
        "More unseen test sets, NAME: template file (e.g. templates written by other people).",
    )


@dataclass
class StudyConfig:
    output_dir: str = opt("runs/study", "Where every step of the study writes.")
    methods: list[str] = opt(
        ["base", "lora", "topaccuracy", "paft"], f"Methods to compare: {', '.join(STUDY_METHODS)}."
    )
    seeds: list[int] = opt([0], "Training seeds; each method is trained once per seed.")
    train_examples: int = opt(2000, "Training examples (the first ones of the shuffled data).")
    test_examples: int = opt(300, "Held-out test examples, taken after the training ones.")
    balance_test: bool = opt(
        True,
        "Test on equally many examples of each gold answer, so that the majority label scores "
        "chance and an accuracy above it cannot come from the label prior.",
    )
    balance_train: bool = opt(
        False,
        "Train on equally many examples of each gold answer too (the training slice is "
        "downsampled to its rarest answer), so that the label prior earns nothing in training.",
    )
    train: dict[str, Any] = opt(
        {},
        "Training settings for every method, as flexpaft train keys (optim.lr: 5e-4, ...).",
    )
    eval: dict[str, Any] = opt({}, "Evaluation settings, as flexpaft eval keys (batch_size: 32).")
    bootstrap: int = opt(2000, "Bootstrap replicates for the reports' 95% intervals.")
    thresholds: list[float] = opt([0.6, 0.7], "Top@t thresholds shown in the reports.")
    model: ModelSettings = section(ModelSettings, "Base model.")
    data: DataSettings = section(DataSettings, "Task and data (limit/skip are set by the study).")
    prompts: StudyPrompts = section(StudyPrompts, "Candidate templates and unseen test sets.")

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if m not in STUDY_METHODS]
        if bad:
            raise FlexpaftError(
                f"unknown study method {bad[0]!r} (choose from {', '.join(STUDY_METHODS)})"
            )
        if not self.methods:
            raise FlexpaftError("a study needs at least one method")
        if not self.seeds:
            raise FlexpaftError("a study needs at least one seed")
        if self.train_examples < 1 or self.test_examples < 1:
            raise FlexpaftError("train_examples and test_examples must be at least 1")
        if not 1 <= self.prompts.test < self.prompts.n:
            raise FlexpaftError(
                f"prompts.test must be between 1 and prompts.n - 1 ({self.prompts.n - 1}), "
                f"not {self.prompts.test}"
            )


def _flat(prefix: str, d: dict[str, Any]) -> list[str]:
    """Nested mapping -> ``key=value`` overrides (lists as YAML flow, so they parse back)."""
    out = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out += _flat(key + ".", v)
        else:
            out.append(f"{key}={json.dumps(v) if isinstance(v, (list, bool)) else v}")
    return out


class Study:
    """The steps of one study; each is skipped when its outputs exist for the same settings."""

    def __init__(self, cfg: StudyConfig, progress: bool = True) -> None:
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.progress = progress
        self.prompts_dir = self.out / "prompts"
        self._window: int | None = None

    # -- settings shared by training and evaluation ------------------------------------------
    def _common(self) -> list[str]:
        model = _flat("model.", asdict(self.cfg.model))
        data = {k: v for k, v in asdict(self.cfg.data).items() if k not in ("limit", "skip")}
        return model + _flat("data.", data)

    def _train_overrides(self, method: str, seed: int) -> list[str]:
        o = self._common() + [
            f"method={method}",
            f"seed={seed}",
            f"output_dir={self.out / 'train' / f'{method}-s{seed}'}",
            "data.skip=0",
            f"data.limit={self.cfg.train_examples}",
            # Balancing happens inside the training slice, so it never reaches the test slice.
            f"data.balance_labels={str(self.cfg.balance_train).lower()}",
        ]
        if method in _USES_PROMPT_SET:
            o.append(f"prompts.prompt_set={self.train_templates()}")
        return o + _flat("", self.cfg.train)

    def train_templates(self) -> Path:
        return (
            Path(self.cfg.prompts.train_set)
            if self.cfg.prompts.train_set
            else (self.prompts_dir / "train.jsonl")
        )

    def test_sets(self) -> dict[str, Path]:
        sets = {"unseen": self.prompts_dir / "test.jsonl"}
        for name, path in self.cfg.prompts.extra_test_sets.items():
            if name in sets:
                raise FlexpaftError(f"extra test set name {name!r} is reserved")
            sets[name] = Path(path)
        return sets

    # -- validation before any expensive step --------------------------------------------------
    def check(self) -> None:
        """Every input the study depends on, checked before the first forward pass."""
        from .train.config import TrainConfig
        from .train.templates import load_valid_set

        task, fmt, examples = self.cfg.data.load()
        need = self.cfg.train_examples + 1
        if len(examples) < need:
            raise FlexpaftError(
                f"{len(examples)} examples in {self.cfg.data.source or task.name}: need more than "
                f"train_examples={self.cfg.train_examples} to leave a test slice"
            )
        for name, path in self.test_sets().items():
            if name != "unseen" and not path.is_file():
                raise FlexpaftError(f"test set {name}: no such file {path}")
            if path.is_file():
                load_valid_set(str(path), task, fmt)
        if self.cfg.prompts.train_set:
            if not Path(self.cfg.prompts.train_set).is_file():
                raise FlexpaftError(f"prompts.train_set: no such file {self.cfg.prompts.train_set}")
            load_valid_set(self.cfg.prompts.train_set, task, fmt)
        for method in self.cfg.methods:
            if method != "base":
                # Builds and validates every training config (keys, values) up front.
                o = [x for x in self._train_overrides(method, 0) if "prompt_set=" not in x]
                load_config(TrainConfig, None, o)
        self._eval_config("unseen", "base", None)

    # -- the steps ---------------------------------------------------------------------------
    def generate(self) -> None:
        from .cli import main

        if (self.prompts_dir / "test.jsonl").is_file():
            log.info("prompts: %s exists, kept", self.prompts_dir)
            return
        p = self.cfg.prompts
        if p.candidates:
            self._split_candidates(main)
            return
        fmt = self.cfg.data.format or ""
        argv = ["prompts", "generate", "--task", self.cfg.data.task, "--n", str(self.cfg.prompts.n)]
        argv += ["--format", fmt] if fmt else []
        n = self.cfg.prompts.n
        # --split is a test fraction; --min-test makes the count exact for small pools.
        argv += [
            "--split",
            f"{self.cfg.prompts.test}/{n}",
            "--min-test",
            str(self.cfg.prompts.test),
        ]
        argv += ["--adversarial", str(self.cfg.prompts.adversarial)]
        argv += ["--seed", str(self.cfg.prompts.seed), "--out", str(self.prompts_dir)]
        self._run(main, argv, "prompts generate")

    def _split_candidates(self, main) -> None:
        """A given pool, validated for the task, split at template level like generated ones."""
        from .paft.adversarial import make_adversarial
        from .train.templates import load_valid_set

        p = self.cfg.prompts
        if not Path(p.candidates).is_file():
            raise FlexpaftError(f"prompts.candidates: no such file {p.candidates}")
        task, fmt, _ = self.cfg.data.load()
        pool = load_valid_set(p.candidates, task, fmt)
        if not 1 <= p.test < len(pool):
            raise FlexpaftError(
                f"prompts.test={p.test}: {p.candidates} has {len(pool)} valid templates"
            )
        train, test = pool.split(p.test / len(pool), seed=p.seed, min_test=p.test)
        train.save(self.prompts_dir / "train.jsonl")
        if p.adversarial:
            make_adversarial(test, task, fmt, p.adversarial, seed=p.seed).save(
                self.prompts_dir / "adversarial.jsonl"
            )
        # Written last: its presence marks the prompts step as done.
        test.save(self.prompts_dir / "test.jsonl")
        log.info("prompts: %d train, %d unseen test from %s", len(train), len(test), p.candidates)

    def train_all(self) -> None:
        from .train.config import TrainConfig
        from .train.trainer import train

        for method in self.cfg.methods:
            if method == "base":
                continue
            for seed in self.cfg.seeds:
                cfg = load_config(TrainConfig, None, self._train_overrides(method, seed))
                manifest = Path(cfg.output_dir) / "manifest.json"
                if (
                    _same_config(manifest, asdict(cfg))
                    and (Path(cfg.output_dir) / "adapter").is_dir()
                ):
                    log.info("train %s seed %d: done, kept", method, seed)
                    continue
                log.info("train %s seed %d -> %s", method, seed, cfg.output_dir)
                train(cfg, progress=self.progress)

    def _eval_config(self, set_name: str, method: str, seed: int | None):
        from .evaluate.run import EvalConfig

        run = "base" if seed is None else f"{method}-s{seed}"
        o = self._common() + [
            f"data.skip={self.cfg.train_examples}",
            f"data.limit={self.test_window()}",
            f"data.balance_labels={str(self.cfg.balance_test).lower()}",
            f"prompt_set={self.test_sets()[set_name]}",
            f"output_dir={self.out / 'eval' / set_name / run}",
            f"name={method}",
            f"thresholds={json.dumps(self.cfg.thresholds)}",
        ]
        if seed is not None:
            o.append(f"adapter={self.out / 'train' / run / 'adapter'}")
        if set_name == "unseen":
            o.append("reference_template=default")
            adv = self.prompts_dir / "adversarial.jsonl"
            if self.cfg.prompts.adversarial and (adv.is_file() or not self.prompts_dir.exists()):
                o.append(f"adversarial_set={adv}")
        return load_config(EvalConfig, None, o + _flat("", self.cfg.eval))

    def test_window(self) -> int:
        """Raw examples after the training slice that hold the test set.

        Unbalanced: ``test_examples``. Balanced: the shortest window in which every gold answer
        occurs ``test_examples / n_answers`` times, so balancing inside it keeps exactly that many
        of each (the first ones, in data order).
        """
        if not self.cfg.balance_test:
            return self.cfg.test_examples
        if self._window is None:
            data = replace(self.cfg.data, skip=self.cfg.train_examples, limit=0)
            data.balance_labels = False
            _, _, rest = data.load()
            golds = sorted({e.gold for e in rest})
            need = -(-self.cfg.test_examples // len(golds))  # ceil: per answer
            counts = dict.fromkeys(golds, 0)
            for i, ex in enumerate(rest, 1):
                counts[ex.gold] += 1
                if min(counts.values()) >= need:
                    self._window = i
                    break
            else:
                raise FlexpaftError(
                    f"only {min(counts.values())} examples of the rarest answer after the "
                    f"training slice: too few for {self.cfg.test_examples} balanced test examples"
                )
        return self._window

    def eval_all(self) -> None:
        from .evaluate.run import run_eval

        for set_name in self.test_sets():
            for method, seed in self._runs():
                cfg = self._eval_config(set_name, method, seed)
                results = Path(cfg.output_dir) / "results.json"
                if _same_config(results, asdict(cfg)):
                    log.info("eval %s on %s: done, kept", cfg.name, set_name)
                    continue
                log.info("eval %s (seed %s) on %s -> %s", method, seed, set_name, cfg.output_dir)
                run_eval(cfg, progress=self.progress)

    def _runs(self) -> list[tuple[str, int | None]]:
        return [
            (m, None) if m == "base" else (m, s)
            for m in self.cfg.methods
            for s in ([None] if m == "base" else self.cfg.seeds)
        ]

    def report_all(self) -> dict[str, Path]:
        from .cli import main

        written = {}
        for set_name in self.test_sets():
            runs = [
                f"{m}={self.out / 'eval' / set_name / ('base' if s is None else f'{m}-s{s}')}"
                for m, s in self._runs()
            ]
            out = self.out / "report" / set_name
            argv = ["report", *runs, "--seeds", "--html", "-o", str(out)]
            argv += ["--bootstrap", str(self.cfg.bootstrap)]
            argv += ["--thresholds", ",".join(f"{t:g}" for t in self.cfg.thresholds)]
            print(f"\n== test set: {set_name} ==")
            self._run(main, argv, "report")
            written[set_name] = out
        return written

    def _run(self, main, argv: list[str], what: str) -> None:
        code = main((["-q"] if not self.progress else []) + argv)
        if code != 0:
            raise FlexpaftError(f"study step '{what}' failed (exit {code})")

    def run(self) -> dict[str, Path]:
        self.generate()
        self.check()
        self.train_all()
        self.eval_all()
        return self.report_all()


def _same_config(path: Path, cfg: dict[str, Any]) -> bool:
    """True when ``path`` (a manifest or results file) was written for exactly ``cfg``."""
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("config") == cfg
    except (OSError, ValueError):
        return False  # a damaged file is redone, not trusted


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, StudyConfig, example="train.optim.lr=5e-4")


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(StudyConfig, args)
    written = Study(cfg, progress=not args.quiet).run()
    for name, path in written.items():
        print(f"report ({name}): {path}/report.md", file=sys.stdout)
    return 0
