"""Memory and speed options: checkpointing, mixed precision, quantization checks, attention."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import boolq_rows, build_model, build_tokenizer, write_jsonl
from test_flexora_search import TEMPLATES, examples

from flexpaft.cli import main
from flexpaft.errors import FlexpaftError
from flexpaft.methods.flexora.blocks import find_blocks
from flexpaft.methods.flexora.gates import LayerGates
from flexpaft.methods.flexora.hypergrad import alpha_gradient
from flexpaft.recipe import train
from flexpaft.settings.loading import load_config
from flexpaft.settings.train import LoraSettings, TrainConfig
from flexpaft.tasks import AnswerFormat, get_task
from flexpaft.training.compute import (
    ComputeSettings,
    check_compute,
    load_for_training,
    prepare_for_training,
    quantization_config,
)
from flexpaft.training.data import PadCollator, RenderedDataset, answer_loss
from flexpaft.training.distributed import build_accelerator
from flexpaft.training.lora import add_lora

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def batch(tok, n=4):
    ds = RenderedDataset(
        get_task("boolq"), examples(n), TEMPLATES, AnswerFormat.LABEL_WORDS, tok, 48
    )
    return PadCollator(tok.pad_token_id)([ds[(i, i % 2)] for i in range(n)])


def gated_lora_model(tok, checkpointing: bool):
    """Tiny Llama + LoRA on every block + Flexora gates, LoRA B non-zero so alpha has a gradient."""
    model = build_model(len(tok), layers=3, seed=1)
    layout = find_blocks(model)
    model = prepare_for_training(model, ComputeSettings(gradient_checkpointing=checkpointing))
    model = add_lora(model, LoraSettings(r=4))
    torch.manual_seed(2)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    gates = LayerGates(layout.count)
    gates.attach(model, layout)
    with torch.no_grad():
        gates.alpha.copy_(torch.tensor([0.3, -0.2, 0.1]))
    model.train()
    return model, gates


def count_block_forwards(model) -> dict:
    calls = {"n": 0}

    def hook(*_):
        calls["n"] += 1

    # Attention, not the MLP: non-reentrant recomputation stops as soon as the last saved tensor
    # is rebuilt, inside the block's final module, before that module's hooks would run.
    model.get_base_model().model.layers[0].self_attn.register_forward_hook(hook)
    return calls


def test_checkpointing_gives_the_same_loss_and_gradients_to_lora_and_gates(tok):
    b = batch(tok)
    results = {}
    for ckpt in (False, True):
        model, gates = gated_lora_model(tok, ckpt)
        calls = count_block_forwards(model)
        loss = answer_loss(model, b)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        # alpha's gradient as the search takes it (autograd.grad on the validation loss).
        a_grad, _ = alpha_gradient(model, gates, [b])
        results[ckpt] = (loss.item(), grads, a_grad, calls["n"])
    loss0, grads0, alpha0, calls0 = results[False]
    loss1, grads1, alpha1, calls1 = results[True]
    # Without checkpointing block 0's attention runs once per forward (2 forwards); with it,
    # once more in each backward: proof that activations were recomputed.
    assert calls0 == 2 and calls1 == 4
    assert loss1 == pytest.approx(loss0, abs=1e-6)
    assert grads0.keys() == grads1.keys()
    assert any("lora_A" in n for n in grads1) and any("lora_B" in n for n in grads1)
    for n in grads0:
        assert grads1[n].abs().sum() > 0, n
        assert torch.allclose(grads0[n], grads1[n], atol=1e-6), n
    assert alpha1.abs().min() > 0
    assert torch.allclose(alpha0, alpha1, atol=1e-7)


def test_bf16_autocast_on_cpu_through_accelerate(tok):
    b = batch(tok)
    model = add_lora(build_model(len(tok), layers=2, seed=1), LoraSettings(r=4))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    ref = answer_loss(copy.deepcopy(model), b).item()
    acc = build_accelerator(1, ComputeSettings(mixed_precision="bf16"))
    assert acc.mixed_precision == "bf16"
    seen = []
    q = model.get_base_model().model.layers[0].self_attn.q_proj.base_layer
    q.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    wrapped = acc.prepare(model)
    loss = answer_loss(wrapped, b)
    acc.backward(loss)
    assert seen == [torch.bfloat16]
    # bf16 matmuls: close to the fp32 loss, not equal to it.
    assert loss.item() == pytest.approx(ref, rel=2e-2) and loss.item() != ref
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    assert all(p.dtype == torch.float32 for p in lora)  # master weights stay fp32
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora)


def _cfg(tiny_model_dir, data, out, *extra):
    return load_config(
        TrainConfig,
        None,
        [
            f"model.name={tiny_model_dir}",
            f"data.source={data}",
            "data.max_length=64",
            "optim.batch_size=4",
            "optim.lr=5e-3",
            "optim.num_workers=0",
            f"output_dir={out}",
            "log_every=0",
            *extra,
        ],
    )


@pytest.mark.parametrize("method", ["lora", "paft", "topaccuracy", "flexora+paft"])
def test_every_method_trains_with_checkpointing_and_bf16(tmp_path, tiny_model_dir, method):
    data = write_jsonl(tmp_path / "b.jsonl", boolq_rows(24))
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"template": t.text} for t in TEMPLATES])
    cfg = _cfg(
        tiny_model_dir,
        data,
        tmp_path / "run",
        f"method={method}",
        f"prompts.prompt_set={prompts}",
        "prompts.topaccuracy_examples=8",
        "optim.max_steps=2",
        "flexora.val_examples=8",
        "flexora.search_steps=2",
        "compute.gradient_checkpointing=true",
        "compute.mixed_precision=bf16",
    )
    res = train(cfg, progress=False)
    m = res.manifest
    assert m["steps"] == 2 and m["config"]["compute"]["gradient_checkpointing"]
    assert m["compute"]["mixed_precision"] == "bf16"
    assert m["compute"]["gradient_checkpointing"] is True
    if method.startswith("flexora"):
        # Alpha moved during the search: the gates received gradients through the checkpoints.
        assert any(a != 0.0 for a in m["flexora"]["alpha"])
    from safetensors.torch import load_file

    weights = load_file(str(res.adapter_dir / "adapter_model.safetensors"))
    assert any(v.abs().sum() > 0 for k, v in weights.items() if "lora_B" in k)


def test_checkpointing_does_not_change_the_checkpoint_identity(tmp_path, tiny_model_dir):
    from flexpaft.settings.train import config_hash

    a = _cfg(tiny_model_dir, "x", tmp_path)
    b = _cfg(tiny_model_dir, "x", tmp_path, "compute.gradient_checkpointing=true")
    c = _cfg(tiny_model_dir, "x", tmp_path, "compute.mixed_precision=bf16")
    assert config_hash(a) == config_hash(b) != config_hash(c)


def test_attention_implementation_reaches_the_model(tiny_model_dir):
    from flexpaft.settings.common import ModelSettings

    model, _ = load_for_training(
        ModelSettings(name=str(tiny_model_dir)), ComputeSettings(attn_implementation="eager"), CPU
    )
    assert model.config._attn_implementation == "eager"


def test_qlora_settings():
    q = quantization_config(ComputeSettings(load_in_4bit=True))
    assert q.load_in_4bit and not q.load_in_8bit
    assert q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant
    assert q.bnb_4bit_compute_dtype == torch.bfloat16
    assert quantization_config(ComputeSettings(load_in_8bit=True)).load_in_8bit
    assert quantization_config(ComputeSettings()) is None


@pytest.mark.parametrize(
    "key, message",
    [
        ("compute.load_in_4bit=true", "load_in_4bit needs"),
        ("compute.load_in_8bit=true", "load_in_8bit needs"),
        ("compute.attn_implementation=flash_attention_2", "flash_attention_2 needs"),
        ("compute.mixed_precision=fp16", "fp16 needs a CUDA GPU"),
    ],
)
def test_options_this_machine_cannot_run_fail_in_one_line_before_loading(
    tmp_path, capsys, key, message
):
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") and torch.cuda.is_available():
        pytest.skip("this machine can run every option")
    # The model does not exist: the option's error must come first (nothing was loaded).
    code = main(
        ["-q", "train", "-o", str(tmp_path), "--set", "model.name=/nonexistent", "--set", key]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert message in err and "nonexistent" not in err


def test_contradictory_options_are_config_errors():
    with pytest.raises(FlexpaftError, match="one of load_in_4bit and load_in_8bit"):
        load_config(TrainConfig, None, ["compute.load_in_4bit=true", "compute.load_in_8bit=true"])
    with pytest.raises(FlexpaftError, match="mixed_precision must be one of"):
        load_config(TrainConfig, None, ["compute.mixed_precision=fp8"])
    with pytest.raises(FlexpaftError, match="attn_implementation must be"):
        load_config(TrainConfig, None, ["compute.attn_implementation=flash"])
    check_compute(ComputeSettings(mixed_precision="bf16"), CPU)  # bf16 runs on CPU


def test_torch_compile_goes_through_accelerate(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "b.jsonl", boolq_rows(16))
    cfg = _cfg(
        tiny_model_dir,
        data,
        tmp_path / "run",
        "optim.max_steps=2",
        "compute.torch_compile=true",
        # The eager backend runs dynamo's capture without generating code: fast on a CPU.
        "compute.torch_compile_backend=eager",
    )
    res = train(cfg, progress=False)
    assert res.manifest["compute"]["torch_compile"] == "eager"
    cfg_json = json.loads((res.adapter_dir / "adapter_config.json").read_text())
    assert cfg_json["peft_type"] == "LORA"
    from safetensors.torch import load_file

    keys = list(load_file(str(res.adapter_dir / "adapter_model.safetensors")))
    assert keys and not any("_orig_mod" in k for k in keys)


def test_unrolled_hypergradient_is_unchanged_by_checkpointing(tmp_path, tok):
    """The unrolled search differentiates at substituted weights (functional_call); a
    checkpointed block recomputed at the module's own weights would give another alpha."""
    from accelerate import Accelerator
    from test_flexora_search import config

    from flexpaft.methods.flexora.search import LayerSearch

    alphas = {}
    for ckpt in ("false", "true"):
        cfg = config(
            tmp_path / ckpt,
            "flexora.unroll=2",
            "flexora.search_steps=2",
            f"compute.gradient_checkpointing={ckpt}",
            "checkpoint_every=0",
        )
        model = prepare_for_training(build_model(len(tok), layers=2), cfg.compute)
        search = LayerSearch(
            cfg,
            model,
            tok,
            get_task("boolq"),
            AnswerFormat.LABEL_WORDS,
            examples(),
            TEMPLATES,
            Accelerator(cpu=True),
        )
        alphas[ckpt] = search.run(progress=False).alpha
    assert any(abs(a) > 1e-3 for a in alphas["false"])
    assert alphas["true"] == pytest.approx(alphas["false"], abs=1e-6)
