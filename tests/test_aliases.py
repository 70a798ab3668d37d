"""Porting recipes: TrainingArguments names as aliases; optimizer and schedule by HF names."""

import json

import pytest
import torch
from conftest import boolq_rows, write_jsonl

from flexpaft.cli import main
from flexpaft.errors import FlexpaftError
from flexpaft.settings.loading import load_config
from flexpaft.settings.train import TrainConfig
from flexpaft.training.optim import OPTIMIZERS, make_optimizer


def test_training_arguments_names_set_the_keys_they_mean(tmp_path):
    yml = tmp_path / "recipe.yaml"
    yml.write_text(
        "learning_rate: 2e-4\nnum_train_epochs: 2\nper_device_train_batch_size: 4\n"
        "gradient_accumulation_steps: 2\nlora_r: 16\nlora_alpha: 32\nlora_dropout: 0.05\n"
        "warmup_ratio: 0.03\nweight_decay: 0.01\nmax_steps: 7\nseed: 3\n"
        "optim: adafactor\nlr_scheduler_type: linear\nchat_template: none\n"
    )
    cfg = load_config(TrainConfig, yml, ["logging_steps=5", "optim.batch_size=2"])
    o = cfg.optim
    assert (o.lr, o.epochs, o.grad_accum, o.warmup_ratio, o.weight_decay) == (
        2e-4,
        2.0,
        2,
        0.03,
        0.01,
    )
    assert o.batch_size == 2  # the later --set wins over the YAML alias
    assert (o.max_steps, cfg.seed, o.optimizer, o.lr_scheduler_type) == (
        7,
        3,
        "adafactor",
        "linear",
    )
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout) == (16, 32.0, 0.05)
    assert cfg.log_every == 5 and cfg.model.chat_template == "none"
    # The optim section itself still works.
    assert load_config(TrainConfig, None, ["optim.lr=1e-3"]).optim.lr == 1e-3
    both = tmp_path / "both.yaml"
    both.write_text("learning_rate: 1e-3\noptim:\n  lr: 2e-3\n")
    with pytest.raises(FlexpaftError, match="both learning_rate and its alias target optim.lr"):
        load_config(TrainConfig, both)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_name_builds_and_steps(name):
    w = torch.nn.Parameter(torch.ones(3))
    opt = make_optimizer(name, [w], 0.1, 0.0)
    (w * torch.arange(3.0)).sum().backward()
    opt.step()
    assert w[0] == 1 and w[2] < 1  # moved against the gradient where there was one


def test_cli_recipe_with_aliases_sgd_and_a_constant_schedule(tmp_path, tiny_model_dir, capsys):
    data = write_jsonl(tmp_path / "boolq.jsonl", boolq_rows(16))
    argv = ["-q", "train", "-o", str(tmp_path / "run")]
    for s in [
        f"model_name_or_path={tiny_model_dir}",
        f"data.source={data}",
        "learning_rate=3e-4",
        "max_steps=3",
        "per_device_train_batch_size=4",
        "optim=sgd",
        "lr_scheduler_type=constant",
        "logging_steps=1",
        "lora_r=2",
    ]:
        argv += ["--set", s]
    assert main(argv) == 0, capsys.readouterr().err
    m = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert m["config"]["optim"]["optimizer"] == "sgd" and m["config"]["lora"]["r"] == 2
    rows = [json.loads(x) for x in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows] == [3e-4, 3e-4, 3e-4]
    code = main(["-q", "train", "--set", "lr_scheduler_type=reduce_lr_on_plateau"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "lr_scheduler_type" in err


def test_help_lists_the_aliases(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "learning_rate -> optim.lr" in out and "per_device_train_batch_size" in out
    assert "optim.lr_scheduler_type = 'cosine'" in out and "adafactor" in out
