"""The steps of one study, in order: prompts -> check -> train -> evaluate -> report.

Each step writes its own outputs (``prompts/``, ``train/METHOD-sSEED/``, ``eval/SET/RUN/``,
``report/SET/``) and is skipped when they already exist for the same settings (``stored.py``).
Training and evaluation are the ordinary ``flexpaft train`` and ``flexpaft eval`` configs, built
from the study's settings, so every run of a study can be reproduced by hand.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flexpaft.errors import FlexpaftError
from flexpaft.settings.common import balanced_window
from flexpaft.settings.loading import load_config
from flexpaft.settings.methods import method as training_method
from flexpaft.workflows.study.baselines import BLOCK_PICKERS, layers_override
from flexpaft.workflows.study.config import StudyConfig
from flexpaft.workflows.study.prompt_sets import prepare_prompts
from flexpaft.workflows.study.rows import FLEXORA, ROWS, report_rows, row_of, trains_nothing
from flexpaft.workflows.study.stored import evaluated, finished_run

if TYPE_CHECKING:
    from flexpaft.settings.evaluate import EvalConfig
    from flexpaft.settings.train import TrainConfig

log = logging.getLogger(__name__)


def run_study(cfg: StudyConfig, progress: bool = True) -> dict[str, Path]:
    """Run every step of the study ``cfg`` describes; the report directory of each test set.

    Holds the lock of ``cfg.output_dir`` throughout: two studies in one directory would retrain
    and re-evaluate over each other's runs.
    """
    from flexpaft.locks import run_dir_lock

    with run_dir_lock(cfg.output_dir, "flexpaft study"):
        return Study(cfg, progress=progress).run()


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
        self._n_blocks: int | None = None

    def run(self) -> dict[str, Path]:
        self.generate()
        self.check()
        self.train_all()
        self.eval_all()
        return self.report_all()

    # -- settings shared by training and evaluation ------------------------------------------
    def _common(self) -> list[str]:
        model = _flat("model.", asdict(self.cfg.model))
        data = {k: v for k, v in asdict(self.cfg.data).items() if k not in ("limit", "skip")}
        return model + _flat("data.", data)

    def run_dir(self, label: str, seed: int) -> Path:
        """Training output of run ``label`` (a method, ``random-dD`` or ``lora_drop-rank``)."""
        return self.out / "train" / f"{label}-s{seed}"

    def _train_method(self, label: str) -> str:
        """The training method of run ``label``: a variant's, a study row's (plain LoRA for the
        block baselines and lora_drop's ranking run), else the label itself."""
        variant = self.cfg.variants.get(label)
        if variant:
            return variant["method"]
        row = row_of(label)
        return row.trains if row and row.trains else label

    def _train_overrides(self, label: str, seed: int, extra: Sequence[str] = ()) -> list[str]:
        variant = self.cfg.variants.get(label)
        train_method = self._train_method(label)
        o = self._common() + [
            f"method={train_method}",
            f"seed={seed}",
            f"output_dir={self.run_dir(label, seed)}",
            "data.skip=0",
            f"data.limit={self.cfg.train_examples}",
            # Balancing happens inside the training slice, so it never reaches the test slice.
            f"data.balance_labels={str(self.cfg.balance_train).lower()}",
        ]
        if training_method(train_method).needs_prompt_set:
            o.append(f"prompts.prompt_set={self.train_templates()}")
        if self.cfg.own_template:
            o.append(f"prompts.template={self.cfg.own_template}")
        # A variant's own settings after the study's; extra last: a baseline's blocks override
        # any lora.layers_to_transform in `train`.
        own = _flat("", variant.get("train") or {}) if variant else []
        return o + _flat("", self.cfg.train) + own + list(extra)

    def _train_config(self, label: str, seed: int, extra: Sequence[str] = ()) -> TrainConfig:
        from flexpaft.settings.train import TrainConfig

        return load_config(TrainConfig, None, self._train_overrides(label, seed, extra))

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
        from flexpaft.prompts.task_templates import load_valid_set
        from flexpaft.settings.train import TrainConfig

        task, fmt, examples = self.cfg.data.load()
        need = self.cfg.train_examples + 1
        if self.test_skip() == 0:
            # Its own test split: the training slice must fit the training split.
            _, _, train_rows = self.cfg.data.load("train")
            if len(train_rows) < self.cfg.train_examples:
                raise FlexpaftError(
                    f"{len(train_rows)} training examples in {task.name}: fewer than "
                    f"train_examples={self.cfg.train_examples}"
                )
        elif len(examples) < need:
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
        n_train = min(self.cfg.train_examples, len(examples))
        for label in [*self.cfg.methods, *self.cfg.variants]:
            if not trains_nothing(label):
                # Builds and validates every training config (keys, values) up front.
                o = [x for x in self._train_overrides(label, 0) if "prompt_set=" not in x]
                load_config(TrainConfig, None, o).check_held_out(n_train)
        rows = [ROWS[m] for m in self.cfg.methods if m in ROWS]
        needs = [r.name for r in rows if r.needs_flexora]
        if needs and FLEXORA not in self.cfg.methods:
            # Trained by an earlier run of this study with the same settings is as good.
            for seed in self.cfg.seeds:
                if finished_run(self._train_config(FLEXORA, seed)) is None:
                    raise FlexpaftError(
                        f"study method {needs[0]!r} trains on as many blocks as flexora selected "
                        f"for the same seed: add flexora to methods ({self.run_dir(FLEXORA, seed)} "
                        "holds no finished flexora run of these settings)"
                    )
        if any(r.counts_blocks for r in rows):
            self.n_blocks()  # the model's config is readable and its blocks are found
        adv = self.prompts_dir / "adversarial.jsonl"
        if (
            self.cfg.prompts.adversarial
            and (self.prompts_dir / "test.jsonl").is_file()
            and not adv.is_file()
        ):
            # Evaluating without it would drop the adversarial columns from every report.
            raise FlexpaftError(
                f"prompts.adversarial={self.cfg.prompts.adversarial} but {adv} is missing: "
                "the study's prompts step regenerates it (run the study), or set "
                "prompts.adversarial=0"
            )
        self._eval_config("unseen", "base", None)

    # -- the steps ---------------------------------------------------------------------------
    def generate(self) -> None:
        """The prompts step (``prompt_sets.prepare_prompts``)."""
        prepare_prompts(self.cfg, self.prompts_dir)

    def train_all(self) -> None:
        # flexora before the baselines that take their block count from it.
        methods = [m for m in self.cfg.methods if not trains_nothing(m)]
        methods.sort(key=lambda m: m in ROWS and ROWS[m].needs_flexora)  # stable otherwise
        for name in methods:
            pick = BLOCK_PICKERS.get(name)
            for seed in self.cfg.seeds:
                if pick is None:
                    self._train(name, seed)
                    continue
                for label, layers in pick(self, seed):
                    self._train(label, seed, [layers_override(layers)])
        for name in self.cfg.variants:
            for seed in self.cfg.seeds:
                self._train(name, seed)

    def _train(self, label: str, seed: int, extra: Sequence[str] = ()) -> TrainConfig:
        """Train run ``label`` of ``seed`` unless it is done for these settings; its config."""
        from flexpaft.recipe import train

        cfg = self._train_config(label, seed, extra)
        if finished_run(cfg) is not None:
            log.info("train %s seed %d: done, kept", label, seed)
            return cfg
        log.info("train %s seed %d -> %s", label, seed, cfg.output_dir)
        train(cfg, progress=self.progress)
        return cfg

    def n_blocks(self) -> int:
        """Transformer blocks of the study's model, as the search counts them."""
        from flexpaft.methods.flexora.blocks import count_blocks

        if self._n_blocks is None:
            m = self.cfg.model
            pattern = self._train_config("lora", 0).flexora.blocks_pattern
            self._n_blocks = count_blocks(m.name, pattern, m.trust_remote_code, m.gguf_dtype)
        return self._n_blocks

    def _eval_config(self, set_name: str, label: str, seed: int | None) -> EvalConfig:
        """Evaluation of run ``label`` (a run label: ``random-d0`` for a random draw)."""
        from flexpaft.settings.evaluate import EvalConfig

        run = self._eval_run(label, seed)
        o = self._common() + [
            f"data.skip={self.test_skip()}",
            f"data.limit={self.test_window()}",
            f"data.balance_labels={str(self.cfg.balance_test).lower()}",
            f"prompts.prompt_set={self.test_sets()[set_name]}",
            f"output_dir={self.out / 'eval' / set_name / run}",
            f"name={label}",
            f"thresholds={json.dumps(self.cfg.thresholds)}",
        ]
        if seed is not None:
            o.append(f"adapter={self.out / 'train' / run / 'adapter'}")
        if set_name == "unseen":
            o.append(f"prompts.template={self.cfg.own_template}")
            if self.cfg.prompts.adversarial:
                # Always, not only when the file exists: check() refuses a missing one rather
                # than letting the adversarial columns vanish from the reports.
                o.append(f"prompts.adversarial_set={self.prompts_dir / 'adversarial.jsonl'}")
        else:
            o.append("prompts.own=false")  # the own prompt is scored once, with the unseen set
        return load_config(EvalConfig, None, o + _flat("", self.cfg.eval))

    @staticmethod
    def _eval_run(label: str, seed: int | None) -> str:
        """The directory name of run ``label`` under eval/SET/ (and train/): LABEL-sSEED, or the
        label alone for the base model."""
        return label if seed is None else f"{label}-s{seed}"

    def test_skip(self) -> int:
        """Examples skipped before the test slice: none where the task ships its own test split
        (the packaged snips: training reads its train file, evaluation its test file), else the
        training slice, so the test examples come after it in the one shuffled file."""
        from flexpaft.tasks import load_task

        d = self.cfg.data
        separate = not d.source and not d.split and load_task(d.task).packaged_data
        return 0 if separate else self.cfg.train_examples

    def test_window(self) -> int:
        """Raw examples after the training slice that hold the test set.

        Unbalanced: ``test_examples``. Balanced: the shortest window in which every gold answer
        occurs ``test_examples / n_answers`` times, so balancing inside it keeps exactly that many
        of each (the first ones, in data order).
        """
        if not self.cfg.balance_test:
            return self.cfg.test_examples
        if self._window is None:
            self._window = balanced_window(self.cfg.data, self.test_skip(), self.cfg.test_examples)
        return self._window

    def eval_all(self) -> None:
        from flexpaft.evaluation.run import run_eval

        for set_name in self.test_sets():
            for label, seed in self._runs():
                cfg = self._eval_config(set_name, label, seed)
                if evaluated(cfg):
                    log.info("eval %s on %s: done, kept", cfg.name, set_name)
                    continue
                log.info("eval %s (seed %s) on %s -> %s", label, seed, set_name, cfg.output_dir)
                # The study owns its eval directories: results of older settings go.
                run_eval(cfg, progress=self.progress, overwrite=True)

    def labels(self) -> list[str]:
        """Report rows in method order: one per method, one per draw of random, then the variants."""
        out = []
        for m in self.cfg.methods:
            out += report_rows(m, self.cfg.random_draws)
        return out + list(self.cfg.variants)

    def _runs(self) -> list[tuple[str, int | None]]:
        return [
            (label, seed)
            for label in self.labels()
            for seed in ([None] if trains_nothing(label) else self.cfg.seeds)
        ]

    def report_all(self) -> dict[str, Path]:
        """One report per test set, the seeds of a row averaged; printed as ``flexpaft report``
        prints it."""
        from flexpaft.reporting.tables import console_text
        from flexpaft.reporting.write import write_report

        written = {}
        for set_name in self.test_sets():
            runs = [
                (label, self.out / "eval" / set_name / self._eval_run(label, seed))
                for label, seed in self._runs()
            ]
            out = Path(self.cfg.report_dir or self.out / "report") / set_name
            print(f"\n== test set: {set_name} ==")
            report = write_report(
                runs,
                out,
                seeds=True,
                html=True,
                bootstrap=self.cfg.bootstrap,
                thresholds=self.cfg.thresholds,
            )
            for w in report.warnings:
                print(f"flexpaft: warning: {w}", file=sys.stderr)
            text = console_text(report.data, summary=self.progress)
            if text:
                print(text)
            print(f"report: {report.output_dir}/ ({', '.join(report.files)})")
            written[set_name] = out
        return written
