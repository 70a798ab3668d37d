"""``flexpaft.search_layers`` for a PEFT user: the selection as a LoraConfig that adapts exactly
the selected blocks of the model, with an explicit target list."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import boolq_rows, build_model, build_tokenizer

import flexpaft
from flexpaft.errors import FlexpaftError

TEMPLATES = [
    "Passage: {passage}\nQuestion: {question}?\nAnswer ({label_words}):",
    "{passage}\n{question}? Reply {label_words}.",
    "Read: {passage}\nIs it true that {question}? ({label_words})",
    "Q: {question}?\nContext: {passage}\nA:",
]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def _search(tok, layers=4, **kw):
    model = build_model(len(tok), layers=layers)
    rows = boolq_rows(24)
    sel = flexpaft.search_layers(
        model,
        tok,
        rows[:16],
        rows[16:],
        kw.pop("templates", None),
        task="boolq",
        format="label_words",
        progress=False,
        optim={"batch_size": 4, "num_workers": 0},
        data={"max_length": 64},
        flexora={"search_steps": 4, "selection": "topk", "k": 2, **kw.pop("flexora", {})},
        **kw,
    )
    return model, sel


def _adapted_blocks(peft_model) -> set[int]:
    return {
        int(m.group(1))
        for name, _ in peft_model.named_parameters()
        if "lora_" in name and (m := re.search(r"\.layers\.(\d+)\.", name))
    }


def test_lora_config_adapts_exactly_the_selected_blocks(tok):
    from peft import LoraConfig, get_peft_model

    model, sel = _search(tok)
    assert len(sel.layers) == 2 and len(sel.alpha) == 4
    config = sel.to_lora_config()
    assert isinstance(config, LoraConfig)
    # An explicit list (layers_to_transform needs one), the blocks, the block list's name.
    assert sorted(config.target_modules) == ["q_proj", "v_proj"]
    assert config.layers_to_transform == sorted(sel.layers)
    assert config.layers_pattern == "layers"
    # The search handed the model back without LoRA; the config adapts the selection on it.
    assert not any("lora_" in n for n, _ in model.named_parameters())
    peft_model = get_peft_model(model, config)
    assert _adapted_blocks(peft_model) == set(sel.layers)
    # Overrides reach the LoraConfig; an unknown field is refused.
    assert sel.to_lora_config(lora_dropout=0.1).lora_dropout == 0.1
    with pytest.raises(TypeError):
        sel.to_lora_config(not_a_field=1)


def test_all_linear_becomes_an_explicit_list_and_gate_ranks_are_escaped_full_names(tok):
    from peft import get_peft_model

    model, sel = _search(
        tok,
        templates=TEMPLATES,
        lora={"target_modules": ["all-linear"]},
        flexora={"ranks": "gate"},
    )
    config = sel.to_lora_config()
    assert (
        isinstance(config.target_modules, (list, set)) and "all-linear" not in config.target_modules
    )
    assert {"q_proj", "k_proj", "v_proj", "o_proj"} <= set(config.target_modules)
    # rank_pattern keys are escaped full module names inside the selected blocks only.
    assert config.rank_pattern
    for key in config.rank_pattern:
        name = key.replace("\\", "")
        assert int(re.search(r"layers\.(\d+)\.", name).group(1)) in sel.layers
    peft_model = get_peft_model(model, config)
    assert _adapted_blocks(peft_model) == set(sel.layers)
    for name, module in peft_model.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            full = name.split("base_model.model.", 1)[-1]
            want = config.rank_pattern.get(re.escape(full))
            if want is not None:
                assert module.lora_A["default"].out_features == want


def test_rows_are_checked_before_the_search(tok):
    model = build_model(len(tok), layers=2)
    with pytest.raises(FlexpaftError, match="no validation rows"):
        flexpaft.search_layers(model, tok, boolq_rows(8), [], task="boolq", progress=False)
    with pytest.raises(FlexpaftError):
        flexpaft.search_layers(
            model, tok, [{"question": "q"}], boolq_rows(4), task="boolq", progress=False
        )
    assert not any("lora_" in n for n, _ in model.named_parameters())
    assert torch.is_tensor(next(model.parameters()))
