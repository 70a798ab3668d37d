"""``flexpaft study``: one comparison end to end from one YAML file.

generate candidate templates -> split them at template level -> train every method for every
seed -> evaluate every model under every unseen test set (same held-out examples for all) ->
one report per test set with 95% intervals and paired differences.

Each step writes its own outputs (``prompts/``, ``train/METHOD-sSEED/``, ``eval/SET/RUN/``,
``report/SET/``) and is skipped when they already exist for the same settings, so an interrupted
study continues where it stopped, and adding a method or a seed reruns only what is new. The
steps are the ordinary ``flexpaft`` commands, so every run of a study can be reproduced by hand.

Flexora's selection is judged against plain LoRA on other blocks (``BLOCK_BASELINES``): ``random``
(the flexora run's block count k, drawn at random, ``random_draws`` runs ``random-dD-sS`` per
seed), ``lora_drop`` (the k blocks whose LoRA output norm is largest after a short LoRA run on
every block), ``grad_probe`` (the k blocks whose LoRA gradient norm is largest at the start, over
a few training batches: the cheapest of the published layer selectors), ``top_half`` and
``bottom_half`` (the upper and lower half of the blocks). They train on the same training
slice as ``lora`` and differ from it only in ``lora.layers_to_transform``; random and lora_drop
read k from ``train/flexora-sS``, so flexora is trained first.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from flexpaft.errors import FlexpaftError, short_repr
from flexpaft.io import atomic_write_json
from flexpaft.settings.common import DataSettings, ModelSettings, balanced_window
from flexpaft.settings.loading import load_config
from flexpaft.settings.schema import opt, section

log = logging.getLogger(__name__)

STUDY_METHODS = (
    "base",
    "lora",
    "topaccuracy",
    "paft",
    "flexora",
    "flexora+paft",
    "random",
    "lora_drop",
    "top_half",
    "bottom_half",
    "grad_probe",
)
# Methods that draw templates from the training split of the prompt set.
_USES_PROMPT_SET = ("topaccuracy", "paft", "flexora+paft")
# Plain LoRA restricted to blocks chosen without Flexora's search: the baselines of its selection.
BLOCK_BASELINES = ("random", "lora_drop", "top_half", "bottom_half", "grad_probe")
# Baselines that take their block count k from the flexora run of the same seed.
_NEEDS_FLEXORA = ("random", "lora_drop", "grad_probe")
# The per-block gradient norms at LoRA's start that rank the blocks for grad_probe.
GRAD_PROBE_SCORES = "grad_probe.json"
# The short all-block LoRA run whose output norms rank the blocks for lora_drop.
LORA_DROP_RANK = "lora_drop-rank"
LORA_DROP_SCORES = "lora_drop.json"


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
        path=True,
    )
    train_set: str = opt(
        "",
        "Training templates file to use instead of the generated training split (e.g. the "
        "paper's prompts in ../shared/prompts/paft/); the generated test split stays unseen.",
        path=True,
    )
    extra_test_sets: dict[str, str] = opt(
        {},
        "More unseen test sets, NAME: template file (e.g. templates written by other people).",
        path=True,
    )


@dataclass
class StudyConfig:
    output_dir: str = opt("runs/study", "Where every step of the study writes.", path=True)
    report_dir: str = opt(
        "",
        "Where the reports go ('' = OUTPUT_DIR/report): two study configs that share one "
        "output_dir (its prompts, and every run they both define identically) keep their own "
        "reports.",
        path=True,
    )
    methods: list[str] = opt(
        ["base", "lora", "topaccuracy", "paft"],
        f"Methods to compare: {', '.join(STUDY_METHODS)}. random, lora_drop, grad_probe, "
        "top_half and bottom_half are LoRA on the blocks a baseline picks (random, lora_drop and "
        "grad_probe: as many as flexora selected for the same seed, so they need flexora); they "
        "are judged against flexora.",
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
    random_draws: int = opt(
        3,
        "random: block selections drawn per seed (distinct while possible), each its own run "
        "random-dD-sS and its own row random-dD in the reports.",
    )
    lora_drop_steps: int = opt(
        0,
        "lora_drop: optimizer steps of the short LoRA run on every block that ranks the blocks "
        "(0 = as many as the flexora search of the same seed took: the same cost).",
    )
    lora_drop_batches: int = opt(
        8, "lora_drop: training batches over which each block's LoRA output norm is averaged."
    )
    grad_probe_batches: int = opt(
        8, "grad_probe: training batches over which each block's LoRA gradient norm is averaged."
    )
    own_template: str = opt(
        "",
        "The user's own prompt ('' = the task's template): the single-prompt methods train on "
        "it (prompts.template; prompts.own_rate draws it under paft), and every model is also "
        "scored under it on the unseen set, for the reports' own-prompt tables.",
    )
    variants: dict[str, dict[str, Any]] = opt(
        {},
        "More rows, each a method under its own training settings: NAME: {method: paft, train: "
        "{prompts.own_rate: 0.25}}. NAME is the row and its run directories (NAME-sSEED); "
        "method is lora, topaccuracy, paft, flexora or flexora+paft; train is applied after "
        "the study's `train`, for this row only (e.g. a setting that only one method accepts).",
    )
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
        if not self.methods and not self.variants:
            raise FlexpaftError("a study needs at least one method or variant")
        if not self.seeds:
            raise FlexpaftError("a study needs at least one seed")
        if self.train_examples < 1 or self.test_examples < 1:
            raise FlexpaftError("train_examples and test_examples must be at least 1")
        if (
            self.random_draws < 1
            or self.lora_drop_batches < 1
            or self.grad_probe_batches < 1
            or self.lora_drop_steps < 0
        ):
            raise FlexpaftError(
                "random_draws and lora_drop_batches must be at least 1, lora_drop_steps >= 0"
            )
        for name, v in self.variants.items():
            _check_variant(name, v)
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
        self._n_blocks: int | None = None

    # -- settings shared by training and evaluation ------------------------------------------
    def _common(self) -> list[str]:
        model = _flat("model.", asdict(self.cfg.model))
        data = {k: v for k, v in asdict(self.cfg.data).items() if k not in ("limit", "skip")}
        return model + _flat("data.", data)

    def run_dir(self, label: str, seed: int) -> Path:
        """Training output of run ``label`` (a method, ``random-dD`` or ``lora_drop-rank``)."""
        return self.out / "train" / f"{label}-s{seed}"

    def _train_overrides(self, label: str, seed: int, extra: Sequence[str] = ()) -> list[str]:
        variant = self.cfg.variants.get(label)
        method = variant["method"] if variant else _method_of(label)
        train_method = variant["method"] if variant else _train_method(label)
        o = self._common() + [
            f"method={train_method}",
            f"seed={seed}",
            f"output_dir={self.run_dir(label, seed)}",
            "data.skip=0",
            f"data.limit={self.cfg.train_examples}",
            # Balancing happens inside the training slice, so it never reaches the test slice.
            f"data.balance_labels={str(self.cfg.balance_train).lower()}",
        ]
        if method in _USES_PROMPT_SET:
            o.append(f"prompts.prompt_set={self.train_templates()}")
        if self.cfg.own_template:
            o.append(f"prompts.template={self.cfg.own_template}")
        # A variant's own settings after the study's; extra last: a baseline's blocks override
        # any lora.layers_to_transform in `train`.
        own = _flat("", variant.get("train") or {}) if variant else []
        return o + _flat("", self.cfg.train) + own + list(extra)

    def _train_config(self, label: str, seed: int, extra: Sequence[str] = ()):
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
        for method in [*self.cfg.methods, *self.cfg.variants]:
            if method != "base":
                # Builds and validates every training config (keys, values) up front.
                o = [x for x in self._train_overrides(method, 0) if "prompt_set=" not in x]
                load_config(TrainConfig, None, o).check_held_out(n_train)
        needs = [m for m in self.cfg.methods if m in _NEEDS_FLEXORA]
        if needs and "flexora" not in self.cfg.methods:
            # Trained by an earlier run of this study with the same settings is as good.
            for seed in self.cfg.seeds:
                if self._finished(self._train_config("flexora", seed)) is None:
                    raise FlexpaftError(
                        f"study method {needs[0]!r} trains on as many blocks as flexora selected "
                        f"for the same seed: add flexora to methods ({self.run_dir('flexora', seed)} "
                        "holds no finished flexora run of these settings)"
                    )
        if {"top_half", "bottom_half"} & set(self.cfg.methods):
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
        from flexpaft.cli import main

        if (self.prompts_dir / "test.jsonl").is_file():
            log.info("prompts: %s exists, kept", self.prompts_dir)
            self._adversarial_up_to_date()
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

    def _adversarial_up_to_date(self) -> None:
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

        p = self.cfg.prompts
        if not p.adversarial:
            return
        path = self.prompts_dir / "adversarial.jsonl"
        task = load_task(self.cfg.data.task)
        fmt = self.cfg.data.answer_format(task)
        test = PromptSet.load(self.prompts_dir / "test.jsonl")
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
                self.prompts_dir,
            )

    def _split_candidates(self, main) -> None:
        """A given pool, validated for the task, split at template level like generated ones."""
        from flexpaft.prompts.generate.adversarial import make_adversarial
        from flexpaft.prompts.task_templates import load_valid_set

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
        from flexpaft.methods.flexora.select import bottom_half_layers, top_half_layers

        # flexora before the baselines that take their block count from it.
        methods = [m for m in self.cfg.methods if m != "base"]
        methods.sort(key=lambda m: m in _NEEDS_FLEXORA)  # stable: the given order otherwise
        for method in methods:
            for seed in self.cfg.seeds:
                if method == "random":
                    for d, layers in enumerate(self.random_layers(seed)):
                        self._train(f"random-d{d}", seed, [_layers_override(layers)])
                elif method == "lora_drop":
                    self._train(method, seed, [_layers_override(self.lora_drop_layers(seed))])
                elif method == "grad_probe":
                    self._train(method, seed, [_layers_override(self.grad_probe_layers(seed))])
                elif method in ("top_half", "bottom_half"):
                    half = top_half_layers if method == "top_half" else bottom_half_layers
                    self._train(method, seed, [_layers_override(half(self.n_blocks()))])
                else:
                    self._train(method, seed)
        for name in self.cfg.variants:
            for seed in self.cfg.seeds:
                self._train(name, seed)

    def _train(self, label: str, seed: int, extra: Sequence[str] = ()):
        """Train run ``label`` of ``seed`` unless it is done for these settings; its config."""
        from flexpaft.recipe import train

        cfg = self._train_config(label, seed, extra)
        if self._finished(cfg) is not None:
            log.info("train %s seed %d: done, kept", label, seed)
            return cfg
        log.info("train %s seed %d -> %s", label, seed, cfg.output_dir)
        train(cfg, progress=self.progress)
        return cfg

    def _finished(self, cfg) -> dict[str, Any] | None:
        """The manifest of the finished run of ``cfg`` in its output_dir, or None."""
        from flexpaft.settings.train import config_dict_hash

        out = Path(cfg.output_dir)
        if not (out / "adapter").is_dir():
            return None
        try:
            manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # a damaged file is redone, not trusted
        if not isinstance(manifest, dict):
            return None
        stored = manifest.get("config")
        if not isinstance(stored, dict):
            return None
        current = _without_added_settings(asdict(cfg), stored, TRAIN_SETTINGS_ADDED)
        if stored == current:
            return manifest
        # A flexora run records the stage-2 config the search built (block list name, gate
        # ranks), not the one requested; the hash of the request names it.
        if cfg.method.startswith("flexora") and manifest.get("request_hash") == config_dict_hash(
            current
        ):
            return manifest
        return None

    # -- the baselines of Flexora's selection ----------------------------------------------
    def flexora_search(self, seed: int) -> dict[str, Any]:
        """The search summary of the finished flexora run of ``seed`` (its layers, n_blocks)."""
        manifest = self._finished(self._train_config("flexora", seed))
        if manifest is None or not manifest.get("flexora", {}).get("layers"):
            raise FlexpaftError(
                f"{self.run_dir('flexora', seed)} holds no finished flexora run of these "
                "settings: the random and lora_drop baselines take their block count from it"
            )
        return manifest["flexora"]

    def random_layers(self, seed: int) -> list[list[int]]:
        """``random_draws`` selections of as many blocks as flexora selected for ``seed``."""
        from flexpaft.methods.flexora.select import random_selections

        search = self.flexora_search(seed)
        k, n = len(search["layers"]), int(search["n_blocks"])
        return random_selections(n, k, self.cfg.random_draws, seed)

    def lora_drop_layers(self, seed: int) -> list[int]:
        """The k blocks with the largest LoRA output norms after a short all-block LoRA run.

        k and (by default) the run's length in optimizer steps are the flexora search's of the
        same seed, so both selections cost about the same; the scores are kept in
        ``train/lora_drop-rank-sS/lora_drop.json`` and reused for the same settings.
        """
        from flexpaft.methods.flexora.baselines import lora_drop_scores
        from flexpaft.methods.flexora.select import select_layers

        search = self.flexora_search(seed)
        steps = self.cfg.lora_drop_steps or max(1, int(search.get("inner_steps") or 0))
        cfg = self._train(LORA_DROP_RANK, seed, [f"optim.max_steps={steps}"])
        path = self.run_dir(LORA_DROP_RANK, seed) / LORA_DROP_SCORES
        key = {"train": asdict(cfg), "batches": self.cfg.lora_drop_batches}
        if _same_config(path, key, {"train": TRAIN_SETTINGS_ADDED}):
            scores = json.loads(path.read_text(encoding="utf-8"))["scores"]
        else:
            adapter = Path(cfg.output_dir) / "adapter"
            scores = lora_drop_scores(cfg, adapter, self.cfg.lora_drop_batches)
            atomic_write_json(path, {"config": key, "scores": scores})
        layers = select_layers(scores, "topk", len(search["layers"]))
        log.info("lora_drop seed %d: blocks %s (scores %s)", seed, layers, scores)
        return layers

    def grad_probe_layers(self, seed: int) -> list[int]:
        """The k blocks (k: the flexora run's) with the largest LoRA gradient norm at the start.

        Scored on ``grad_probe_batches`` training batches of the lora run's own settings, with
        no optimizer step; the scores are kept in ``train/grad_probe-rank-sS/grad_probe.json``.
        """
        from flexpaft.methods.flexora.baselines import gradient_probe_scores
        from flexpaft.methods.flexora.select import select_layers

        search = self.flexora_search(seed)
        cfg = self._train_config("grad_probe", seed)
        # Beside the run, not in it: the run directory is for the trainer alone.
        path = self.run_dir("grad_probe-rank", seed) / GRAD_PROBE_SCORES
        key = {"train": asdict(cfg), "batches": self.cfg.grad_probe_batches}
        if _same_config(path, key, {"train": TRAIN_SETTINGS_ADDED}):
            scores = json.loads(path.read_text(encoding="utf-8"))["scores"]
        else:
            scores = gradient_probe_scores(cfg, self.cfg.grad_probe_batches)
            atomic_write_json(path, {"config": key, "scores": scores})
        layers = select_layers(scores, "topk", len(search["layers"]))
        log.info("grad_probe seed %d: blocks %s (scores %s)", seed, layers, scores)
        return layers

    def n_blocks(self) -> int:
        """Transformer blocks of the study's model, as the search counts them."""
        from flexpaft.methods.flexora.blocks import count_blocks

        if self._n_blocks is None:
            m = self.cfg.model
            pattern = self._train_config("lora", 0).flexora.blocks_pattern
            self._n_blocks = count_blocks(m.name, pattern, m.trust_remote_code, m.gguf_dtype)
        return self._n_blocks

    def _eval_config(self, set_name: str, method: str, seed: int | None):
        """Evaluation of run ``method`` (a run label: ``random-d0`` for a random draw)."""
        from flexpaft.evaluation.run import EvalConfig

        run = "base" if seed is None else f"{method}-s{seed}"
        o = self._common() + [
            f"data.skip={self.test_skip()}",
            f"data.limit={self.test_window()}",
            f"data.balance_labels={str(self.cfg.balance_test).lower()}",
            f"prompts.prompt_set={self.test_sets()[set_name]}",
            f"output_dir={self.out / 'eval' / set_name / run}",
            f"name={method}",
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
        from flexpaft.settings.evaluate import upgrade_stored

        for set_name in self.test_sets():
            for method, seed in self._runs():
                cfg = self._eval_config(set_name, method, seed)
                results = Path(cfg.output_dir) / "results.json"
                if _same_config(results, asdict(cfg), EVAL_SETTINGS_ADDED, upgrade_stored):
                    log.info("eval %s on %s: done, kept", cfg.name, set_name)
                    continue
                log.info("eval %s (seed %s) on %s -> %s", method, seed, set_name, cfg.output_dir)
                # The study owns its eval directories: results of older settings go.
                run_eval(cfg, progress=self.progress, overwrite=True)

    def labels(self) -> list[str]:
        """Report rows in method order: one per method, one per draw of random, then the variants."""
        out = []
        for m in self.cfg.methods:
            out += [f"random-d{d}" for d in range(self.cfg.random_draws)] if m == "random" else [m]
        return out + list(self.cfg.variants)

    def _runs(self) -> list[tuple[str, int | None]]:
        return [
            (label, None) if label == "base" else (label, s)
            for label in self.labels()
            for s in ([None] if label == "base" else self.cfg.seeds)
        ]

    def report_all(self) -> dict[str, Path]:
        from flexpaft.cli import main

        written = {}
        for set_name in self.test_sets():
            runs = [
                f"{m}={self.out / 'eval' / set_name / ('base' if s is None else f'{m}-s{s}')}"
                for m, s in self._runs()
            ]
            out = Path(self.cfg.report_dir or self.out / "report") / set_name
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


# The methods a variant row may train: the block baselines pick blocks for flexora's comparison,
# base trains nothing.
VARIANT_METHODS = ("lora", "topaccuracy", "paft", "flexora", "flexora+paft")
_VARIANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")


def _check_variant(name: str, v: Any) -> None:
    """A variant row: a name that is neither a method nor a run label, a method, a train mapping."""
    if not isinstance(name, str) or not _VARIANT_NAME.fullmatch(name):
        raise FlexpaftError(
            f"variant name {short_repr(name)}: use letters, digits and _ . + - (64 at most)"
        )
    if name in STUDY_METHODS or name.startswith("random-d") or name == LORA_DROP_RANK:
        raise FlexpaftError(f"variant name {name!r} is taken by a study method or run label")
    if not isinstance(v, dict):
        raise FlexpaftError(f"variant {name}: expected a mapping with method and train")
    extra = set(v) - {"method", "train"}
    if extra:
        raise FlexpaftError(f"variant {name}: unknown key {sorted(extra)[0]!r} (method, train)")
    if v.get("method") not in VARIANT_METHODS:
        raise FlexpaftError(
            f"variant {name}: method {short_repr(v.get('method'))} is not one of "
            f"{', '.join(VARIANT_METHODS)}"
        )
    if not isinstance(v.get("train", {}), dict):
        raise FlexpaftError(f"variant {name}: train must be a mapping of flexpaft train keys")


def _method_of(label: str) -> str:
    """The study method of a run label: random-d2 -> random, lora_drop-rank -> lora_drop."""
    if label.startswith("random-d"):
        return "random"
    return "lora_drop" if label == LORA_DROP_RANK else label


def _train_method(label: str) -> str:
    """The flexpaft train method of a run: the block baselines (and lora_drop's ranking run) are
    plain LoRA."""
    method = _method_of(label)
    return "lora" if method in BLOCK_BASELINES else method


def _layers_override(layers: list[int]) -> str:
    return f"lora.layers_to_transform={json.dumps(sorted(layers))}"


# Settings added to flexpaft after studies had run, with the value that reproduces what runs made
# before them did. A stored run that lacks such a key is the same run when the key has that value
# now; a key that is missing and not listed here means a new run. Add every new setting here
# (its value at the time, which stays right if its default later changes).
TRAIN_SETTINGS_ADDED: dict[str, Any] = {
    "optim": {"loss": "answer", "consistency": 0.0},
    "prompts": {"own_rate": 0.0},
    "flexora": {"stage2_examples": "train"},
}
EVAL_SETTINGS_ADDED: dict[str, Any] = {}


def _same_config(
    path: Path,
    cfg: dict[str, Any],
    added: dict[str, Any],
    upgrade: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> bool:
    """True when ``path`` (a manifest or results file) was written for ``cfg``: the same
    settings, apart from settings added since (``added``) at their earlier behaviour; ``upgrade``
    brings a stored config of an older shape (keys that moved) to today's."""
    if not path.is_file():
        return False
    try:
        stored = json.loads(path.read_text(encoding="utf-8")).get("config")
    except (OSError, ValueError, AttributeError):
        return False  # a damaged file is redone, not trusted
    if isinstance(stored, dict) and upgrade is not None:
        stored = upgrade(stored)
    return isinstance(stored, dict) and stored == _without_added_settings(cfg, stored, added)


def _without_added_settings(
    current: dict[str, Any], stored: dict[str, Any], added: dict[str, Any]
) -> dict[str, Any]:
    """``current`` without the settings that ``stored`` lacks and that are at the value in
    ``added`` (nested like the config: what runs made before the setting existed did).

    So a study made before an upgrade is kept rather than retrained; the same setting at any
    other value, or a missing one that ``defaults`` does not name, still means a new run.
    """
    out = {}
    for key, value in current.items():
        if key not in stored:
            if key in added and value == added[key]:
                continue
            out[key] = value
        elif isinstance(value, dict) and isinstance(stored[key], dict):
            sub = added.get(key)
            out[key] = _without_added_settings(
                value, stored[key], sub if isinstance(sub, dict) else {}
            )
        else:
            out[key] = value
    return out
