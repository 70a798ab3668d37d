"""Flexora blocks and gates: block discovery, gates applied exactly once, alpha = 0 is plain LoRA."""

from __future__ import annotations

import pytest
import torch
from conftest import build_model

from flexpaft.errors import FlexpaftError
from flexpaft.methods.flexora.blocks import find_blocks, modules_by_block
from flexpaft.methods.flexora.gates import LayerGates, gate_values
from flexpaft.settings.train import LoraSettings
from flexpaft.training.lora import add_lora

VOCAB = 120


def gpt2(layers: int = 3):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=layers, n_head=2)
    return GPT2LMHeadModel(cfg)


def lora_model(settings: LoraSettings | None = None, layers: int = 3, dtype=torch.float32):
    model = build_model(VOCAB, layers=layers).to(dtype)
    peft = add_lora(model, settings or LoraSettings(r=4, alpha=8.0))
    # Fresh LoRA has B = 0, which would make every gate test vacuous.
    torch.manual_seed(1)
    for name, p in peft.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)
    return peft.eval()


def inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(2, VOCAB, (2, 7), generator=g)}


def test_blocks_of_llama_gpt2_and_override():
    layout = find_blocks(build_model(VOCAB, layers=3))
    assert (layout.prefix, layout.count, layout.list_name) == ("model.layers", 3, "layers")
    assert layout.index_of("base_model.model.model.layers.2.self_attn.q_proj") == 2
    assert layout.index_of("model.embed_tokens") is None

    g = find_blocks(gpt2(4))
    assert (g.prefix, g.count) == ("transformer.h", 4)
    peft = add_lora(gpt2(4), LoraSettings(r=2, target_modules=["c_attn"]))
    assert sorted(modules_by_block(peft, find_blocks(peft)).values()) == [0, 1, 2, 3]

    custom = find_blocks(build_model(VOCAB, layers=3), r"layers\.(\d+)\.mlp$")
    assert custom.count == 3 and custom.index_of("model.layers.1.mlp") == 1
    with pytest.raises(FlexpaftError, match="exactly one group"):
        find_blocks(build_model(VOCAB, layers=2), r"layers\.\d+")
    with pytest.raises(FlexpaftError, match="matches no module"):
        find_blocks(build_model(VOCAB, layers=2), r"blocks\.(\d+)")


def test_gate_values_are_n_softmax_and_exactly_one_at_zero():
    alpha = torch.tensor([0.3, -1.0, 2.0, 0.0])
    torch.testing.assert_close(gate_values(alpha), 4 * torch.softmax(alpha, 0))
    assert torch.equal(gate_values(torch.zeros(7)), torch.ones(7))


@pytest.mark.parametrize(
    "variant", [{}, {"use_rslora": True}, {"use_dora": True}], ids=["lora", "rslora", "dora"]
)
def test_zero_alpha_is_plain_lora_and_gates_equal_scaled_b(variant):
    settings = LoraSettings(
        r=4, alpha=8.0, target_modules=["q_proj", "v_proj", "down_proj"], **variant
    )
    peft = lora_model(settings)
    x = inputs()
    with torch.no_grad():
        plain = peft(**x).logits
        gates = LayerGates(3)
        with gates.attach(peft, find_blocks(peft)):
            gated_zero = peft(**x).logits
            gates.alpha.data = torch.tensor([0.7, -0.4, 0.1])
            gated = peft(**x).logits
            g = gates.values()
        assert torch.equal(plain, gated_zero)
        # The same gates by hand: each block's lora_B weights scaled by its gate.
        layout = find_blocks(peft)
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.mul_(g[layout.index_of(name)])
        manual = peft(**x).logits
    torch.testing.assert_close(gated, manual, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(gated, plain)


def test_hook_fires_once_per_module_per_forward_and_is_removable():
    peft = lora_model()
    gates = LayerGates(3)
    handle = gates.attach(peft, find_blocks(peft))
    with torch.no_grad():
        peft(**inputs())
    assert gates.calls == len(handle.blocks) == 6  # q_proj and v_proj in 3 blocks
    handle.remove()
    with torch.no_grad():
        peft(**inputs())
    assert gates.calls == 6


def test_detached_gates_give_no_alpha_gradient():
    peft = lora_model()
    gates = LayerGates(3)
    with gates.attach(peft, find_blocks(peft)):
        with gates.detached():
            peft(**inputs()).logits.sum().backward()
        assert gates.alpha.grad is None
        peft(**inputs()).logits.pow(2).mean().backward()
        assert gates.alpha.grad is not None and gates.alpha.grad.abs().sum() > 0
