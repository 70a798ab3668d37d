"""Flexora's layer search, the loop: LoRA weights learn on the training split, alpha on held-out data.

Bilevel problem: LoRA weights theta minimise the training loss; the block logits alpha minimise the
validation loss at those weights. Two schemes (gradients in hypergrad.py):

* ``unroll = 0`` (default, the paper's code): first-order alternating steps. One inner AdamW step
  of theta on a training batch (gates held constant), then one outer Adam step of alpha from the
  summed validation losses at the new theta (theta held constant).
* ``unroll = K > 0``: K differentiable inner steps give alpha's hypergradient; then the K steps
  are committed with the real optimizer on the same batches, and alpha takes one Adam step.

Against the official code: alpha's gradient never writes LoRA ``.grad``; the inner optimizer is
built once and keeps its state; alpha is saved every step and checkpointed with everything else
(checkpoint.py); under ``accelerate launch`` alpha's gradient is averaged across ranks so every
rank keeps the same alpha. Outputs: alpha.jsonl, alpha.png (plots.py), selection.json (outcome.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import DistributedType
from torch import nn
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from ..errors import FlexpaftError
from ..io import atomic_write_text
from ..memory import peak_memory
from ..packing import attention_implementation
from ..prompts import Template
from ..tasks.data import split_examples
from ..tasks.spec import AnswerFormat, Example, TaskSpec
from ..train.compute import attention_without_cudnn, checkpointing_paused
from ..train.config import TrainConfig
from ..train.data import answer_loss, make_loader
from ..train.distributed import check_search_backend, fill_deepspeed_batch_size
from ..train.lora import add_lora
from ..train.options import options_loss
from .blocks import find_blocks, modules_by_block
from .budget import StableSelection, passes_per_micro_batch, search_length
from .checkpoint import load_search_checkpoint, read_search_position, save_search_checkpoint
from .chunks import chunked_loss_backward, search_rows
from .gates import GateHooks, LayerGates
from .hypergrad import (  # noqa: F401  (the math's names stay importable from here)
    Batch,
    _WithParams,
    adam_surrogate_update,
    alpha_gradient,
    model_hypergradient,
    sgd_update,
    unrolled_hypergradient,
)
from .outcome import (
    SearchOutcome,
    block_patterns,
    peft_layers_pattern,
    search_config_hash,
    write_selection,
)
from .plots import plot_alpha
from .select import RANK_RULES, gate_ranks, overlap, select_layers
from .stream import BatchStream, FixedBatches

log = logging.getLogger(__name__)

SEARCH_DIR = "flexora"
ALPHA_LOG = "alpha.jsonl"
ALPHA_PLOT = "alpha.png"
SELECTION = "selection.json"
CHECKPOINT = "checkpoint"


class LayerSearch:
    """One search run: built from the trainer's inputs, ``run()`` returns the outcome."""

    def __init__(
        self,
        cfg: TrainConfig,
        model: nn.Module,
        tokenizer: Any,
        task: TaskSpec,
        fmt: AnswerFormat,
        examples: list[Example],
        templates: list[Template],
        accelerator: Any,
    ) -> None:
        f = cfg.flexora
        if f.val_examples < 1:
            raise FlexpaftError("flexora.val_examples must be at least 1 (alpha learns on them)")
        if f.unroll < 0 or f.val_batches < 1:
            raise FlexpaftError("flexora.unroll must be >= 0 and flexora.val_batches >= 1")
        if f.alpha_lr <= 0:
            raise FlexpaftError("flexora.alpha_lr must be positive")
        if f.unroll and cfg.compute.attn_implementation == "flash_attention_2":
            raise FlexpaftError(
                "flexora.unroll > 0 differentiates twice through attention, which "
                "flash_attention_2 cannot: use compute.attn_implementation=sdpa"
            )
        check_search_backend(accelerator)
        # Rows per forward in the first-order steps (chunks.py).
        self.rows = search_rows(
            cfg.optim.batch_size,
            f.micro_batch,
            accelerator.distributed_type == DistributedType.DEEPSPEED,
        )
        if f.ranks not in RANK_RULES:
            raise FlexpaftError(
                f"flexora.ranks must be one of {', '.join(RANK_RULES)}, got {f.ranks!r}"
            )
        self.cfg, self.acc, self.tokenizer = cfg, accelerator, tokenizer
        self.out = Path(cfg.output_dir) / SEARCH_DIR
        self.train_examples, self.val_examples = split_examples(examples, f.val_examples, cfg.seed)

        # Found on the bare model so names read as PEFT's layers_to_transform sees them.
        self.layout = find_blocks(model, f.blocks_pattern)
        if f.selection == "topk" and f.k > self.layout.count:
            # Known once the model's blocks are, but before the search spends its steps.
            raise FlexpaftError(
                f"flexora.k must be between 1 and {self.layout.count} for the topk rule "
                f"(the model has {self.layout.count} blocks), got {f.k}"
            )
        # LoRA on every block, whatever stage 2 will use.
        self.model = add_lora(model, dataclasses.replace(cfg.lora, layers_to_transform=None))
        self.gates = LayerGates(self.layout.count, accelerator.device)
        self.hooks: GateHooks = self.gates.attach(self.model, self.layout)
        self.layers_pattern = peft_layers_pattern(
            self.model.get_base_model(), self.layout, cfg.lora.layers_pattern
        )
        gated = set(self.hooks.blocks.values())
        if len(gated) < self.layout.count:
            log.warning(
                "blocks %s hold no LoRA module: their alpha cannot move",
                sorted(set(range(self.layout.count)) - gated),
            )

        o = cfg.optim
        self.train_templates, self.val_templates = validation_templates(
            f, templates, cfg.seed, _validation_set(cfg, task, fmt, templates)
        )
        self.val_loss_kind = f.resolved_val_loss(fmt)
        self.val_loss_fn = options_loss if self.val_loss_kind == "options" else answer_loss
        train_loader, self.train_sampler = make_loader(
            cfg,
            task,
            fmt,
            self.train_examples,
            self.train_templates,
            tokenizer,
            cfg.seed,
            accelerator,
        )
        # A different seed: validation batches are not drawn in lockstep with training batches.
        val_loader, val_sampler = make_loader(
            cfg,
            task,
            fmt,
            self.val_examples,
            self.val_templates,
            tokenizer,
            cfg.seed + 1,
            accelerator,
            options=self.val_loss_kind == "options",
            # Multi-token options packed after one shared prompt where the kernel allows it.
            attn_implementation=attention_implementation(self.model),
        )
        self.train = BatchStream(train_loader, self.train_sampler, accelerator.device)
        # Rendered and tokenized once, reused every pass.
        self.val = FixedBatches(val_loader, val_sampler, accelerator.device)

        self.unroll = f.unroll
        steps_per_epoch = max(1, len(self.train_sampler.batches(0)) // o.grad_accum)
        global_batch = o.batch_size * o.grad_accum * accelerator.num_processes
        passes = passes_per_micro_batch(f, o.batch_size, self.rows, accelerator.device.type)
        self.total = search_length(f, o, steps_per_epoch, global_batch, passes)
        self.inner_total = self.total * max(1, self.unroll)
        # Outer steps in which only LoRA learns: alpha's first gradients, at a LoRA that has
        # not learned anything yet, would otherwise decide a short search's selection.
        self.alpha_wait = int(f.alpha_warmup * self.total)
        self.stability = StableSelection(f.selection, f.k, f.fraction, f.stable_steps)
        if f.stable_steps and self.total <= f.stable_steps:
            log.warning(
                "the search is %d outer steps, no more than flexora.stable_steps=%d: it cannot "
                "stop early, and its selection may not have settled (raise flexora.search_budget "
                "or set flexora.search_steps)",
                self.total,
                f.stable_steps,
            )

        self.params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(self.params, lr=o.lr, weight_decay=o.weight_decay)
        # search: the schedule squeezed into the search; stage2: the first inner_total steps of
        # the schedule stage 2 will run, so LoRA learns in the search as it will there.
        horizon = self.inner_total
        if f.schedule == "stage2":
            horizon = max(self.inner_total, o.max_steps or math.ceil(o.epochs * steps_per_epoch))
        self.scheduler = get_cosine_schedule_with_warmup(
            optimizer, int(o.warmup_ratio * horizon), horizon
        )
        self.alpha_optimizer = torch.optim.Adam([self.gates.alpha], lr=f.alpha_lr)
        fill_deepspeed_batch_size(accelerator, o.batch_size)
        self.wrapped, self.optimizer = accelerator.prepare(self.model, optimizer)
        self.step, self.inner_steps, self.seconds = 0, 0, 0.0
        self.stopped_early = False
        self.config_hash = search_config_hash(cfg, self.total)

    # -- one step of each level --

    def inner_step(self, micro_batches: Sequence[Batch]) -> float:
        """One optimizer step of the LoRA weights (gates constant); returns the mean loss."""
        acc, o = self.acc, self.cfg.optim
        self.wrapped.train()
        losses = []
        with self.gates.detached():
            for batch in micro_batches:
                with acc.accumulate(self.wrapped):
                    loss = chunked_loss_backward(
                        batch, self.rows, lambda b: answer_loss(self.wrapped, b), self._backward
                    )
                    if acc.sync_gradients and o.max_grad_norm > 0:
                        acc.clip_grad_norm_(self.params, o.max_grad_norm)
                    self.optimizer.step()
                    if acc.sync_gradients:
                        self.scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                losses.append(loss)
        self.inner_steps += 1
        return sum(losses) / len(losses)

    def _backward(self, loss: torch.Tensor, last: bool) -> None:
        # Gradients are synchronised across ranks once per micro-batch, after its last chunk.
        with contextlib.nullcontext() if last else self.acc.no_sync(self.wrapped):
            self.acc.backward(loss)

    def _micro_batches(self) -> list[Batch]:
        return [next(self.train) for _ in range(self.cfg.optim.grad_accum)]

    def _val_batches(self) -> list[Batch]:
        return self.val.take(self.cfg.flexora.val_batches)

    def outer_step(self) -> dict[str, Any]:
        """One alpha update (after one inner step, or K committed inner steps when unrolling)."""
        model = self.acc.unwrap_model(self.wrapped)
        if self.step < self.alpha_wait:
            # alpha waits: the inner step(s) alone, and no validation pass.
            n = max(1, self.unroll)
            train_loss = sum(self.inner_step(self._micro_batches()) for _ in range(n)) / n
            grad, val_loss = None, None
        elif self.unroll:
            steps = [self._micro_batches() for _ in range(self.unroll)]
            val = self._val_batches()
            with checkpointing_paused(model):
                grad, val_loss = model_hypergradient(
                    model,
                    self.optimizer,
                    self.scheduler,
                    self.gates.alpha,
                    steps,
                    val,
                    self.val_loss_fn,
                )
            train_loss = sum(self.inner_step(s) for s in steps) / len(steps)
        else:
            train_loss = self.inner_step(self._micro_batches())
            # The unwrapped model: a DDP forward would wait for a LoRA gradient that never comes.
            model.eval()
            # Under fp16 autocast, alpha's backward needs the loss scaling the LoRA step gets
            # from accelerate's GradScaler, or small gradients flush to zero.
            scaler = getattr(self.acc, "scaler", None)
            scale = float(scaler.get_scale()) if scaler is not None else 1.0
            grad, val_loss = alpha_gradient(
                model,
                self.gates,
                self._val_batches(),
                lambda m, b: self.val_loss_fn(m, b) * scale,
                rows=self.rows,
            )
            grad, val_loss = grad / scale, val_loss / scale
            model.train()
        if grad is not None:
            if self.acc.num_processes > 1:
                grad = self.acc.reduce(grad, reduction="mean")
            # An overflowed fp16 step is skipped, as GradScaler skips the LoRA step (same on
            # all ranks).
            if bool(torch.isfinite(grad).all()):
                self.gates.alpha.grad = grad
                self.alpha_optimizer.step()
            self.alpha_optimizer.zero_grad(set_to_none=True)
        self.step += 1
        alpha = self.gates.alpha.detach().cpu().tolist()
        # The early stop only counts once alpha moves.
        if grad is not None:
            self.stopped_early = self.stability.update(alpha)
        f = self.cfg.flexora
        return {
            "step": self.step,
            "alpha": alpha,
            "alpha_moved": grad is not None,
            "selected": select_layers(alpha, f.selection, f.k, f.fraction, quiet=True),
            "unchanged": self.stability.unchanged,
            "gates": self.gates.values().detach().cpu().tolist(),
            "train_loss": train_loss,
            "val_loss": val_loss,
            "lr": self.scheduler.get_last_lr()[0],
        }

    # -- persistence --

    def save_checkpoint(self) -> None:
        position = {
            "step": self.step,
            "inner_steps": self.inner_steps,
            "train_position": [self.train.epoch, self.train.batch],
            "val_position": self.val.position,
            "stable": [list(self.stability.last or ()), self.stability.unchanged],
            "stopped_early": self.stopped_early,
            "seconds": self.seconds,
            "config_hash": self.config_hash,
        }
        states = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "alpha_optimizer": self.alpha_optimizer.state_dict(),
            "rng": torch.get_rng_state(),
        }
        save_search_checkpoint(
            self.out / CHECKPOINT,
            self.acc.unwrap_model(self.wrapped),
            self.gates.alpha,
            states,
            position,
        )

    def try_resume(self) -> bool:
        ckpt = self.out / CHECKPOINT
        if not (self.cfg.resume and read_search_position(ckpt) is not None):
            return False
        state, opt = load_search_checkpoint(
            ckpt, self.acc.unwrap_model(self.wrapped), self.gates.alpha, self.config_hash
        )
        self.optimizer.load_state_dict(opt["optimizer"])
        self.scheduler.load_state_dict(opt["scheduler"])
        self.alpha_optimizer.load_state_dict(opt["alpha_optimizer"])
        torch.set_rng_state(opt["rng"])
        self.step, self.inner_steps = state["step"], state["inner_steps"]
        self.train.seek(*state["train_position"])
        self.val.position = state["val_position"]
        last, self.stability.unchanged = state["stable"]
        self.stopped_early = state["stopped_early"]
        self.stability.last = tuple(last) if self.step else None
        self.seconds = state["seconds"]
        log.info("resuming the layer search at step %d of %d", self.step, self.total)
        return True

    def _read_log(self) -> list[dict[str, Any]]:
        path = self.out / ALPHA_LOG
        if not path.is_file():
            return []
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [r for r in rows if r["step"] <= self.step]

    # -- the loop --

    def run(self, progress: bool = True) -> SearchOutcome:
        acc = self.acc
        if acc.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(acc.device)
        self.try_resume()
        main = acc.is_main_process
        log_path = self.out / ALPHA_LOG
        if main:
            # Lines written after the checkpoint belong to steps that will be redone.
            kept = self._read_log()
            atomic_write_text(log_path, "".join(json.dumps(r) + "\n" for r in kept))
        acc.wait_for_everyone()
        bar = tqdm(
            total=self.total,
            initial=self.step,
            desc="flexora search",
            disable=not (progress and main),
        )
        t0 = time.perf_counter()
        every = self.cfg.checkpoint_every
        try:
            while self.step < self.total and not self.stopped_early:
                record = self.outer_step()
                bar.update(1)
                if main:
                    with open(log_path, "a", encoding="utf-8") as fh:
                        fh.write(json.dumps(record) + "\n")
                if self.cfg.log_every and self.step % self.cfg.log_every == 0:
                    val = record["val_loss"]
                    val_text = "-" if val is None else f"{val:.4f}"  # None: alpha waited
                    log.info(
                        "search step %d train %.4f val %s",
                        self.step,
                        record["train_loss"],
                        val_text,
                    )
                    bar.set_postfix(val=val_text)
                end = self.step == self.total or self.stopped_early
                if every and (self.step % every == 0 or end):
                    self.seconds += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    if main:
                        self.save_checkpoint()
                    acc.wait_for_everyone()
        finally:
            bar.close()
        self.seconds += time.perf_counter() - t0
        if self.stopped_early:
            log.info(
                "search stopped at step %d of %d: selection unchanged for %d steps",
                self.step,
                self.total,
                self.stability.unchanged,
            )
        return self.finish()

    def finish(self) -> SearchOutcome:
        """Select, write selection.json and the plot, and give the model back without LoRA."""
        cfg, f = self.cfg, self.cfg.flexora
        alpha = self.gates.alpha.detach().cpu().tolist()
        gates = self.gates.values().detach().cpu().tolist()
        layers = select_layers(alpha, f.selection, f.k, f.fraction)
        ranks, rank_pattern, alpha_pattern = {}, {}, {}
        if f.ranks == "gate":
            lora = cfg.lora
            per_block = gate_ranks(alpha, layers, lora.r, lora.alpha, lora.use_rslora)
            names = modules_by_block(self.model.get_base_model(), self.layout)
            rank_pattern, alpha_pattern = block_patterns(names, per_block)
            ranks = {i: rank for i, (rank, _) in per_block.items()}
        memory, kind = peak_memory(self.acc.device)
        spread = 0.0
        if self.acc.num_processes > 1:
            # Every rank selects from its own alpha: check they really are one alpha.
            every = self.acc.gather(self.gates.alpha.detach()[None])
            spread = float((every - every[0]).abs().max())
        outcome = SearchOutcome(
            layers=layers,
            train_examples=self.train_examples,
            alpha=alpha,
            gates=gates,
            rule=f.selection,
            steps=self.step,
            inner_steps=self.inner_steps,
            seconds=self.seconds,
            peak_memory_bytes=memory,
            peak_memory_kind=kind,
            n_blocks=self.layout.count,
            block_list=self.layout.prefix,
            layers_pattern=self.layers_pattern,
            unroll=self.unroll,
            budget_steps=self.total,
            stopped_early=self.stopped_early,
            ranks=ranks,
            rank_pattern=rank_pattern,
            alpha_pattern=alpha_pattern,
            alpha_rank_spread=spread,
        )
        if self.acc.is_main_process:
            write_selection(self.out / SELECTION, outcome, cfg, self.config_hash)
            rows = self._read_log()
            # How settled the selection was: its overlap at every step with the final one.
            for row in rows:
                if "selected" in row:
                    row["overlap_final"] = round(overlap(row["selected"], layers), 4)
            atomic_write_text(self.out / ALPHA_LOG, "".join(json.dumps(r) + "\n" for r in rows))
            plot_alpha(rows, self.out / ALPHA_PLOT)
        self.acc.wait_for_everyone()
        self.release()
        log.info("flexora selected %d of %d blocks: %s", len(layers), self.layout.count, layers)
        return outcome

    def release(self) -> None:
        """Remove hooks and LoRA layers; drop the accelerator's references to them.

        The caller loads a fresh model for stage 2; an accelerator still holding the searched
        model and its optimizer would keep both in memory through stage 2.
        """
        self.hooks.remove()
        for attr, obj in (
            ("_models", self.wrapped),
            ("_optimizers", self.optimizer),
            ("_dataloaders", self.train.loader),
            ("_dataloaders", self.val.loader),
        ):
            held = getattr(self.acc, attr, None)
            if isinstance(held, list):
                held[:] = [x for x in held if x is not obj]
        self.model.unload()


def _validation_set(
    cfg: Any, task: TaskSpec, fmt: AnswerFormat, templates: list[Template]
) -> list[Template] | None:
    """Plain flexora's validation wordings: its prompt set, when it has one, minus the template
    it trains on. None for flexora+paft (it holds a slice of its own training set out) and for
    a plain flexora run without a prompt set."""
    if cfg.method != "flexora" or not cfg.prompts.prompt_set:
        return None
    from ..train.templates import load_valid_set

    trained = {t.text for t in templates}
    found = [t for t in load_valid_set(cfg.prompts.prompt_set, task, fmt) if t.text not in trained]
    if not found:
        raise FlexpaftError(
            f"prompts.prompt_set {cfg.prompts.prompt_set} holds no template but the one flexora "
            "trains on: nothing to validate under"
        )
    return found


def validation_templates(
    f: Any, templates: list[Template], seed: int, others: list[Template] | None = None
) -> tuple[list[Template], list[Template]]:
    """(templates the inner loop trains on, templates the validation batches are rendered under).

    ``heldout`` keeps a seeded share of the prompt set away from the inner loop, so alpha is
    tuned for wordings the LoRA it gates never trained on: the search aims at what the
    evaluation under unseen templates measures. ``others``: wordings that the run never trains
    on at all (plain flexora's prompt set beside its one template); under ``heldout`` they are
    the validation templates and every training template stays in the inner loop.
    """
    mode = f.val_templates
    if mode == "auto":
        mode = "heldout" if len(templates) >= 4 or others else "train"
    if mode == "train":
        return templates, templates
    if others:
        return templates, others
    if len(templates) < 2:
        raise FlexpaftError(
            "flexora.val_templates=heldout needs a prompt set of at least 2 templates "
            f"(this run has {len(templates)}): use flexora+paft, or give plain flexora "
            "prompts.prompt_set (its templates then render the validation batches), or "
            "flexora.val_templates=train"
        )
    order = list(range(len(templates)))
    random.Random(seed).shuffle(order)
    n_val = min(len(templates) - 1, max(1, round(f.val_template_fraction * len(templates))))
    held = set(order[:n_val])
    return (
        [t for i, t in enumerate(templates) if i not in held],
        [t for i, t in enumerate(templates) if i in held],
    )


@attention_without_cudnn()  # its backward gives NaN gradients on our batches (compute.py)
def search_layers(
    cfg: TrainConfig,
    model: nn.Module,
    tokenizer: Any,
    task: TaskSpec,
    fmt: AnswerFormat,
    examples: list[Example],
    templates: list[Template],
    accelerator: Any,
    progress: bool = True,
) -> SearchOutcome:
    """Run Flexora's search on ``model`` (LoRA is added here and removed at the end)."""
    search = LayerSearch(cfg, model, tokenizer, task, fmt, examples, templates, accelerator)
    return search.run(progress)
