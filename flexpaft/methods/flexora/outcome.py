"""What a search leaves behind: the outcome object, selection.json, and the hash that names a search."""

from __future__ import annotations

import dataclasses
import enum
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from flexpaft.io import atomic_write_json, sha256_json
from flexpaft.methods.flexora.blocks import BlockLayout
from flexpaft.settings.train import LoraSettings, TrainConfig
from flexpaft.tasks.spec import Example
from flexpaft.training.lora import lora_config

# What a search writes, under OUTPUT_DIR/flexora/.
SEARCH_DIR = "flexora"
ALPHA_LOG = "alpha.jsonl"
ALPHA_PLOT = "alpha.png"
SELECTION = "selection.json"
CHECKPOINT = "checkpoint"
# 2 (2026-12-07): the inner loop trains on stage 2's loss; the own template never validates.
SEARCH_VERSION = 2


@dataclass
class SearchOutcome:
    layers: list[int]
    train_examples: list[Example]
    alpha: list[float]
    gates: list[float]
    rule: str = "positive"
    steps: int = 0
    inner_steps: int = 0
    seconds: float = 0.0
    peak_memory_bytes: int = 0
    peak_memory_kind: str = ""
    n_blocks: int = 0
    block_list: str = ""
    layers_pattern: str = ""
    unroll: int = 0
    budget_steps: int = 0
    stopped_early: bool = False
    # flexora.ranks=gate: rank per selected block, and PEFT patterns by module name.
    ranks: dict[int, int] = field(default_factory=dict)
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    alpha_rank_spread: float = 0.0  # largest |alpha difference| between ranks (0 = identical)
    # The modules the search adapted, by leaf name, and the LoRA settings it ran with: what a
    # stage 2 (or a user's own PEFT setup, to_lora_config) adapts on the selected blocks.
    target_modules: list[str] = field(default_factory=list)
    lora: LoraSettings | None = None
    # flexora.selection=validated: every rung scored on the validation batches (ladder.py).
    ladder: list[dict[str, Any]] = field(default_factory=list)
    compute_share: float = 0.0  # the search's forward+backward work over stage 2's (budget.py)
    inner_loss: str = "answer"  # what the inner loop trained on: stage 2's loss

    def summary(self) -> dict[str, Any]:
        return {
            "layers": self.layers,
            "rule": self.rule,
            "n_layers": len(self.layers),
            "n_blocks": self.n_blocks,
            "block_list": self.block_list,
            "layers_pattern": self.layers_pattern,
            "search_seconds": round(self.seconds, 2),
            "peak_memory_bytes": self.peak_memory_bytes,
            "peak_memory_kind": self.peak_memory_kind,
            "steps": self.steps,
            "inner_steps": self.inner_steps,
            "unroll": self.unroll,
            "budget_steps": self.budget_steps,
            "stopped_early": self.stopped_early,
            "ranks": {str(k): v for k, v in self.ranks.items()},
            "alpha": self.alpha,
            "gates": self.gates,
            "alpha_rank_spread": self.alpha_rank_spread,
            "train_examples": len(self.train_examples),
            "ladder": self.ladder,
            "compute_share": self.compute_share,
            "inner_loss": self.inner_loss,
        }

    def to_lora_config(self, **overrides: Any) -> Any:
        """A ``peft.LoraConfig`` that adapts exactly the selected blocks: an explicit
        ``target_modules`` list, ``layers_to_transform`` and ``layers_pattern``, and with
        ``flexora.ranks=gate`` the per-block ranks as ``rank_pattern``/``alpha_pattern`` keyed by
        escaped full module names. TRL's ``peft_config=`` and ``get_peft_model`` take it as it is;
        ``overrides`` replace LoraConfig fields (``lora_dropout=0.05``)."""
        base = self.lora or LoraSettings()
        settings = dataclasses.replace(
            self.stage2_lora(base),
            target_modules=list(self.target_modules or base.target_modules),
            layers_pattern=base.layers_pattern or self.block_list.rsplit(".", 1)[-1],
        )
        config = lora_config(settings, self.layers)
        for key, value in overrides.items():
            if not hasattr(config, key):
                raise TypeError(f"LoraConfig has no field {key!r}")
            setattr(config, key, value)
        return config

    def stage2_lora(self, settings: LoraSettings) -> LoraSettings:
        """The LoRA settings of stage 2: the block list's name (unless given), the ranks, and
        an explicit module list where the settings say all-linear (PEFT refuses
        layers_to_transform with a string target)."""
        targets = settings.target_modules
        if targets == ["all-linear"] and self.target_modules:
            targets = list(self.target_modules)
        return dataclasses.replace(
            settings,
            target_modules=targets,
            layers_pattern=settings.layers_pattern or self.layers_pattern,
            rank_pattern={**settings.rank_pattern, **self.rank_pattern},
            alpha_pattern={**settings.alpha_pattern, **self.alpha_pattern},
        )


def search_config_hash(cfg: TrainConfig, length: int | None = None) -> str:
    """Hash of what changes the search trajectory (not the selection rule).

    Stage-2 epochs are left out; the search's length in outer steps (``length``; the auto budget
    derives it from one pass) is put in, as it sets the inner learning-rate schedule.
    ``SEARCH_VERSION`` names what the code does with the same settings (a checkpoint written
    by a search that trained or validated otherwise is not continued).
    """
    d = dataclasses.asdict(cfg)
    d["search_length"] = length
    d["search_version"] = SEARCH_VERSION
    # method stays: flexora and flexora+paft draw templates differently.
    for k in ("output_dir", "resume", "checkpoint_every", "log_every"):
        d.pop(k)
    # Under schedule=stage2 the inner learning rates follow stage 2's length, so it stays in.
    stage2 = d["flexora"].get("schedule") == "stage2"
    for k in ("num_workers",) if stage2 else ("epochs", "max_steps", "num_workers"):
        d["optim"].pop(k)
    # micro_batch only sets how many rows share a forward: the steps are the same. The budget
    # sets only the length, which is in; the unit only the recorded compute share.
    for k in (
        "selection",
        "tolerance_se",
        "k",
        "fraction",
        "search_budget",
        "budget_unit",
        "ranks",
        "micro_batch",
        "stage2_examples",
    ):
        d["flexora"].pop(k)
    d["lora"].pop("layers_to_transform")
    return sha256_json(d)[:16]


def peft_layers_pattern(base_model: nn.Module, layout: BlockLayout, given: str = "") -> str:
    """PEFT's ``layers_pattern`` for stage 2: '' when PEFT's default index guess is right.

    Without a pattern PEFT takes the first numbered name segment as the layer index; that fails
    when something numbered precedes the blocks, and then the block list's name is needed.
    """
    if given:
        return given
    for name, module in base_model.named_modules():
        if not isinstance(getattr(module, "lora_B", None), nn.ModuleDict):
            continue
        m = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", name + ".")
        if m is None or int(m.group("idx")) != layout.index_of(name):
            return layout.list_name
    return ""


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (set, frozenset)):
        return sorted(_jsonable(v) for v in obj)
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, enum.Enum):
        return obj.value
    return obj


def block_patterns(
    names: dict[str, int], ranks: dict[int, tuple[int, float]]
) -> tuple[dict[str, int], dict[str, float]]:
    """PEFT rank_pattern and alpha_pattern from (rank, alpha) per block.

    ``names`` maps each adapted module's name in the base model to its block; the keys are those
    names, escaped (PEFT reads keys as regexes matched at the end of a module name), so a key
    names one module whatever the architecture calls its block list.
    """
    rank_pattern, alpha_pattern = {}, {}
    for name, block in sorted(names.items()):
        if block in ranks:
            rank_pattern[re.escape(name)] = ranks[block][0]
            alpha_pattern[re.escape(name)] = ranks[block][1]
    return rank_pattern, alpha_pattern


def write_selection(path: Path, outcome: SearchOutcome, cfg: TrainConfig, config_hash: str) -> None:
    """selection.json: the outcome's summary and the PEFT LoraConfig a stage 2 would use."""
    f = cfg.flexora
    atomic_write_json(
        path,
        {
            **outcome.summary(),
            "config_hash": config_hash,
            "k": f.k,
            "fraction": f.fraction,
            "lora_config": _jsonable(outcome.to_lora_config().to_dict()),
        },
    )
