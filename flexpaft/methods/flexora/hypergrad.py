"""Gradients of the layer logits alpha: the first-order one and the K-step unrolled hypergradient.

``alpha_gradient`` (``flexora.unroll = 0``, the paper's code): the validation loss differentiated
w.r.t. alpha with the LoRA weights held constant, via ``torch.autograd.grad`` so no LoRA ``.grad``
is written (the official code wrote them and relied on the trainer's zero_grad).

``unrolled_hypergradient`` (``unroll = K > 0``): from the current LoRA weights, K differentiable
inner steps are taken and the validation loss at the result is differentiated w.r.t. alpha
through all of them. ``adam_surrogate_update`` imitates the real AdamW: the first moment is
updated differentiably, the second moment is treated as a constant (its dependence on the
gradient is dropped), learning rates follow the real schedule, gradient clipping is left out.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from flexpaft.methods.flexora.chunks import weighted_chunks
from flexpaft.methods.flexora.gates import LayerGates
from flexpaft.training.data import answer_loss

Batch = dict[str, torch.Tensor]
Params = dict[str, torch.Tensor]


def alpha_gradient(
    model: nn.Module,
    gates: LayerGates,
    batches: Sequence[Batch],
    loss_fn: Callable[[nn.Module, Batch], torch.Tensor] = answer_loss,
    rows: int = 0,
) -> tuple[torch.Tensor, float]:
    """Gradient of the summed validation loss w.r.t. alpha, LoRA weights held constant.

    One batch at a time, each in chunks of ``rows`` rows (0: whole) weighted by answer tokens
    (chunks.py), so memory is that of one chunk; ``autograd.grad`` leaves every ``.grad`` alone.
    The model's parameters are switched to ``requires_grad=False`` meanwhile: their gradients are
    never taken, and a forward that would need them saves what those gradients use (each LoRA
    module's input and ``A x``), on top of what alpha's backward needs.
    """
    grad = torch.zeros_like(gates.alpha)
    total = 0.0
    with frozen(model):
        for batch in batches:
            for chunk, weight in weighted_chunks(batch, rows):
                loss = loss_fn(model, chunk) * weight
                (g,) = torch.autograd.grad(loss, [gates.alpha], allow_unused=True)
                if g is not None:
                    grad += g
                total += float(loss.detach())
                del loss  # the next chunk's graph is built only after this one is gone
    return grad, total


def scaled_alpha_gradient(
    model: nn.Module,
    gates: LayerGates,
    batches: Sequence[Batch],
    loss_fn: Callable[[nn.Module, Batch], torch.Tensor],
    rows: int = 0,
    scaler: Any = None,
) -> tuple[torch.Tensor, float]:
    """``alpha_gradient`` in eval mode (no dropout), under the loss scale of ``scaler`` (a
    GradScaler or None): under fp16 autocast alpha's backward needs the scaling the LoRA step
    gets from accelerate's GradScaler, or small gradients flush to zero. Unscaled results."""
    scale = float(scaler.get_scale()) if scaler is not None else 1.0
    was_training = model.training
    model.eval()
    try:
        grad, loss = alpha_gradient(model, gates, batches, lambda m, b: loss_fn(m, b) * scale, rows)
    finally:
        model.train(was_training)
    return grad / scale, loss / scale


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """``requires_grad=False`` on the model's trainable parameters inside, restored after."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


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


def model_hypergradient(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    alpha: torch.Tensor,
    steps: Sequence[Sequence[Batch]],
    val: Sequence[Batch],
    val_loss_fn: Callable[[nn.Module, Batch], torch.Tensor] = answer_loss,
    train_loss_fn: Callable[[nn.Module, Batch], torch.Tensor] = answer_loss,
) -> tuple[torch.Tensor, float]:
    """The K-step unrolled gradient of alpha from ``model``'s current LoRA weights.

    The surrogate starts from ``optimizer``'s (AdamW) moments and follows ``scheduler``'s
    learning rates for the next ``len(steps)`` steps; nothing of either is changed. The inner
    steps differentiate ``train_loss_fn`` (the search passes stage 2's loss, as its committed
    inner steps train on), the validation batches ``val_loss_fn``.
    """
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    raw = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the optimizer
    group = raw.param_groups[0]
    state = [raw.state.get(p, {}) for p in named.values()]
    done = int(state[0]["step"]) if state and "step" in state[0] else 0
    lambdas = scheduler.lr_lambdas[0]
    base = scheduler.base_lrs[0]
    lrs = [base * lambdas(scheduler.last_epoch + j) for j in range(len(steps))]
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
        return train_loss_fn(_WithParams(model, params), batch)

    def val_loss(params: Params) -> torch.Tensor:
        return sum(val_loss_fn(_WithParams(model, params), b) for b in val)

    model.train()
    return unrolled_hypergradient(train_loss, val_loss, named, alpha, steps, update)
