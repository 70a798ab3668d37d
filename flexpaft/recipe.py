"""The training recipe, top to bottom: data -> templates -> blocks -> LoRA -> loop -> adapter.

``train(cfg)`` is what ``flexpaft train`` (and ``flexpaft.training``) runs: every input is checked
before the model loads, the method's template policy picks the templates
(``methods.templates``), its layer policy the blocks (``methods.layers``: all, or Flexora's
search), then ``train.loop`` trains a fresh LoRA there and the run directory gets the PEFT
adapter, its model card and ``manifest.json``. ``search(cfg)`` runs the layer search alone
(``flexpaft search``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from flexpaft.chat import chat_record, resolve_chat
from flexpaft.data_checks import warn_duplicates, warn_long_prompts
from flexpaft.errors import FlexpaftError
from flexpaft.io import atomic_write_json, sha256_json
from flexpaft.locks import run_dir_lock
from flexpaft.memory import releases_memory
from flexpaft.methods.layers import LAYER_POLICIES
from flexpaft.methods.templates import drawn_own_template, training_templates
from flexpaft.modelcard import write_model_card
from flexpaft.models import peek_config
from flexpaft.prompts import PromptSet
from flexpaft.settings.methods import METHODS, with_layers
from flexpaft.settings.train import TrainConfig, config_hash
from flexpaft.splits import TRAIN_HASHES, write_hashes
from flexpaft.tasks.spec import Example
from flexpaft.version import versions

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """A finished training run: where the PEFT adapter went and the run's manifest (config,
    method, templates, layers, loss, timings, versions)."""

    adapter_dir: Path
    manifest: dict[str, Any]

    @property
    def output_dir(self) -> Path:
        return self.adapter_dir.parent

    @property
    def layers(self) -> list[int]:
        """The blocks the adapter adapts."""
        return list(self.manifest["layers"])

    @property
    def metrics(self) -> dict[str, Any]:
        """The run's figures: steps, seconds, tokens/s, peak memory, the last logged loss and,
        with evaluation during training, the best validation result."""
        m = self.manifest
        keys = ("steps", "train_seconds", "tokens", "tokens_per_second", "peak_memory_bytes")
        out = {k: m.get(k) for k in keys}
        out["final_loss"] = _last_loss(self.output_dir)
        if m.get("validation"):
            out["validation"] = m["validation"]
        return out


def _last_loss(run_dir: Path) -> float | None:
    from flexpaft.stored import read_jsonl_objects
    from flexpaft.training.tracking import HISTORY

    path = run_dir / HISTORY
    if not path.is_file():
        return None
    rows = [row for _, row in read_jsonl_objects(path, "delete it")]
    return rows[-1].get("loss") if rows else None


def examples_digest(examples: list[Example]) -> str:
    return sha256_json([[e.fields, e.options, e.gold] for e in examples])


def make_accelerator(cfg: TrainConfig) -> Any:
    """One Accelerator for every launch: plain, ``accelerate launch`` or ``torchrun``; the
    ``report_to`` trackers go to accelerate (checked to be installed first)."""
    from flexpaft.training.distributed import build_accelerator
    from flexpaft.training.tracking import tracker_names

    trackers = tracker_names(cfg.report_to)
    return build_accelerator(
        cfg.optim.grad_accum,
        cfg.compute,
        log_with=trackers or None,
        project_dir=cfg.output_dir if trackers else None,
    )


@releases_memory
def train(
    cfg: TrainConfig,
    accelerator: Any | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> TrainResult:
    """Run ``cfg`` end to end and return where the adapter went.

    ``overwrite``: train into an output directory that holds other files or a finished run of
    another configuration (only flexpaft's own entries are replaced).

    The main process holds the output directory for the whole run (locks.run_dir_lock): a
    second run started into it is refused in one line instead of deleting this one's
    checkpoint in progress."""
    acc = accelerator or make_accelerator(cfg)
    if not acc.is_main_process:
        return _train(cfg, acc, progress, overwrite)
    with run_dir_lock(cfg.output_dir, "flexpaft train"):
        return _train(cfg, acc, progress, overwrite)


def _train(cfg: TrainConfig, acc: Any, progress: bool, overwrite: bool) -> TrainResult:
    from accelerate.utils import set_seed

    from flexpaft.training.compute import check_compute, load_for_training
    from flexpaft.training.loop import train_lora
    from flexpaft.training.lora import check_layers_exist
    from flexpaft.training.rundir import check_run_dir, finish_run_dir, prepare_run_dir
    from flexpaft.training.validation import Validator, eval_templates

    check_compute(cfg.compute, acc.device)  # before minutes of loading data and weights
    if cfg.push_to_hub:
        from huggingface_hub import get_token

        if not get_token():  # before training, not after it
            raise FlexpaftError("push_to_hub needs a hub token: set HF_TOKEN (or `hf auth login`)")
    # Before any data or model is loaded: a bad output_dir must not cost a training run.
    request_hash = config_hash(cfg)
    check_run_dir(cfg.output_dir, request_hash, overwrite)
    if acc.is_main_process:
        prepare_run_dir(cfg.output_dir, request_hash, overwrite)
    acc.wait_for_everyone()
    if cfg.resume:
        from flexpaft.training.checkpoint import read_position

        read_position(Path(cfg.output_dir) / "checkpoint")  # a torn one is reported now

    set_seed(cfg.seed)
    started = time.time()
    task, fmt, examples = cfg.data.load("train")
    cfg.check_held_out(len(examples))
    cfg.check_format(fmt)  # the options loss and consistency need scored options
    if acc.is_main_process:
        warn_duplicates(examples, "training")
    v = cfg.validation
    if v.enabled:
        from flexpaft.tasks.data import split_examples

        # Held out before anything looks at the data (topaccuracy's ranking, the layer search).
        examples, val_examples = split_examples(examples, v.eval_examples, cfg.seed + 2)
    if cfg.lora.layers_to_transform:  # a block the model lacks, found before its weights load
        base = peek_config(cfg.model.name, cfg.model.trust_remote_code)
        if base is not None:
            check_layers_exist(cfg.lora.layers_to_transform, base)
    model, tok = load_for_training(cfg.model, cfg.compute, acc.device)
    templates, template_info = training_templates(cfg, task, fmt, examples, model, tok)
    own = drawn_own_template(cfg, task, fmt)
    chat = resolve_chat(cfg.model.chat_template, tok)
    if acc.is_main_process:
        warn_long_prompts(
            task,
            fmt,
            examples,
            list(templates),
            tok,
            cfg.data.max_length,
            "data.max_length",
            chat=chat,
            eos=cfg.data.appends_eos(fmt),
        )
    validator = None
    if v.enabled:
        held_out = eval_templates(v, task, fmt, templates)
        validator = Validator(v, task, fmt, val_examples, held_out, tok, acc, cfg.data.max_length)

    all_examples = examples  # a layer search holds some out: they count as training data
    blocks = LAYER_POLICIES[cfg.spec.layers](
        cfg, model, tok, task, fmt, examples, templates, acc, progress, own=own
    )
    cfg = dataclasses.replace(cfg, lora=blocks.lora)
    out = Path(cfg.output_dir)
    result = train_lora(
        cfg,
        acc,
        model,
        tok,
        task,
        fmt,
        blocks.examples,
        templates,
        blocks.layers,
        progress,
        validator,
        own=own,
    )
    manifest = {
        "method": cfg.method,
        "config": asdict(cfg),
        "config_hash": config_hash(cfg),
        "request_hash": request_hash,
        "versions": versions(),
        "task": task.name,
        "format": fmt.value,
        "examples": len(blocks.examples),
        "data_digest": examples_digest(blocks.examples),
        "train_hashes": {"file": f"adapter/{TRAIN_HASHES}", "count": len(all_examples)},
        "templates": template_info,
        "chat_template": chat_record(cfg.model.chat_template, chat),
        "prompt_set_digest": PromptSet(list(templates)).digest(),
        "layers": result["layers"],
        # optim.loss as it was applied (auto decided for the method and answer format).
        "loss": cfg.optim.resolved_loss(cfg.spec, fmt),
        "flexora": blocks.summary,
        "seed": cfg.seed,
        "world_size": acc.num_processes,
        "device": str(acc.device),
        "wall_seconds": round(time.time() - started, 2),
        **result["stats"],
    }
    if acc.is_main_process:
        write_hashes(out / "adapter" / TRAIN_HASHES, all_examples)
        atomic_write_json(out / "manifest.json", manifest)
        PromptSet(list(templates)).save(out / "train_templates.jsonl")
        write_model_card(out / "adapter", manifest)
        finish_run_dir(out)
        if cfg.push_to_hub:
            from flexpaft.hub import push_adapter

            url = push_adapter(out / "adapter", cfg.hub_model_id, cfg.hub_private)
            log.info("pushed the adapter to %s", url)
    acc.wait_for_everyone()
    return TrainResult(out / "adapter", manifest)


def search(cfg: TrainConfig, progress: bool = True) -> Any:
    """Flexora's layer search alone (``flexpaft search``): writes ``OUTPUT_DIR/flexora/``
    (selection.json with the layers and a PEFT LoraConfig for them, alpha.jsonl, alpha.png, a
    resumable checkpoint) and returns the ``SearchOutcome`` (``.layers``, ``.to_lora_config()``).

    A method that does not search is searched as its searching twin: lora as flexora, paft as
    flexora+paft (the same templates)."""
    import os

    from flexpaft.locks import run_dir_lock
    from flexpaft.validate import check_writable_dir

    try:
        name = with_layers(cfg.method, "search")
    except ValueError:
        searching = " or ".join(m.name for m in METHODS.values() if m.searches_layers)
        raise FlexpaftError(
            f"flexpaft search needs method {searching} (lora and paft are mapped to them), "
            f"got {cfg.method!r}"
        ) from None
    cfg = dataclasses.replace(cfg, method=name)
    check_writable_dir(cfg.output_dir)
    if os.environ.get("RANK", "0") != "0":  # under a launcher the main process holds it
        return _search(cfg, progress)
    with run_dir_lock(cfg.output_dir, "flexpaft search"):
        return _search(cfg, progress)


def _search(cfg: TrainConfig, progress: bool) -> Any:
    from accelerate.utils import set_seed

    from flexpaft.methods.flexora.search import search_layers
    from flexpaft.training.compute import check_compute, load_for_training

    acc = make_accelerator(cfg)
    check_compute(cfg.compute, acc.device)
    set_seed(cfg.seed)
    task, fmt, examples = cfg.data.load("train")
    cfg.check_held_out(len(examples))  # names flexora.val_examples before the model loads
    model, tok = load_for_training(cfg.model, cfg.compute, acc.device)
    templates, _ = training_templates(cfg, task, fmt, examples, model, tok)
    own = drawn_own_template(cfg, task, fmt)
    return search_layers(
        cfg, model, tok, task, fmt, examples, templates, acc, progress=progress, own=own
    )
