"""Flexora's layer search, the loop: LoRA weights learn on the training split, alpha on held-out data.

Bilevel problem: LoRA weights theta minimise the training loss; the block logits alpha minimise the
validation loss at those weights. Two schemes (gradients in hypergrad.py):

* ``unroll = 0`` (default, the paper's code): first-order alternating steps. One inner AdamW step
  of theta on a training batch (gates held constant), then one outer Adam step of alpha from the
  summed validation losses at the new theta (theta held constant).
* ``unroll = K > 0``: K differentiable inner steps give alpha's hypergradient; then the K steps
  are committed with the real optimizer on the same batches, and alpha takes one Adam step.

The inner loop trains on stage 2's loss (``optim.loss`` as stage 2 resolves it: the options loss
under flexora+paft with ``optim.loss=auto`` on a scored answer format, the answer loss otherwise),
in the first-order step and in the unrolled one alike; stage 2's consistency term
(``optim.consistency``) is not part of it. Its length (budget.py) is a share of one pass, the same
on every machine; its selection is the validated rule's by default (ladder.py).

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
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import DistributedType
from torch import nn
from tqdm.auto import tqdm

from flexpaft.errors import FlexpaftError
from flexpaft.io import atomic_write_text
from flexpaft.methods.flexora.blocks import find_blocks
from flexpaft.methods.flexora.budget import (
    StableSelection,
    compute_share,
    inner_schedule,
    passes_per_micro_batch,
    search_length,
    warn_short_search,
)
from flexpaft.methods.flexora.checkpoint import read_alpha_log, resume_search, save_search
from flexpaft.methods.flexora.chunks import chunked_loss_backward, search_rows
from flexpaft.methods.flexora.conclude import conclude
from flexpaft.methods.flexora.gates import GateHooks, LayerGates
from flexpaft.methods.flexora.hypergrad import Batch, model_hypergradient, scaled_alpha_gradient
from flexpaft.methods.flexora.outcome import (
    ALPHA_LOG,
    SEARCH_DIR,
    SearchOutcome,
    peft_layers_pattern,
    search_config_hash,
)
from flexpaft.methods.flexora.select import provisional_rule, select_layers
from flexpaft.methods.flexora.stream import search_streams, validation_batches
from flexpaft.methods.flexora.wordings import validation_set, validation_templates
from flexpaft.packing import attention_implementation
from flexpaft.prompts import Template
from flexpaft.prompts.task_templates import own_template
from flexpaft.settings.train import TrainConfig
from flexpaft.tasks.data import split_examples
from flexpaft.tasks.spec import AnswerFormat, Example, TaskSpec
from flexpaft.training.compute import attention_without_cudnn, checkpointing_paused
from flexpaft.training.data import answer_loss
from flexpaft.training.distributed import check_search_backend, fill_deepspeed_batch_size
from flexpaft.training.lora import add_lora
from flexpaft.training.options import options_loss

log = logging.getLogger(__name__)


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
        own: Template | None = None,
        val_examples: list[Example] | None = None,
    ) -> None:
        f = cfg.flexora
        if val_examples is None and f.val_examples < 1:
            raise FlexpaftError("flexora.val_examples must be at least 1 (alpha learns on them)")
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
        self.cfg, self.acc, self.tokenizer = cfg, accelerator, tokenizer
        self.out = Path(cfg.output_dir) / SEARCH_DIR
        if val_examples is not None:  # given apart (flexpaft.search_layers)
            self.train_examples, self.val_examples = list(examples), list(val_examples)
        else:
            self.train_examples, self.val_examples = split_examples(
                examples, f.val_examples, cfg.seed
            )

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

        o = cfg.optim
        self.train_templates, self.val_templates = validation_templates(
            f, templates, cfg.seed, validation_set(cfg, task, fmt, templates, own), own
        )
        self.val_loss_kind = f.resolved_val_loss(fmt)
        self.val_loss_fn = options_loss if self.val_loss_kind == "options" else answer_loss
        # The inner loop learns what stage 2 will learn: its loss, on batches of its layout.
        self.train_loss_kind = o.resolved_loss(cfg.spec, fmt)
        self.train_loss_fn = options_loss if self.train_loss_kind == "options" else answer_loss
        self.train, self.val = search_streams(
            cfg, task, fmt, (self.train_examples, self.val_examples),
            (self.train_templates, self.val_templates), tokenizer, accelerator, own,
            (self.train_loss_kind == "options", self.val_loss_kind == "options"),
            attention_implementation(self.model),
        )  # fmt: skip
        # The validated rule's second check: the validation examples under the own prompt.
        # Not where the validation batches are the own prompt's already (plain flexora without
        # a prompt set validates under the one template it trains on): the same losses twice.
        self.own_val = None
        mine = own if own is not None else own_template(cfg.prompts.template, task, fmt)
        if (
            f.selection == "validated"
            and f.own_check
            and [t.text for t in self.val_templates] != [mine.text]
        ):
            self.own_val = validation_batches(
                cfg, task, fmt, self.val_examples, [mine], tokenizer, accelerator,
                self.val_loss_kind == "options", attention_implementation(self.model),
            )  # fmt: skip

        self.unroll = f.unroll
        steps_per_epoch = max(1, len(self.train.sampler.batches(0)) // o.grad_accum)
        global_batch = o.batch_size * o.grad_accum * accelerator.num_processes
        self.total = search_length(f, o, steps_per_epoch, global_batch)
        # (steps per epoch, compute units per first-order micro-batch), for compute_share.
        passes = passes_per_micro_batch(f, o.batch_size, self.rows, accelerator.device.type)
        self.cost = (steps_per_epoch, passes)
        self.inner_total = self.total * max(1, self.unroll)
        # Outer steps in which only LoRA learns: alpha's first gradients, at a LoRA that has
        # not learned anything yet, would otherwise decide a short search's selection.
        self.alpha_wait = int(f.alpha_warmup * self.total)
        self.stability = StableSelection(
            provisional_rule(f.selection), f.k, f.fraction, f.stable_steps
        )
        warn_short_search(self.total, f.stable_steps)

        self.params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(self.params, lr=o.lr, weight_decay=o.weight_decay)
        self.scheduler = inner_schedule(f, o, optimizer, self.inner_total, steps_per_epoch)
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
                        batch,
                        self.rows,
                        lambda b: self.train_loss_fn(self.wrapped, b),
                        self._backward,
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
                    self.train_loss_fn,
                )
            train_loss = sum(self.inner_step(s) for s in steps) / len(steps)
        else:
            train_loss = self.inner_step(self._micro_batches())
            # The unwrapped model: a DDP forward would wait for a LoRA gradient that never comes.
            grad, val_loss = scaled_alpha_gradient(
                model,
                self.gates,
                self._val_batches(),
                self.val_loss_fn,
                self.rows,
                getattr(self.acc, "scaler", None),
            )
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
            # validated: its anchor's (positive) until the rungs are scored at the end.
            "selected": select_layers(
                alpha, provisional_rule(f.selection), f.k, f.fraction, quiet=True
            ),
            "unchanged": self.stability.unchanged,
            "gates": self.gates.values().detach().cpu().tolist(),
            "train_loss": train_loss,
            "val_loss": val_loss,
            "lr": self.scheduler.get_last_lr()[0],
        }

    # -- the loop --

    def run(self, progress: bool = True) -> SearchOutcome:
        acc = self.acc
        if acc.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(acc.device)
        resume_search(self)
        main = acc.is_main_process
        log_path = self.out / ALPHA_LOG
        if main:
            # Lines written after the checkpoint belong to steps that will be redone.
            kept = read_alpha_log(self.out / ALPHA_LOG, self.step)
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
                        save_search(self)
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
        """Select (conclude.py), write selection.json and the plot, and give the model back
        without LoRA."""
        outcome, message = conclude(self)
        self.acc.wait_for_everyone()
        self.release()
        log.info("%s", message)
        return outcome

    def compute_share(self, steps: int) -> float:
        """The work of ``steps`` outer steps over stage 2's (budget.compute_share)."""
        steps_per_epoch, passes = self.cost
        return compute_share(self.cfg.flexora, self.cfg.optim, steps_per_epoch, steps, passes)

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
            ("_dataloaders", self.own_val.loader if self.own_val is not None else None),
        ):
            held = getattr(self.acc, attr, None)
            if isinstance(held, list):
                held[:] = [x for x in held if x is not obj]
        self.model.unload()


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
    own: Template | None = None,
    val_examples: list[Example] | None = None,
) -> SearchOutcome:
    """Run Flexora's search on ``model`` (LoRA is added here and removed at the end).

    ``own``: the user's own template, drawn at ``prompts.own_rate`` where it is among the
    templates (``methods.templates.drawn_own_template``). ``val_examples``: alpha's validation
    examples; by default ``flexora.val_examples`` of ``examples`` are held out for it."""
    search = LayerSearch(
        cfg, model, tokenizer, task, fmt, examples, templates, accelerator, own, val_examples
    )
    return search.run(progress)
