"""Flexora's layer search: LoRA weights learn on the training split, gate logits on held-out data.

Bilevel problem: LoRA weights theta minimise the training loss; the block logits alpha minimise the
validation loss at those weights. Two schemes:

* ``unroll = 0`` (default, the paper's code): first-order alternating steps. One inner AdamW step
  of theta on a training batch (gates held constant), then one outer Adam step of alpha from the
  summed validation losses at the new theta (theta held constant).
* ``unroll = K > 0``: a K-step unrolled hypergradient. From the current theta, K differentiable
  inner steps are taken on the next K training batches and the validation loss at the result is
  differentiated w.r.t. alpha through all of them. The inner steps imitate the real AdamW: the
  first moment is updated differentiably, the second moment is treated as a constant (its
  dependence on the gradient is dropped), learning rates follow the real schedule, and gradient
  clipping is left out. Then the K steps are committed with the real optimizer on the same
  batches, and alpha takes one Adam step.

Against the official code: alpha's gradient comes from ``torch.autograd.grad(val_loss, [alpha])``,
so LoRA ``.grad`` is never written by the validation pass; the inner optimizer is built once and
keeps its state; alpha is saved every step and checkpointed with everything else; under
``accelerate launch`` alpha's gradient is averaged across ranks so every rank keeps the same alpha.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from ..errors import FlexpaftError
from ..io import (
    atomic_directory,
    atomic_output,
    atomic_write_json,
    atomic_write_text,
    sha256_json,
)
from ..memory import peak_memory
from ..prompts import Template
from ..tasks.data import split_examples
from ..tasks.spec import AnswerFormat, Example, TaskSpec
from ..train.checkpoint import (
    load_lora_state,
    load_states,
    read_state_json,
    save_lora_state,
    save_states,
)
from ..train.compute import checkpointing_paused
from ..train.config import TrainConfig
from ..train.data import answer_loss, make_loader
from ..train.distributed import check_search_backend, fill_deepspeed_batch_size
from ..train.lora import add_lora, lora_config
from ..train.sampling import PromptBatchSampler
from .blocks import BlockLayout, find_blocks
from .gates import GateHooks, LayerGates
from .select import select_layers

log = logging.getLogger(__name__)

SEARCH_DIR = "flexora"
ALPHA_LOG = "alpha.jsonl"
ALPHA_PLOT = "alpha.png"
SELECTION = "selection.json"
CHECKPOINT = "checkpoint"
STATE_FILE = "search_state.json"

Batch = dict[str, torch.Tensor]
Params = dict[str, torch.Tensor]


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
    alpha_rank_spread: float = 0.0  # largest |alpha difference| between ranks (0 = identical)

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
            "alpha": self.alpha,
            "gates": self.gates,
            "alpha_rank_spread": self.alpha_rank_spread,
            "train_examples": len(self.train_examples),
        }


def search_config_hash(cfg: TrainConfig) -> str:
    """Hash of what changes the search trajectory (not stage-2 epochs nor the selection rule)."""
    d = dataclasses.asdict(cfg)
    # method stays: flexora and flexora+paft draw templates differently.
    for k in ("output_dir", "resume", "checkpoint_every", "log_every"):
        d.pop(k)
    for k in ("epochs", "max_steps", "num_workers"):
        d["optim"].pop(k)
    for k in ("selection", "k", "fraction"):
        d["flexora"].pop(k)
    d["lora"].pop("layers_to_transform")
    return sha256_json(d)[:16]


# --- gradients of alpha ----------------------------------------------------------------------


def alpha_gradient(
    model: nn.Module,
    gates: LayerGates,
    batches: Sequence[Batch],
    loss_fn: Callable[[nn.Module, Batch], torch.Tensor] = answer_loss,
) -> tuple[torch.Tensor, float]:
    """Gradient of the summed validation loss w.r.t. alpha, LoRA weights held constant.

    One batch at a time (memory of one batch); ``autograd.grad`` leaves every ``.grad`` alone.
    """
    grad = torch.zeros_like(gates.alpha)
    total = 0.0
    for batch in batches:
        loss = loss_fn(model, batch)
        (g,) = torch.autograd.grad(loss, [gates.alpha], allow_unused=True)
        if g is not None:
            grad += g
        total += float(loss.detach())
    return grad, total


InnerUpdate = Callable[[Params, Params, int], Params]


def sgd_update(lrs: Sequence[float]) -> InnerUpdate:
    """Differentiable SGD: theta_j = theta_{j-1} - lr_j * g_j."""

    def update(params: Params, grads: Params, j: int) -> Params:
        return {n: p - lrs[j] * grads[n] for n, p in params.items()}

    return update


def adam_surrogate_update(
    lrs: Sequence[float],
    exp_avg: Params,
    exp_avg_sq: Params,
    step: int,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> InnerUpdate:
    """Differentiable AdamW with the second moment treated as a constant.

    Starts from the real optimizer's moments after ``step`` steps. The first moment carries the
    gradient (and so alpha's influence) differentiably; the second moment is updated with the
    detached gradient, so the step size per coordinate is a constant of the unroll.
    """
    b1, b2 = betas
    m, v = dict(exp_avg), dict(exp_avg_sq)

    def update(params: Params, grads: Params, j: int) -> Params:
        t = step + j + 1
        out = {}
        for n, p in params.items():
            g = grads[n]
            m[n] = b1 * m[n] + (1 - b1) * g
            v[n] = b2 * v[n] + (1 - b2) * g.detach() ** 2
            m_hat = m[n] / (1 - b1**t)
            v_hat = v[n] / (1 - b2**t)
            out[n] = p * (1 - lrs[j] * weight_decay) - lrs[j] * m_hat / (v_hat.sqrt() + eps)
        return out

    return update


def unrolled_hypergradient(
    train_loss: Callable[[Params, Batch], torch.Tensor],
    val_loss: Callable[[Params], torch.Tensor],
    params: Params,
    alpha: torch.Tensor,
    steps: Sequence[Sequence[Batch]],
    update: InnerUpdate,
) -> tuple[torch.Tensor, float]:
    """d val_loss(theta_K(alpha), alpha) / d alpha through K differentiable inner steps.

    ``steps[j]`` holds the micro-batches of inner step j (their losses are averaged, like
    gradient accumulation). ``params`` are the starting weights; they are detached here.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    theta = {n: p.detach().requires_grad_(True) for n, p in params.items()}
    names = list(theta)
    # Fused attention kernels (flash, memory-efficient) have no double backward; math has.
    with sdpa_kernel([SDPBackend.MATH]):
        for j, micro in enumerate(steps):
            loss = sum(train_loss(theta, b) for b in micro) / len(micro)
            grads = torch.autograd.grad(
                loss, [theta[n] for n in names], create_graph=True, allow_unused=True
            )
            g = {
                n: gr if gr is not None else torch.zeros_like(theta[n])
                for n, gr in zip(names, grads)
            }
            theta = update(theta, g, j)
        val = val_loss(theta)
        (hyper,) = torch.autograd.grad(val, [alpha], allow_unused=True)
    return (hyper if hyper is not None else torch.zeros_like(alpha)), float(val.detach())


class _WithParams:
    """Calls ``module`` with some parameters replaced by tensors (``torch.func.functional_call``)."""

    def __init__(self, module: nn.Module, params: Params) -> None:
        self.module, self.params = module, params

    def __call__(self, **kwargs: Any) -> Any:
        return torch.func.functional_call(self.module, self.params, args=(), kwargs=kwargs)


# --- data ------------------------------------------------------------------------------------


class BatchStream:
    """Endless batches over epochs with a resumable position (epoch, batches consumed)."""

    def __init__(self, loader: DataLoader, sampler: PromptBatchSampler, device: torch.device):
        self.loader, self.sampler, self.device = loader, sampler, device
        self.epoch, self.batch = 0, 0
        self._it: Any = None

    def seek(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch, self._it = epoch, batch, None

    def __next__(self) -> Batch:
        for _ in range(3):
            if self._it is None:
                self.sampler.set_epoch(self.epoch, skip=self.batch)
                self._it = iter(self.loader)
            try:
                batch = next(self._it)
            except StopIteration:
                self.epoch, self.batch, self._it = self.epoch + 1, 0, None
                continue
            self.batch += 1
            return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        raise FlexpaftError("the data loader yields no batches")


# --- the search ------------------------------------------------------------------------------


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


def peft_layers_pattern(base_model: nn.Module, layout: BlockLayout, given: str = "") -> str:
    """PEFT's ``layers_pattern`` for stage 2: '' when PEFT's default index guess is right.

    Without a pattern PEFT takes the first numbered name segment as the layer index; that fails
    when something numbered precedes the blocks, and then the block list's name is needed.
    """
    import re

    if given:
        return given
    for name, module in base_model.named_modules():
        if not isinstance(getattr(module, "lora_B", None), nn.ModuleDict):
            continue
        m = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", name + ".")
        if m is None or int(m.group("idx")) != layout.index_of(name):
            return layout.list_name
    return ""


def plot_alpha(records: list[dict[str, Any]], path: Path) -> None:
    """alpha per block against the outer step, written atomically (Agg canvas, no pyplot state)."""
    from ..optional import available

    if not available("matplotlib", "alpha plot"):
        return
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not records:
        return
    steps = [r["step"] for r in records]
    alphas = list(zip(*[r["alpha"] for r in records]))
    fig = Figure(figsize=(8, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    cmap = matplotlib.colormaps["viridis"]
    n = len(alphas)
    for i, series in enumerate(alphas):
        ax.plot(steps, series, color=cmap(i / max(n - 1, 1)), lw=1.2, label=str(i))
        ax.annotate(
            str(i),
            (steps[-1], series[-1]),
            fontsize=6,
            xytext=(2, 0),
            textcoords="offset points",
            va="center",
        )
    ax.axhline(0.0, color="black", lw=0.8, ls="--")
    ax.set_xlabel("outer step")
    ax.set_ylabel("alpha (layer logit)")
    ax.set_title("Flexora search: alpha per block (selected: alpha > 0 by default)")
    if n <= 16:
        ax.legend(title="block", fontsize=6, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")


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
        self.cfg, self.acc, self.tokenizer = cfg, accelerator, tokenizer
        self.out = Path(cfg.output_dir) / SEARCH_DIR
        self.train_examples, self.val_examples = split_examples(examples, f.val_examples, cfg.seed)

        # Found on the bare model so names read as PEFT's layers_to_transform sees them.
        self.layout = find_blocks(model, f.blocks_pattern)
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
        train_loader, self.train_sampler = make_loader(
            cfg, task, fmt, self.train_examples, templates, tokenizer, cfg.seed, accelerator
        )
        # A different seed: validation batches are not drawn in lockstep with training batches.
        val_loader, val_sampler = make_loader(
            cfg, task, fmt, self.val_examples, templates, tokenizer, cfg.seed + 1, accelerator
        )
        self.train = BatchStream(train_loader, self.train_sampler, accelerator.device)
        self.val = BatchStream(val_loader, val_sampler, accelerator.device)

        self.unroll = f.unroll
        per_outer = max(1, self.unroll)
        steps_per_epoch = max(1, len(self.train_sampler.batches(0)) // o.grad_accum)
        global_batch = o.batch_size * o.grad_accum * accelerator.num_processes
        if f.search_steps > 0:
            self.total = f.search_steps
        elif f.search_examples > 0:
            self.total = math.ceil(math.ceil(f.search_examples / global_batch) / per_outer)
        else:
            self.total = math.ceil(steps_per_epoch / per_outer)
        self.inner_total = self.total * per_outer

        self.params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(self.params, lr=o.lr, weight_decay=o.weight_decay)
        self.scheduler = get_cosine_schedule_with_warmup(
            optimizer, int(o.warmup_ratio * self.inner_total), self.inner_total
        )
        self.alpha_optimizer = torch.optim.Adam([self.gates.alpha], lr=f.alpha_lr)
        fill_deepspeed_batch_size(accelerator, o.batch_size)
        self.wrapped, self.optimizer = accelerator.prepare(self.model, optimizer)
        self.step, self.inner_steps, self.seconds = 0, 0, 0.0
        self.config_hash = search_config_hash(cfg)

    # -- one step of each level --

    def inner_step(self, micro_batches: Sequence[Batch]) -> float:
        """One optimizer step of the LoRA weights (gates constant); returns the mean loss."""
        acc, o = self.acc, self.cfg.optim
        self.wrapped.train()
        losses = []
        with self.gates.detached():
            for batch in micro_batches:
                with acc.accumulate(self.wrapped):
                    loss = answer_loss(self.wrapped, batch)
                    acc.backward(loss)
                    if acc.sync_gradients and o.max_grad_norm > 0:
                        acc.clip_grad_norm_(self.params, o.max_grad_norm)
                    self.optimizer.step()
                    if acc.sync_gradients:
                        self.scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                losses.append(float(loss.detach()))
        self.inner_steps += 1
        return sum(losses) / len(losses)

    def _micro_batches(self) -> list[Batch]:
        return [next(self.train) for _ in range(self.cfg.optim.grad_accum)]

    def _val_batches(self) -> list[Batch]:
        return [next(self.val) for _ in range(self.cfg.flexora.val_batches)]

    def _hypergradient(
        self, steps: list[list[Batch]], val: list[Batch]
    ) -> tuple[torch.Tensor, float]:
        """The K-step unrolled gradient of alpha from the current LoRA weights."""
        model = self.acc.unwrap_model(self.wrapped)
        named = {n: p for n, p in model.named_parameters() if p.requires_grad}
        raw = getattr(self.optimizer, "optimizer", self.optimizer)
        group = raw.param_groups[0]
        state = [raw.state.get(p, {}) for p in named.values()]
        done = int(state[0]["step"]) if state and "step" in state[0] else 0
        lambdas = self.scheduler.lr_lambdas[0]
        base = self.scheduler.base_lrs[0]
        lrs = [base * lambdas(self.scheduler.last_epoch + j) for j in range(len(steps))]
        update = adam_surrogate_update(
            lrs,
            {
                n: s["exp_avg"] if "exp_avg" in s else torch.zeros_like(p)
                for (n, p), s in zip(named.items(), state)
            },
            {
                n: s["exp_avg_sq"] if "exp_avg_sq" in s else torch.zeros_like(p)
                for (n, p), s in zip(named.items(), state)
            },
            done,
            tuple(group["betas"]),
            group["eps"],
            group["weight_decay"],
        )

        def train_loss(params: Params, batch: Batch) -> torch.Tensor:
            return answer_loss(_WithParams(model, params), batch)

        def val_loss(params: Params) -> torch.Tensor:
            return sum(answer_loss(_WithParams(model, params), b) for b in val)

        model.train()
        with checkpointing_paused(model):
            return unrolled_hypergradient(
                train_loss, val_loss, named, self.gates.alpha, steps, update
            )

    def outer_step(self) -> dict[str, Any]:
        """One alpha update (after one inner step, or K committed inner steps when unrolling)."""
        model = self.acc.unwrap_model(self.wrapped)
        if self.unroll:
            steps = [self._micro_batches() for _ in range(self.unroll)]
            val = self._val_batches()
            grad, val_loss = self._hypergradient(steps, val)
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
                model, self.gates, self._val_batches(), lambda m, b: answer_loss(m, b) * scale
            )
            grad, val_loss = grad / scale, val_loss / scale
            model.train()
        if self.acc.num_processes > 1:
            grad = self.acc.reduce(grad, reduction="mean")
        # An overflowed fp16 step is skipped, as GradScaler skips the LoRA step (same on all ranks).
        if bool(torch.isfinite(grad).all()):
            self.gates.alpha.grad = grad
            self.alpha_optimizer.step()
        self.alpha_optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return {
            "step": self.step,
            "alpha": self.gates.alpha.detach().cpu().tolist(),
            "gates": self.gates.values().detach().cpu().tolist(),
            "train_loss": train_loss,
            "val_loss": val_loss,
            "lr": self.scheduler.get_last_lr()[0],
        }

    # -- persistence --

    def save_checkpoint(self) -> None:
        state = {
            "step": self.step,
            "inner_steps": self.inner_steps,
            "train_position": [self.train.epoch, self.train.batch],
            "val_position": [self.val.epoch, self.val.batch],
            "seconds": self.seconds,
            "config_hash": self.config_hash,
        }
        with atomic_directory(self.out / CHECKPOINT) as tmp:
            save_lora_state(tmp, self.acc.unwrap_model(self.wrapped))
            save_file({"alpha": self.gates.alpha.detach().cpu()}, str(tmp / "alpha.safetensors"))
            save_states(
                tmp,
                {
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "alpha_optimizer": self.alpha_optimizer.state_dict(),
                    "rng": torch.get_rng_state(),
                },
            )
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))

    def try_resume(self) -> bool:
        ckpt = self.out / CHECKPOINT
        f = ckpt / STATE_FILE
        if not (self.cfg.resume and f.is_file()):
            return False
        state = read_state_json(ckpt, STATE_FILE)
        if state.get("config_hash") != self.config_hash:
            raise FlexpaftError(
                f"{ckpt} holds a search of a different configuration: use another output_dir, "
                "or --set resume=false to start over"
            )
        load_lora_state(ckpt, self.acc.unwrap_model(self.wrapped))
        with torch.no_grad():
            self.gates.alpha.copy_(load_file(str(ckpt / "alpha.safetensors"))["alpha"])
        opt = load_states(ckpt)
        self.optimizer.load_state_dict(opt["optimizer"])
        self.scheduler.load_state_dict(opt["scheduler"])
        self.alpha_optimizer.load_state_dict(opt["alpha_optimizer"])
        torch.set_rng_state(opt["rng"])
        self.step, self.inner_steps = state["step"], state["inner_steps"]
        self.train.seek(*state["train_position"])
        self.val.seek(*state["val_position"])
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
            while self.step < self.total:
                record = self.outer_step()
                bar.update(1)
                if main:
                    with open(log_path, "a", encoding="utf-8") as fh:
                        fh.write(json.dumps(record) + "\n")
                if self.cfg.log_every and self.step % self.cfg.log_every == 0:
                    log.info(
                        "search step %d train %.4f val %.4f",
                        self.step,
                        record["train_loss"],
                        record["val_loss"],
                    )
                    bar.set_postfix(val=f"{record['val_loss']:.4f}")
                if every and (self.step % every == 0 or self.step == self.total):
                    self.seconds += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    if main:
                        self.save_checkpoint()
                    acc.wait_for_everyone()
        finally:
            bar.close()
        self.seconds += time.perf_counter() - t0
        return self.finish()

    def finish(self) -> SearchOutcome:
        """Select, write selection.json and the plot, and give the model back without LoRA."""
        cfg, f = self.cfg, self.cfg.flexora
        alpha = self.gates.alpha.detach().cpu().tolist()
        gates = self.gates.values().detach().cpu().tolist()
        layers = select_layers(alpha, f.selection, f.k, f.fraction)
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
            alpha_rank_spread=spread,
        )
        if self.acc.is_main_process:
            settings = dataclasses.replace(cfg.lora, layers_pattern=self.layers_pattern)
            atomic_write_json(
                self.out / SELECTION,
                {
                    **outcome.summary(),
                    "config_hash": self.config_hash,
                    "k": f.k,
                    "fraction": f.fraction,
                    "lora_config": _jsonable(lora_config(settings, layers).to_dict()),
                },
            )
            plot_alpha(self._read_log(), self.out / ALPHA_PLOT)
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
