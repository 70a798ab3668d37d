"""The training loop: a fresh LoRA (on given blocks) trained on a template stream, saved as a PEFT
adapter.

One code path for one device and for ``accelerate launch`` (DDP, DeepSpeed, FSDP): the Accelerator
handles device placement, mixed precision, gradient synchronisation and accumulation, and shards
the DataLoader, whose batch sampler emits one global template stream (see sampling.py). The loop
resumes exactly from its checkpoint, stops at the first NaN, and evaluates during training when
given a ``Validator``. What to train (which templates, which blocks) is decided before it by the
method's policies (``flexpaft.methods``); the loop never asks which method it runs.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from flexpaft.chat import chat_record, resolve_chat
from flexpaft.errors import FlexpaftError
from flexpaft.io import atomic_directory
from flexpaft.memory import peak_memory
from flexpaft.models import base_fingerprint
from flexpaft.packing import attention_implementation
from flexpaft.prompts import Template
from flexpaft.settings.train import TrainConfig, config_hash
from flexpaft.tasks.spec import AnswerFormat, Example, TaskSpec
from flexpaft.training.checkpoint import (
    Position,
    load_checkpoint,
    read_position,
    save_checkpoint,
    saved_rng_states,
    set_rng_states,
)
from flexpaft.training.compute import attention_without_cudnn, compute_summary
from flexpaft.training.consistency import batch_tokens, consistency_loss
from flexpaft.training.data import answer_loss
from flexpaft.training.distributed import (
    adapter_state_dict,
    fill_deepspeed_batch_size,
    weights_sharded,
)
from flexpaft.training.guard import DivergenceGuard
from flexpaft.training.guard import grad_norm as total_grad_norm
from flexpaft.training.loader import make_loader
from flexpaft.training.lora import adapted_layers, add_lora
from flexpaft.training.optim import make_optimizer, make_scheduler
from flexpaft.training.options import options_loss
from flexpaft.training.tracking import RunLog
from flexpaft.training.validation import Validator

log = logging.getLogger(__name__)

ADAPTER_INFO = "flexpaft_adapter.json"
VALIDATION_DIR = "validation"  # the validation state beside the checkpoint


def started(loader: Any) -> Iterator[Any]:
    """An iterator over ``loader`` whose underlying DataLoader iterator already exists.

    accelerate's DataLoaderShard creates it (and so draws the DataLoader's seed from torch's RNG)
    on the first ``next``, not on ``iter``; the first batch is fetched here so that restored RNG
    states are set after that draw, as in the run that saved them.
    """
    it = iter(loader)
    try:
        first = next(it)
    except StopIteration:
        return iter(())
    return itertools.chain([first], it)


def training_loss(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], o: Any, kind: str
) -> torch.Tensor:
    """The loss ``optim.consistency`` and ``kind`` (``optim.loss`` resolved) ask for, on one
    micro-batch."""
    if o.consistency > 0:
        return consistency_loss(model, batch, o.consistency)[0]
    if kind == "options":
        return options_loss(model, batch)
    return answer_loss(model, batch)


@attention_without_cudnn()  # its backward gives NaN gradients on our batches (compute.py)
def train_lora(
    cfg: TrainConfig,
    acc: Accelerator,
    model: torch.nn.Module,
    tok: Any,
    task: TaskSpec,
    fmt: AnswerFormat,
    examples: list[Example],
    templates: list[Template],
    layers: list[int] | None,
    progress: bool = True,
    validator: Validator | None = None,
    own: Template | None = None,
) -> dict[str, Any]:
    """Train a fresh LoRA (on ``layers`` only, if given) and save it atomically as a PEFT adapter.

    With a ``validator``, the saved adapter is the best evaluation's, and training may stop early.
    ``own``: the user's own template, drawn at ``prompts.own_rate`` (``make_loader``).
    """
    o = cfg.optim
    out = Path(cfg.output_dir)
    ckpt_dir = out / "checkpoint"
    if acc.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(acc.device)  # stage 2 alone, not the search before it
    model = add_lora(model, cfg.lora, layers)
    fingerprint = base_fingerprint(model.get_base_model().config)

    loss_kind = o.resolved_loss(cfg.spec, fmt)
    # Batches hold every option's answer for the options loss, and two renderings for consistency;
    # the sampler's plan and the resume position count batches, not items, as before.
    loader, sampler = make_loader(
        cfg,
        task,
        fmt,
        examples,
        templates,
        tok,
        cfg.seed,
        acc,
        options=o.scores_options(cfg.spec, fmt),
        pairs=o.consistency > 0,
        own=own,
        # Multi-token options packed after one shared prompt where the kernel takes a 4D mask.
        attn_implementation=attention_implementation(model),
    )
    batches_per_epoch = len(sampler.batches(0))
    steps_per_epoch = max(1, batches_per_epoch // o.grad_accum)
    total_steps = o.max_steps or max(1, math.ceil(o.epochs * steps_per_epoch))

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(o.optimizer, params, o.lr, o.weight_decay)
    scheduler = make_scheduler(
        o.lr_scheduler_type, optimizer, int(o.warmup_ratio * total_steps), total_steps
    )
    fill_deepspeed_batch_size(acc, o.batch_size)
    # The scheduler stays ours: accelerate would step it once per process per optimizer step.
    model, optimizer = acc.prepare(model, optimizer)
    compute = compute_summary(acc, model, cfg.compute)
    checkpoint_every = cfg.checkpoint_every
    if checkpoint_every and weights_sharded(acc):
        # Our checkpoint files hold one process's view of the LoRA and optimizer state.
        log.warning("no resumable checkpoints under FSDP or ZeRO-3: every rank holds a shard")
        checkpoint_every = 0

    pos = Position(config_hash=config_hash(cfg))
    resume_rng = None
    # resume=false never reads the old checkpoint, so a damaged one cannot stop a fresh start.
    existing = read_position(ckpt_dir) if cfg.resume else None
    if existing is not None:
        if existing.config_hash != pos.config_hash:
            raise FlexpaftError(
                f"{ckpt_dir} holds a checkpoint of a different configuration: use another "
                "output_dir, or --set resume=false to start over"
            )
        if existing.step > total_steps:
            # The same configuration cannot have saved past its own last step.
            raise FlexpaftError(
                f"checkpoint {ckpt_dir} is damaged (trainer_state.json: step {existing.step} is "
                f"past this run's {total_steps} steps): --set resume=false to start over"
            )
        pos = load_checkpoint(ckpt_dir, acc.unwrap_model(model), optimizer, scheduler)
        resume_rng = saved_rng_states(ckpt_dir)
        if validator is not None:
            validator.resume(out / VALIDATION_DIR, pos.step)
        log.info("resuming at step %d (epoch %d, batch %d)", pos.step, pos.epoch, pos.batch)

    runlog = RunLog(out, acc, asdict(cfg), pos.step, project="flexpaft")
    model.train()
    bar = tqdm(
        total=total_steps,
        initial=pos.step,
        desc=f"train {cfg.method}",
        disable=not (progress and acc.is_main_process),
    )
    tokens_seen, real_seen, padded_seen, loss_sum, loss_n = 0, 0, 0, 0.0, 0
    guard = DivergenceGuard(acc, ckpt_dir)
    grad_norm: float | None = None
    t0 = time.perf_counter()
    while pos.step < total_steps:
        sampler.set_epoch(pos.epoch, skip=pos.batch)
        batches = started(loader)
        if resume_rng is not None:
            # After the iterator drew its seed, as in the run that saved the states: dropout
            # masks then continue exactly where they stopped.
            set_rng_states(resume_rng)
            resume_rng = None
        for batch in batches:
            batch = {k: v.to(acc.device, non_blocking=True) for k, v in batch.items()}
            with acc.accumulate(model):
                loss = training_loss(model, batch, o, loss_kind)
                acc.backward(loss)
                if acc.sync_gradients and o.max_grad_norm > 0:
                    norm = acc.clip_grad_norm_(params, o.max_grad_norm)
                    grad_norm = float(norm) if norm is not None else None
                elif acc.sync_gradients:
                    grad_norm = total_grad_norm(params)
                if acc.sync_gradients:
                    # Before the step: the weights and the checkpoint stay the last good ones.
                    scaled = getattr(acc, "scaler", None) is not None
                    guard.check(pos.step + 1, float(loss.detach()), grad_norm, scaled)
                optimizer.step()
                if acc.sync_gradients:
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            pos.batch += 1
            # Every forward pass's tokens (consistency's second view too), so tokens and
            # tokens/s in the manifest carry each setting's extra cost.
            real, padded = batch_tokens(batch)
            tokens_seen, real_seen = tokens_seen + real, real_seen + real
            padded_seen += padded
            loss_sum, loss_n = loss_sum + float(loss.detach()), loss_n + 1
            if not acc.sync_gradients:
                continue
            pos.step += 1
            bar.update(1)
            # Every log_every steps, and the last one: a run shorter than log_every still leaves
            # its history.jsonl and loss.png.
            if (cfg.log_every and pos.step % cfg.log_every == 0) or pos.step >= total_steps:
                bar.set_postfix(
                    loss=f"{loss_sum / max(loss_n, 1):.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}"
                )
                log.info("step %d loss %.4f", pos.step, loss_sum / max(loss_n, 1))
                runlog.log(
                    {
                        "step": pos.step,
                        "epoch": pos.epoch,
                        "loss": loss_sum / max(loss_n, 1),
                        "lr": scheduler.get_last_lr()[0],
                        "tokens": pos.tokens + tokens_seen,
                        "seconds": round(pos.seconds + time.perf_counter() - t0, 3),
                    }
                )
                loss_sum, loss_n = 0.0, 0
            if validator is not None and validator.due(pos.step, total_steps):
                started_eval = time.perf_counter()
                if validator.run(pos.step, model):
                    log.info("early stop at step %d: no better validation for a while", pos.step)
                    total_steps = pos.step
                t0 += time.perf_counter() - started_eval  # train_seconds counts training only
            if checkpoint_every and pos.step % checkpoint_every == 0 and pos.step < total_steps:
                pos.tokens += tokens_seen
                pos.seconds += time.perf_counter() - t0
                tokens_seen, t0 = 0, time.perf_counter()
                if acc.is_main_process:
                    save_checkpoint(ckpt_dir, acc.unwrap_model(model), optimizer, scheduler, pos)
                    if validator is not None:
                        validator.save(out / VALIDATION_DIR, pos.step)
                acc.wait_for_everyone()
            if pos.step >= total_steps:
                break
        else:
            pos.epoch, pos.batch = pos.epoch + 1, 0
    bar.close()
    runlog.close()
    elapsed = pos.seconds + time.perf_counter() - t0
    peak, peak_kind = peak_memory(acc.device)
    tokens = pos.tokens + tokens_seen
    # Tokens of every rank: each processed its own shard.
    tokens_all = int(acc.reduce(torch.tensor(tokens, device=acc.device), reduction="sum"))

    unwrapped = acc.unwrap_model(model)
    if validator is not None:
        validator.restore_best(unwrapped)
    layers_done = adapted_layers(unwrapped)
    state = adapter_state_dict(acc, model)
    if acc.is_main_process:
        info = {
            "base_model": cfg.model.name,
            "base_fingerprint": fingerprint,
            "task": task.name,
            "format": fmt.value,
            "method": cfg.method,
            "layers": layers_done,
            "chat_template": chat_record(
                cfg.model.chat_template, resolve_chat(cfg.model.chat_template, tok)
            ),
        }
        with atomic_directory(out / "adapter") as tmp:
            unwrapped.save_pretrained(tmp, safe_serialization=True, state_dict=state)
            tok.save_pretrained(tmp)
            (tmp / ADAPTER_INFO).write_text(json.dumps(info, indent=2))
    acc.wait_for_everyone()
    return {
        "layers": layers_done,
        "stats": {
            "steps": pos.step,
            "train_seconds": round(elapsed, 2),
            "tokens": tokens_all,
            "tokens_per_second": round(tokens_all / elapsed, 1) if elapsed > 0 else None,
            "padding_fraction": round(1 - real_seen / padded_seen, 4) if padded_seen else None,
            "trainable_parameters": sum(p.numel() for p in params),
            # CUDA: this run's max allocated; CPU: the process's peak RSS (includes the search).
            "peak_memory_bytes": peak,
            "peak_memory_kind": peak_kind,
            "compute": compute,
            "validation": validator.summary() if validator is not None else {},
        },
    }
