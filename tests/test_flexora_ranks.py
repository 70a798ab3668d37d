"""Flexora ranks: rank proportional to the gate, as PEFT rank/alpha patterns, and the module check."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import boolq_rows, build_model, write_jsonl

from flexpaft.errors import FlexpaftError
from flexpaft.methods.flexora.blocks import find_blocks, modules_by_block
from flexpaft.methods.flexora.outcome import block_patterns
from flexpaft.methods.flexora.select import gate_ranks
from flexpaft.recipe import train
from flexpaft.settings.loading import load_config
from flexpaft.settings.train import LoraSettings, TrainConfig
from flexpaft.training.lora import add_lora, check_adapted, lora_ranks


def test_gate_ranks_by_hand():
    # exp(alpha) = 6, 2, 1, 1/2: the selected blocks 0 and 1 have gates in the ratio 6 : 2, mean
    # 4, so r_i = 8 x 6/4 = 12 and 8 x 2/4 = 4; alpha keeps alpha/r = 2.
    alpha = [math.log(6), math.log(2), 0.0, -math.log(2)]
    assert gate_ranks(alpha, [0, 1], 8, 16.0) == {0: (12, 24.0), 1: (4, 8.0)}
    # rsLoRA keeps alpha / sqrt(r): 16 sqrt(12/8), 16 sqrt(4/8).
    rs = gate_ranks(alpha, [0, 1], 8, 16.0, rslora=True)
    assert rs[0][0] == 12 and rs[0][1] == pytest.approx(16 * math.sqrt(1.5))
    assert rs[1][1] == pytest.approx(16 * math.sqrt(0.5))
    # r = 5: 7.5 and 2.5 round half up (8 and 3), not to even (8 and 2).
    assert {i: r for i, (r, _) in gate_ranks(alpha, [0, 1], 5, 10.0).items()} == {0: 8, 1: 3}
    # 99 : 1 -> 15.84 and 0.16: the small one still gets rank 1.
    tiny = gate_ranks([math.log(99), 0.0], [0, 1], 8, 16.0)
    assert tiny[0][0] == 16 and tiny[1] == (1, 2.0)


def ranked_settings(model) -> tuple[LoraSettings, dict[int, tuple[int, float]]]:
    # Ranks 6 and 2 on blocks 1 and 3 of a 4-block model (q_proj and v_proj each).
    per_block = {1: (6, 24.0), 3: (2, 8.0)}
    names = modules_by_block(add_lora(model, LoraSettings()).get_base_model(), find_blocks(model))
    rank_pattern, alpha_pattern = block_patterns(names, per_block)
    settings = LoraSettings(r=4, alpha=16.0, rank_pattern=rank_pattern, alpha_pattern=alpha_pattern)
    return settings, per_block


def test_patterns_name_each_module_and_plain_peft_builds_those_ranks(tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    settings, _ = ranked_settings(build_model(100, layers=4))
    assert settings.rank_pattern == {
        r"model\.layers\.1\.self_attn\.q_proj": 6,
        r"model\.layers\.1\.self_attn\.v_proj": 6,
        r"model\.layers\.3\.self_attn\.q_proj": 2,
        r"model\.layers\.3\.self_attn\.v_proj": 2,
    }
    from flexpaft.training.lora import lora_config

    # Plain PEFT, from the config as flexpaft writes it to selection.json and adapter_config.json.
    lora_config(settings, [1, 3]).save_pretrained(tmp_path / "cfg")
    cfg = LoraConfig.from_pretrained(tmp_path / "cfg")
    model = get_peft_model(build_model(100, layers=4), cfg)
    ranks = lora_ranks(model.get_base_model())
    assert ranks == {
        "model.layers.1.self_attn.q_proj": 6,
        "model.layers.1.self_attn.v_proj": 6,
        "model.layers.3.self_attn.q_proj": 2,
        "model.layers.3.self_attn.v_proj": 2,
    }
    q1 = model.get_base_model().model.layers[1].self_attn.q_proj
    assert q1.scaling["default"] == pytest.approx(24.0 / 6)
    model.save_pretrained(tmp_path / "adapter")
    loaded = PeftModel.from_pretrained(build_model(100, layers=4), tmp_path / "adapter")
    assert lora_ranks(loaded.get_base_model()) == ranks


def test_check_counts_modules_per_layer_and_fails_in_one_line(tmp_path):
    model = add_lora(build_model(100, layers=4), LoraSettings(), [0, 2])
    assert check_adapted(model.get_base_model(), LoraSettings(), [0, 2]) == {0: 2, 2: 2}
    # Only v_proj in block 1: one module there.
    one = add_lora(build_model(100, layers=4), LoraSettings(target_modules=["v_proj"]), [1])
    assert check_adapted(one.get_base_model(), LoraSettings(target_modules=["v_proj"]), [1]) == {
        1: 1
    }
    # A selected block the model does not have adapts nothing: PEFT says nothing, flexpaft fails.
    with pytest.raises(FlexpaftError, match=r"^LoRA adapts no module in layer\(s\) 7: "):
        check_adapted(model.get_base_model(), LoraSettings(), [0, 7])


def test_patterns_that_match_nothing_or_lose_to_another_entry_fail():
    settings = LoraSettings(rank_pattern={r"model\.layers\.9\.self_attn\.q_proj": 4})
    with pytest.raises(FlexpaftError) as e:
        add_lora(build_model(100, layers=4), settings, [0])
    assert "matches no adapted module" in str(e.value) and "\n" not in str(e.value)
    # q_proj of block 0 asked for twice; PEFT takes the first entry, so the second is not met.
    clash = LoraSettings(rank_pattern={"q_proj": 2, r"model\.layers\.0\.self_attn\.q_proj": 6})
    with pytest.raises(FlexpaftError, match="asks r=6 for model.layers.0.self_attn.q_proj"):
        add_lora(build_model(100, layers=4), clash, [0])
    unmatched = LoraSettings(alpha_pattern={"nothing_here": 3.0})
    with pytest.raises(FlexpaftError, match="alpha_pattern entry 'nothing_here'"):
        add_lora(build_model(100, layers=4), unmatched)


def test_flexora_train_with_gate_ranks_writes_them_into_the_adapter(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "b.jsonl", boolq_rows(24))
    cfg = load_config(
        TrainConfig,
        None,
        [
            "method=flexora",
            f"model.name={tiny_model_dir}",
            f"data.source={data}",
            "data.max_length=64",
            "optim.batch_size=4",
            "optim.num_workers=0",
            "optim.max_steps=1",
            f"output_dir={tmp_path / 'run'}",
            "log_every=0",
            "checkpoint_every=0",
            "lora.r=4",
            "lora.alpha=8",
            "flexora.val_examples=4",
            "flexora.search_steps=1",
            # One Adam step moves every alpha by about +-lr: +-1 here.
            "flexora.alpha_lr=1.0",
            "flexora.selection=topk",
            "flexora.k=2",
            "flexora.ranks=gate",
        ],
    )
    res = train(cfg, progress=False)
    fx = res.manifest["flexora"]
    alpha = fx["alpha"]
    assert all(abs(a) > 0.9 for a in alpha)  # Adam's first step: about +-lr
    top = sorted(range(4), key=lambda i: (-alpha[i], i))[:2]
    # Gates of the two kept blocks: both e or one e and one 1/e (of 4 exp-weights summing to S).
    e = [math.exp(alpha[i]) for i in top]
    expected = {i: max(1, math.floor(4 * x / (sum(e) / 2) + 0.5)) for i, x in zip(top, e)}
    assert fx["layers"] == sorted(top)
    assert {int(k): v for k, v in fx["ranks"].items()} == expected
    adapter_cfg = json.loads((res.adapter_dir / "adapter_config.json").read_text())
    assert set(adapter_cfg["rank_pattern"].values()) == set(expected.values())
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    plain = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(res.adapter_dir)
    )
    got = lora_ranks(plain.get_base_model())
    assert got == {
        f"model.layers.{i}.self_attn.{m}": expected[i] for i in top for m in ("q_proj", "v_proj")
    }
    assert torch.is_tensor(next(plain.parameters()))
