"""Flexora layer selection rules and the LoRA-drop / random baselines."""

from __future__ import annotations

import pytest
import torch
from conftest import build_model

from flexpaft.errors import FlexpaftError
from flexpaft.methods.flexora.select import lora_drop_ranking, random_layers, select_layers
from flexpaft.settings.train import LoraSettings
from flexpaft.training.lora import add_lora

# exp(alpha) = 1.0513, 2.7183, 1.0, 0.3679: mean 1.2844, log-mean-exp 0.2503, so only block 1
# has a gate above 1, while blocks 0 and 1 have alpha > 0.
ALPHA = [0.05, 1.0, 0.0, -1.0]


def test_rules_on_fixed_alphas():
    assert select_layers(ALPHA, "positive") == [0, 1]
    assert select_layers(ALPHA, "gate") == [1]
    assert select_layers(ALPHA, "topk", k=3) == [0, 1, 2]
    assert select_layers(ALPHA, "topk", k=1) == [1]
    assert select_layers(ALPHA, "fraction", fraction=0.5) == [0, 1]
    assert select_layers(ALPHA, "fraction", fraction=0.3) == [0, 1]  # ceil(1.2) = 2
    assert select_layers(ALPHA, "fraction", fraction=0.25) == [1]
    assert select_layers(ALPHA, "fraction", fraction=1.0) == [0, 1, 2, 3]


def test_ties_keep_index_order():
    assert select_layers([0.5, 0.5, 0.5], "topk", k=2) == [0, 1]


def test_empty_selection_falls_back_to_best_layer_with_warning():
    with pytest.warns(UserWarning, match="falling back to the best layer 2"):
        assert select_layers([-0.3, -0.2, -0.1], "positive") == [2]
    with pytest.warns(UserWarning):
        # All equal: every gate is exactly 1, none above.
        assert select_layers([0.0, 0.0], "gate") == [0]


def test_bad_rule_arguments():
    with pytest.raises(FlexpaftError, match="unknown selection rule"):
        select_layers(ALPHA, "best")
    with pytest.raises(FlexpaftError, match="flexora.k"):
        select_layers(ALPHA, "topk", k=0)
    with pytest.raises(FlexpaftError, match="flexora.fraction"):
        select_layers(ALPHA, "fraction", fraction=0)


def test_random_layers_distinct_sorted_reproducible():
    a = random_layers(12, 5, seed=3)
    assert a == random_layers(12, 5, seed=3) and a == sorted(set(a)) and len(a) == 5
    assert all(0 <= i < 12 for i in a)
    with pytest.raises(FlexpaftError):
        random_layers(3, 4)


def test_lora_drop_ranking_measures_lora_output_norm():
    model = add_lora(build_model(100, layers=3), LoraSettings(r=2, alpha=4.0))
    batch = {
        "input_ids": torch.randint(2, 100, (2, 6), generator=torch.Generator().manual_seed(0)),
        "attention_mask": torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]]),
    }
    assert lora_drop_ranking(model, [batch]) == [0.0, 0.0, 0.0]  # fresh LoRA: B = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layers.1." in name and "lora_B" in name:
                p.normal_(0, 0.3)
    once = lora_drop_ranking(model, [batch, batch])
    assert once[0] == 0.0 and once[1] > 0 and once[2] == 0.0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layers.1." in name and "lora_B" in name:
                p.mul_(2)
    # Block 1 comes after block 0 only, so its input is unchanged: a squared norm quadruples.
    assert lora_drop_ranking(model, [batch])[1] == pytest.approx(4 * once[1], rel=1e-5)
