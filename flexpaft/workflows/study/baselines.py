"""The baselines of Flexora's selection: plain LoRA on blocks that something cheaper picks.

``random`` (the flexora run's block count k, drawn at random, ``random_draws`` runs
``random-dD-sS`` per seed), ``lora_drop`` (the k blocks whose LoRA output norm is largest after a
short LoRA run on every block), ``grad_probe`` (the k blocks whose LoRA gradient norm is largest
at the start, over a few training batches: the cheapest of the published layer selectors),
``top_half`` and ``bottom_half`` (the upper and lower half of the blocks), ``first_last`` (k
blocks at the two ends: the first ceil(k/2) and the last floor(k/2)). They train on the same
training slice as ``lora`` and differ from it only in ``lora.layers_to_transform``; random,
lora_drop, grad_probe and first_last read k from ``train/flexora-sS``, so flexora is trained first.

``BLOCK_PICKERS`` maps each baseline (a row of ``rows.ROWS``) to the function that picks its
blocks: ``pick(study, seed) -> [(run label, blocks), ...]``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from flexpaft.errors import FlexpaftError
from flexpaft.io import atomic_write_json
from flexpaft.workflows.study.config import StudyConfig
from flexpaft.workflows.study.rows import FLEXORA, ROWS, draw_label
from flexpaft.workflows.study.stored import finished_run, stored_scores

if TYPE_CHECKING:
    from flexpaft.settings.train import TrainConfig

log = logging.getLogger(__name__)

# The per-block gradient norms at LoRA's start that rank the blocks for grad_probe.
GRAD_PROBE_SCORES = "grad_probe.json"
# The scores of the short all-block LoRA run that rank the blocks for lora_drop.
LORA_DROP_SCORES = "lora_drop.json"


class StudyRuns(Protocol):
    """What picking blocks needs of a study (``runner.Study``)."""

    cfg: StudyConfig

    def run_dir(self, label: str, seed: int) -> Path: ...

    def _train_config(self, label: str, seed: int, extra: Sequence[str] = ()) -> TrainConfig: ...

    def _train(self, label: str, seed: int, extra: Sequence[str] = ()) -> TrainConfig: ...

    def n_blocks(self) -> int: ...


Picks = list[tuple[str, list[int]]]


def flexora_search(study: StudyRuns, seed: int) -> dict[str, Any]:
    """The search summary of the finished flexora run of ``seed`` (its layers, n_blocks)."""
    manifest = finished_run(study._train_config(FLEXORA, seed))
    if manifest is None or not manifest.get("flexora", {}).get("layers"):
        raise FlexpaftError(
            f"{study.run_dir(FLEXORA, seed)} holds no finished flexora run of these "
            "settings: the random and lora_drop baselines take their block count from it"
        )
    return manifest["flexora"]


def random_selection(study: StudyRuns, seed: int) -> list[list[int]]:
    """``random_draws`` selections of as many blocks as flexora selected for ``seed``."""
    from flexpaft.methods.flexora.select import random_selections

    search = flexora_search(study, seed)
    k, n = len(search["layers"]), int(search["n_blocks"])
    return random_selections(n, k, study.cfg.random_draws, seed)


def lora_drop_selection(study: StudyRuns, seed: int) -> list[int]:
    """The k blocks with the largest LoRA output norms after a short all-block LoRA run.

    k and (by default) the run's length in optimizer steps are the flexora search's of the
    same seed, so both selections cost about the same; the scores are kept in
    ``train/lora_drop-rank-sS/lora_drop.json`` and reused for the same settings.
    """
    from flexpaft.methods.flexora.baselines import lora_drop_scores
    from flexpaft.methods.flexora.select import select_layers

    search = flexora_search(study, seed)
    steps = study.cfg.lora_drop_steps or max(1, int(search.get("inner_steps") or 0))
    rank = ROWS["lora_drop"].rank_label
    cfg = study._train(rank, seed, [f"optim.max_steps={steps}"])
    path = study.run_dir(rank, seed) / LORA_DROP_SCORES
    key = {"train": asdict(cfg), "batches": study.cfg.lora_drop_batches}
    scores = stored_scores(path, key)
    if scores is None:
        adapter = Path(cfg.output_dir) / "adapter"
        scores = lora_drop_scores(cfg, adapter, study.cfg.lora_drop_batches)
        atomic_write_json(path, {"config": key, "scores": scores})
    layers = select_layers(scores, "topk", len(search["layers"]))
    log.info("lora_drop seed %d: blocks %s (scores %s)", seed, layers, scores)
    return layers


def grad_probe_selection(study: StudyRuns, seed: int) -> list[int]:
    """The k blocks (k: the flexora run's) with the largest LoRA gradient norm at the start.

    Scored on ``grad_probe_batches`` training batches of the lora run's own settings, with
    no optimizer step; the scores are kept in ``train/grad_probe-rank-sS/grad_probe.json``.
    """
    from flexpaft.methods.flexora.baselines import gradient_probe_scores
    from flexpaft.methods.flexora.select import select_layers

    search = flexora_search(study, seed)
    cfg = study._train_config("grad_probe", seed)
    # Beside the run, not in it: the run directory is for the trainer alone.
    path = study.run_dir(ROWS["grad_probe"].rank_label, seed) / GRAD_PROBE_SCORES
    key = {"train": asdict(cfg), "batches": study.cfg.grad_probe_batches}
    scores = stored_scores(path, key)
    if scores is None:
        scores = gradient_probe_scores(cfg, study.cfg.grad_probe_batches)
        atomic_write_json(path, {"config": key, "scores": scores})
    layers = select_layers(scores, "topk", len(search["layers"]))
    log.info("grad_probe seed %d: blocks %s (scores %s)", seed, layers, scores)
    return layers


def _random(study: StudyRuns, seed: int) -> Picks:
    return [
        (draw_label("random", d), layers) for d, layers in enumerate(random_selection(study, seed))
    ]


def _lora_drop(study: StudyRuns, seed: int) -> Picks:
    return [("lora_drop", lora_drop_selection(study, seed))]


def _grad_probe(study: StudyRuns, seed: int) -> Picks:
    return [("grad_probe", grad_probe_selection(study, seed))]


def first_last_layers(n_blocks: int, k: int) -> list[int]:
    """k blocks at the two ends: the first ceil(k/2) and the last floor(k/2) (where the official
    Flexora code's selections cluster; the ends are also where the embedding and the head meet
    the blocks). All blocks when k >= n_blocks."""
    if n_blocks < 1 or k < 1:
        raise FlexpaftError(f"first_last needs blocks and k >= 1 (n_blocks={n_blocks}, k={k})")
    if k >= n_blocks:
        return list(range(n_blocks))
    first = -(-k // 2)
    return sorted({*range(first), *range(n_blocks - (k - first), n_blocks)})


def _first_last(study: StudyRuns, seed: int) -> Picks:
    search = flexora_search(study, seed)
    k, n = len(search["layers"]), int(search["n_blocks"])
    return [("first_last", first_last_layers(n, k))]


def _top_half(study: StudyRuns, seed: int) -> Picks:
    from flexpaft.methods.flexora.select import top_half_layers

    return [("top_half", top_half_layers(study.n_blocks()))]


def _bottom_half(study: StudyRuns, seed: int) -> Picks:
    from flexpaft.methods.flexora.select import bottom_half_layers

    return [("bottom_half", bottom_half_layers(study.n_blocks()))]


BLOCK_PICKERS: dict[str, Callable[[StudyRuns, int], Picks]] = {
    "random": _random,
    "lora_drop": _lora_drop,
    "top_half": _top_half,
    "bottom_half": _bottom_half,
    "grad_probe": _grad_probe,
    "first_last": _first_last,
}


def layers_override(layers: list[int]) -> str:
    """The training setting that restricts LoRA to ``layers``."""
    return f"lora.layers_to_transform={json.dumps(sorted(layers))}"
