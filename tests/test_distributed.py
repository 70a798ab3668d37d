"""``accelerate launch`` with the shipped configs: DDP on 2 CPU processes, DeepSpeed/FSDP errors."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType
from conftest import boolq_rows, write_jsonl

from flexpaft.errors import FlexpaftError
from flexpaft.training.distributed import check_search_backend, weights_sharded

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "accelerate"


def free_port() -> int:
    # Other test runs on the machine may use accelerate's default port 29500.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(config: str, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(CONFIGS / config),
        "--main_process_port",
        str(free_port()),
        "-m",
        "flexpaft.cli",
        "-q",
        "train",
        *args,
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def train_args(tiny_model_dir, data, prompts, out) -> list[str]:
    sets = [
        "method=flexora+paft",
        f"model.name={tiny_model_dir}",
        f"data.source={data}",
        f"prompts.prompt_set={prompts}",
        "data.max_length=64",
        "optim.batch_size=2",
        "optim.epochs=1",
        "optim.num_workers=0",
        "flexora.val_examples=8",
        "flexora.search_steps=3",
        "validation.eval_every=2",
        "validation.eval_examples=6",
        "log_every=0",
        "checkpoint_every=0",
    ]
    return ["-o", str(out)] + [x for s in sets for x in ("--set", s)]


def test_shipped_configs_are_accelerate_config_files():
    from accelerate.commands.config.config_args import load_config_from_file

    kinds = {}
    for name in ("ddp", "deepspeed_zero2", "deepspeed_zero3", "fsdp"):
        cfg = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
        kinds[name] = (cfg.distributed_type, cfg.num_processes, cfg.mixed_precision)
    assert kinds["ddp"][0] == DistributedType.MULTI_GPU
    assert kinds["deepspeed_zero2"][0] == kinds["deepspeed_zero3"][0] == DistributedType.DEEPSPEED
    assert kinds["fsdp"][0] == DistributedType.FSDP
    assert all(k[1] == 2 and k[2] == "bf16" for k in kinds.values())
    zero = load_config_from_file(str(CONFIGS / "deepspeed_zero3.yaml")).deepspeed_config
    assert zero["zero_stage"] == 3


def test_ddp_config_trains_on_two_cpu_processes(tmp_path, tiny_model_dir):
    if torch.cuda.device_count() == 1:
        pytest.skip("one GPU: the DDP config asks for two processes")
    data = write_jsonl(tmp_path / "b.jsonl", boolq_rows(34))
    prompts = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"template": "{passage}\nQ: {question}?\nA:"},
            {"template": "Q: {question}? {passage}\nA:"},
        ],
    )
    proc = launch("ddp.yaml", *train_args(tiny_model_dir, data, prompts, tmp_path / "ddp"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((tmp_path / "ddp" / "manifest.json").read_text())
    assert m["world_size"] == 2
    assert m["compute"]["num_processes"] == 2
    assert m["compute"]["mixed_precision"] == "bf16"  # from the accelerate config (auto)
    # Both ranks ended the search with the same alpha, which moved.
    assert m["flexora"]["alpha_rank_spread"] == 0.0
    assert any(a != 0.0 for a in m["flexora"]["alpha"])

    # The same run in one process sees the same global stream: stage 2's one epoch covers the
    # same (example, template) pairs, so the real tokens agree; each rank ran half the steps.
    from flexpaft.recipe import train
    from flexpaft.settings.loading import load_config
    from flexpaft.settings.train import TrainConfig

    args = train_args(tiny_model_dir, data, prompts, tmp_path / "one")
    sets = [a for a in args[2:] if a != "--set"] + [f"output_dir={tmp_path / 'one'}"]
    one = train(load_config(TrainConfig, None, sets), progress=False).manifest
    # Stage 2 trains on every training example (flexora.stage2_examples=all): 34 less the 6
    # held out for evaluation during training; the search's 8 validation examples included.
    assert m["examples"] == one["examples"] == 34 - 6
    assert m["tokens"] == one["tokens"]
    assert m["steps"] * 2 == one["steps"] == 14
    # Evaluation during training ran on both ranks' shares of the 6 validation examples.
    assert [r["step"] for r in m["validation"]["history"]] == [2, 4, 6, 7]
    assert m["validation"]["examples"] == 6

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(tmp_path / "ddp" / "adapter")
    )


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is not None, reason="deepspeed here")
@pytest.mark.parametrize("config", ["deepspeed_zero2.yaml", "deepspeed_zero3.yaml"])
def test_deepspeed_configs_stop_clearly_without_deepspeed(tmp_path, config):
    proc = launch(config, "-o", str(tmp_path))
    assert proc.returncode != 0
    # accelerate's launcher refuses before any process starts.
    assert "DeepSpeed is not installed" in proc.stderr.strip().splitlines()[-1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA here: FSDP could run")
def test_fsdp_config_stops_in_one_line_without_gpus(tmp_path):
    proc = launch("fsdp.yaml", "-o", str(tmp_path), "--set", "model.name=/nonexistent")
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("flexpaft: error:")]
    # One line from each of the two processes, before any model is loaded.
    assert len(errors) == 2 and "asks for fsdp, which needs CUDA GPUs" in errors[0]
    assert "Traceback" not in proc.stderr.split("flexpaft: error:")[0]


def test_flexora_search_refuses_sharded_weights():
    fsdp = SimpleNamespace(distributed_type=DistributedType.FSDP)
    zero3 = SimpleNamespace(
        distributed_type=DistributedType.DEEPSPEED,
        state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=3)),
    )
    zero2 = SimpleNamespace(
        distributed_type=DistributedType.DEEPSPEED,
        state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=2)),
    )
    ddp = SimpleNamespace(distributed_type=DistributedType.MULTI_GPU)
    assert weights_sharded(fsdp) and weights_sharded(zero3)
    assert not weights_sharded(zero2) and not weights_sharded(ddp)
    for acc in (fsdp, zero3):
        with pytest.raises(FlexpaftError, match="needs full weights on every rank"):
            check_search_backend(acc)
    check_search_backend(zero2)
    check_search_backend(ddp)


def test_eval_under_accelerate_launch_splits_the_templates(tmp_path, tiny_model_dir):
    if torch.cuda.device_count() == 1:
        pytest.skip("one GPU: the DDP config asks for two processes")
    from flexpaft.evaluation.run import EvalConfig, run_eval
    from flexpaft.settings.loading import load_config

    data = write_jsonl(tmp_path / "b.jsonl", boolq_rows(12))
    prompts = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"template": "{passage}\nQ: {question}?\nA:"},
            {"template": "Q: {question}? {passage}\nA:"},
            {"template": "{question}?\n{passage}\nYes or no:"},
        ],
    )
    sets = [f"model.name={tiny_model_dir}", f"data.source={data}", f"prompt_set={prompts}"]
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(CONFIGS / "ddp.yaml"),
        "--main_process_port",
        str(free_port()),
        "-m",
        "flexpaft.cli",
        "-q",
        "eval",
        "-o",
        str(tmp_path / "two"),
    ] + [x for s in sets for x in ("--set", s)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("results:") == 1  # printed by one process only
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    one = run_eval(
        load_config(EvalConfig, None, sets + [f"output_dir={tmp_path / 'one'}"]), progress=False
    )
    assert [t["id"] for t in two["per_template"]] == [t.id for t in one.per_template]
    assert [t["correct"] for t in two["per_template"]] == [t.correct for t in one.per_template]
    assert two["summary"] == pytest.approx(one.summary)
