"""Flexora search: alpha gradients, the unrolled hypergradient, the loop, resume and stage 2."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import boolq_rows, build_model, build_tokenizer, recording_cudnn_flag
from safetensors.torch import load_file

from flexpaft.methods.flexora import hypergrad
from flexpaft.methods.flexora import search as search_mod
from flexpaft.methods.flexora.blocks import find_blocks
from flexpaft.methods.flexora.gates import LayerGates
from flexpaft.methods.flexora.hypergrad import (
    adam_surrogate_update,
    alpha_gradient,
    sgd_update,
    unrolled_hypergradient,
)
from flexpaft.methods.flexora.search import LayerSearch, search_layers
from flexpaft.prompts import Template
from flexpaft.settings.loading import load_config
from flexpaft.settings.train import LoraSettings, TrainConfig
from flexpaft.tasks import AnswerFormat, get_task
from flexpaft.training.data import PadCollator
from flexpaft.training.lora import add_lora

TEMPLATES = [
    Template("{passage}\nQuestion: {question}?\nAnswer:"),
    Template("Q: {question}? {passage}\nA:"),
]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def examples(n: int = 20):
    task = get_task("boolq")
    return [task.normalize(r, uid=str(i)) for i, r in enumerate(boolq_rows(n))]


def config(out, *overrides: str) -> TrainConfig:
    return load_config(
        TrainConfig,
        None,
        [
            "method=flexora+paft",
            f"output_dir={out}",
            "optim.batch_size=4",
            "optim.num_workers=0",
            "optim.lr=0.01",
            "data.max_length=48",
            "flexora.val_examples=6",
            "flexora.val_batches=2",
            "lora.r=4",
            *overrides,
        ],
    )


def build_search(cfg, tok, templates=TEMPLATES, own=None, layers=2):
    from accelerate import Accelerator

    model = build_model(len(tok), layers=layers)
    return LayerSearch(
        cfg,
        model,
        tok,
        get_task("boolq"),
        AnswerFormat.LABEL_WORDS,
        examples(),
        templates,
        Accelerator(cpu=True),
        own=own,
    )


def run_search(cfg, tok, progress=False):
    search = build_search(cfg, tok)
    return search, search.run(progress)


def random_batches(dtype_vocab: int = 100, n: int = 2):
    g = torch.Generator().manual_seed(0)
    items = []
    for k in (5, 7, 6, 4)[: 2 * n]:
        ids = torch.randint(2, dtype_vocab, (k,), generator=g).tolist()
        items.append({"input_ids": ids, "labels": [-100] * (k - 2) + ids[-2:]})
    collate = PadCollator(0)
    return [collate(items[i : i + 2]) for i in range(0, len(items), 2)]


def gated_float64_model():
    # GPT-2 computes in float64 throughout (Llama's RMSNorm and rotary run in float32), which
    # finite differences need.
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=100,
            n_positions=16,
            n_embd=16,
            n_layer=3,
            n_head=2,
            bos_token_id=1,
            eos_token_id=1,
        )
    ).double()
    settings = LoraSettings(r=2, alpha=4.0, target_modules=["c_attn", "c_fc"])
    model = add_lora(gpt2, settings)
    torch.manual_seed(3)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)
    gates = LayerGates(3, dtype=torch.float64)
    gates.alpha.data = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    handle = gates.attach(model, find_blocks(model))
    return model.eval(), gates, handle


def float64_answer_loss(model, batch):
    # answer_loss casts logits to float32, too coarse for finite differences.
    logits = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
    ).logits
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1)
    )


def test_alpha_gradient_matches_finite_differences_and_leaves_lora_grads_alone():
    model, gates, _ = gated_float64_model()
    batches = random_batches()
    lora = [p for p in model.parameters() if p.requires_grad]
    for p in lora:
        p.grad = torch.full_like(p, 7.0)
    grad, loss = alpha_gradient(model, gates, batches, float64_answer_loss)
    assert all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in lora)
    assert gates.alpha.grad is None
    # The trainer's loss takes the same path.
    grad32, _ = alpha_gradient(model, gates, batches)
    torch.testing.assert_close(grad32, grad, rtol=1e-3, atol=1e-5)

    def total() -> float:
        with torch.no_grad():
            return sum(float(float64_answer_loss(model, b)) for b in batches)

    assert loss == pytest.approx(total())
    assert_matches_finite_differences(grad, gates, total)


def assert_matches_finite_differences(grad, gates, total, eps: float = 1e-6) -> None:
    """alpha's gradient against central differences of ``total()`` (a float64 loss)."""
    for i in range(len(grad)):
        base = gates.alpha.data.clone()
        gates.alpha.data[i] += eps
        up = total()
        gates.alpha.data[i] -= 2 * eps
        down = total()
        gates.alpha.data = base
        assert float(grad[i]) == pytest.approx((up - down) / (2 * eps), rel=1e-6, abs=1e-10)


def toy_problem():
    a_batches = [torch.tensor([1.0, 2.0]), torch.tensor([0.5, 1.5]), torch.tensor([2.0, 0.3])]
    c, t = torch.tensor([1.5, -0.5]), torch.tensor([0.2, 0.7])
    alpha = torch.tensor([0.4, -0.3], dtype=torch.float64, requires_grad=True)
    w0 = torch.tensor([0.1, 0.9], dtype=torch.float64)

    def train_loss(p, a):  # a quadratic whose minimiser moves with alpha
        return 0.5 * (a * (p["w"] - c * alpha) ** 2).sum()

    def val_loss(p):  # also depends on alpha directly
        return 0.5 * ((p["w"] - t) ** 2).sum() + 0.1 * (alpha**2).sum()

    steps = [[a.double()] for a in a_batches]
    return train_loss, val_loss, {"w": w0}, alpha, steps, (c.double(), t.double())


def test_unrolled_sgd_hypergradient_matches_explicit_loop_and_closed_form():
    train_loss, val_loss, params, alpha, steps, (c, t) = toy_problem()
    lrs = [0.3, 0.2, 0.1]
    hyper, _ = unrolled_hypergradient(train_loss, val_loss, params, alpha, steps, sgd_update(lrs))

    # Written out by hand: w <- w - lr * a * (w - c alpha), then autograd through the loop.
    w = params["w"]
    for lr, (a,) in zip(lrs, steps):
        w = w - lr * a * (w - c * alpha)
    (ref,) = torch.autograd.grad(val_loss({"w": w}), [alpha])
    torch.testing.assert_close(hyper, ref)

    # Closed form: w_K = P w0 + (1 - P) c alpha with P = prod(1 - lr a).
    P = torch.ones(2, dtype=torch.float64)
    for lr, (a,) in zip(lrs, steps):
        P = P * (1 - lr * a)
    w_k = P * params["w"] + (1 - P) * c * alpha.detach()
    closed = (w_k - t) * (1 - P) * c + 0.2 * alpha.detach()
    torch.testing.assert_close(hyper, closed)


def test_unrolled_adam_surrogate_matches_explicit_loop():
    train_loss, val_loss, params, alpha, steps, (c, _) = toy_problem()
    lrs, b1, b2, eps, wd = [0.05, 0.04, 0.03], 0.9, 0.99, 1e-8, 0.01
    m0 = torch.tensor([0.01, -0.02], dtype=torch.float64)
    v0 = torch.tensor([0.001, 0.002], dtype=torch.float64)
    update = adam_surrogate_update(lrs, {"w": m0}, {"w": v0}, 5, (b1, b2), eps, wd)
    hyper, _ = unrolled_hypergradient(train_loss, val_loss, params, alpha, steps, update)

    w, m, v = params["w"], m0, v0
    for j, (lr, (a,)) in enumerate(zip(lrs, steps)):
        g = a * (w - c * alpha)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g.detach() ** 2  # second moment: a constant of the unroll
        t = 5 + j + 1
        w = w * (1 - lr * wd) - lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
    (ref,) = torch.autograd.grad(val_loss({"w": w}), [alpha])
    torch.testing.assert_close(hyper, ref)


def test_unrolled_on_the_model_with_zero_lr_is_the_direct_gradient():
    model, gates, _ = gated_float64_model()
    batches = random_batches()
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}

    def loss_at(params, batch):
        return search_mod.answer_loss(hypergrad._WithParams(model, params), batch)

    hyper, _ = unrolled_hypergradient(
        loss_at,
        lambda p: sum(loss_at(p, b) for b in batches),
        named,
        gates.alpha,
        [batches[:1]],
        sgd_update([0.0]),
    )
    direct, _ = alpha_gradient(model, gates, batches)
    torch.testing.assert_close(hyper, direct)
    # A real step makes the inner loss's alpha-dependence count.
    moved, _ = unrolled_hypergradient(
        loss_at,
        lambda p: sum(loss_at(p, b) for b in batches),
        named,
        gates.alpha,
        [batches[:1]],
        sgd_update([0.5]),
    )
    assert not torch.allclose(moved, direct)


def test_search_end_to_end_writes_files_and_keeps_optimizer_state(tmp_path, tok):
    # alpha moves from the first step: no wait, and no warm-up that makes the first LoRA step 0.
    cfg = config(
        tmp_path,
        "flexora.search_steps=3",
        "checkpoint_every=2",
        "flexora.alpha_warmup=0",
        "flexora.schedule=search",
    )
    search, outcome = run_search(cfg, tok)
    assert outcome.steps == 3 and outcome.inner_steps == 3
    assert len(outcome.train_examples) == 14 and len(outcome.alpha) == 2
    assert outcome.layers and outcome.layers == sorted(outcome.layers)
    # One AdamW built once: its step count is the number of inner steps, not 1.
    state = search.optimizer.state
    assert {int(s["step"]) for s in state.values()} == {3}
    assert search.alpha_optimizer.state[search.gates.alpha]["step"] == 3

    out = tmp_path / "flexora"
    rows = [json.loads(x) for x in (out / "alpha.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[-1]["alpha"] == outcome.alpha and len(rows[-1]["gates"]) == 2
    assert all(r["alpha"] != [0.0, 0.0] for r in rows)
    assert (out / "alpha.png").stat().st_size > 1000
    sel = json.loads((out / "selection.json").read_text())
    assert sel["layers"] == outcome.layers
    assert sel["lora_config"]["layers_to_transform"] == outcome.layers
    assert sel["lora_config"]["target_modules"] == ["q_proj", "v_proj"]
    assert json.loads((out / "checkpoint" / "search_state.json").read_text())["step"] == 3
    summary = outcome.summary()
    assert summary["peak_memory_bytes"] > 0 and summary["search_seconds"] > 0
    # The model is handed back without LoRA layers or hooks.
    assert not any("lora_" in n for n, _ in search.model.get_base_model().named_parameters())


def test_resume_gives_the_same_alpha_as_an_uninterrupted_run(tmp_path, tok, monkeypatch):
    steps = ["flexora.search_steps=4", "checkpoint_every=2"]
    _, full = run_search(config(tmp_path / "a", *steps), tok)

    original = LayerSearch.outer_step

    def crash_at_step_3(self):
        if self.step == 2 and not getattr(self, "_resumed", False):
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(LayerSearch, "outer_step", crash_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        run_search(config(tmp_path / "b", *steps), tok)
    monkeypatch.setattr(search_mod, "resume_search", _mark_resumed(search_mod.resume_search))
    _, resumed = run_search(config(tmp_path / "b", *steps), tok)
    assert resumed.alpha == full.alpha
    rows = (tmp_path / "b" / "flexora" / "alpha.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [1, 2, 3, 4]


def _mark_resumed(fn):
    def wrapper(self):
        self._resumed = fn(self)
        return self._resumed

    return wrapper


def test_unrolled_search_runs_and_commits_k_inner_steps(tmp_path, tok):
    cfg = config(tmp_path, "flexora.search_steps=1", "flexora.unroll=2", "flexora.val_batches=1")
    search, outcome = run_search(cfg, tok)
    assert outcome.steps == 1 and outcome.inner_steps == 2
    assert {int(s["step"]) for s in search.optimizer.state.values()} == {2}
    assert outcome.alpha != [0.0, 0.0]


def test_search_layers_returns_a_clean_model_for_the_trainer(tmp_path, tok):
    from accelerate import Accelerator

    model = build_model(len(tok), layers=2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = config(tmp_path, "flexora.search_steps=1", "checkpoint_every=0")
    outcome = search_layers(
        cfg,
        model,
        tok,
        get_task("boolq"),
        AnswerFormat.LABEL_WORDS,
        examples(),
        TEMPLATES,
        Accelerator(cpu=True),
        progress=False,
    )
    after = dict(model.named_parameters())
    assert set(after) == set(before)
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert not (tmp_path / "flexora" / "checkpoint").exists()
    assert outcome.summary()["layers"] == outcome.layers


def test_stage2_adapter_holds_only_selected_layers_and_loads_with_plain_peft(tmp_path):
    from peft import PeftModel

    adapter = add_lora(build_model(100, layers=4), LoraSettings(r=2), [0, 2])
    adapter.save_pretrained(tmp_path, safe_serialization=True)
    keys = load_file(str(tmp_path / "adapter_model.safetensors")).keys()
    assert keys and {int(k.split("layers.")[1].split(".")[0]) for k in keys} == {0, 2}
    assert all("lora_A" in k or "lora_B" in k for k in keys)
    loaded = PeftModel.from_pretrained(build_model(100, layers=4), tmp_path)
    names = [n for n, _ in loaded.named_parameters() if "lora_" in n]
    assert names and all(".layers.0." in n or ".layers.2." in n for n in names)


def _search_argv(tmp_path, tiny_model_dir) -> list[str]:
    from conftest import write_jsonl

    data = write_jsonl(tmp_path / "boolq.jsonl", boolq_rows(16))
    return [
        "--quiet",
        "search",
        "-o",
        str(tmp_path / "run"),
        "--set",
        f"model.name={tiny_model_dir}",
        "--set",
        f"data.source={data}",
        *("--set optim.num_workers=0 --set optim.batch_size=4 --set data.max_length=48".split()),
        *("--set flexora.val_examples=4 --set flexora.search_steps=2".split()),
    ]


def test_search_command_writes_selection_and_prints_layers(tmp_path, tiny_model_dir, capsys):
    from flexpaft.cli import main

    rc = main(_search_argv(tmp_path, tiny_model_dir))
    assert rc == 0
    printed = capsys.readouterr().out
    sel = json.loads((tmp_path / "run" / "flexora" / "selection.json").read_text())
    assert sel["rule"] == "validated"  # the default: validation decides the count
    assert f"selected layers (validated, {len(sel['layers'])} of 4)" in printed
    assert (tmp_path / "run" / "flexora" / "alpha.png").is_file()


def test_search_command_never_runs_cudnn_attention(tmp_path, tiny_model_dir, monkeypatch):
    """``flexpaft search`` calls search_layers without train(): it keeps cuDNN attention out of
    its forwards and backwards too (compute.attention_without_cudnn)."""
    import flexpaft.methods.flexora.search as search_mod
    from flexpaft.cli import main

    seen = {"forward": [], "backward": []}
    real = search_mod.answer_loss
    monkeypatch.setattr(search_mod, "answer_loss", recording_cudnn_flag(real, seen))
    assert main(_search_argv(tmp_path, tiny_model_dir)) == 0
    # 2 steps x (inner + alpha), forward and backward.
    assert len(seen["forward"]) >= 4 and len(seen["backward"]) >= 4
    assert not any(seen["forward"]) and not any(seen["backward"])
    assert torch.backends.cuda.cudnn_sdp_enabled()
