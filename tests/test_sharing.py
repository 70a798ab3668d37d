"""Sharing: a real model card, push_to_hub against a stand-in HfApi, group-readable outputs."""

import json
import os
import stat

import huggingface_hub
import pytest
from conftest import boolq_rows, write_jsonl

from flexpaft.cli import main
from flexpaft.modelcard import EMBEDDED_HUB_ID, hub_base_model, write_model_card


def _sets(*pairs):
    return sum((["--set", s] for s in pairs), [])


class FakeApi:
    """Records what would be sent to the hub; nothing leaves the machine."""

    calls: list = []

    def __init__(self, token=None, **kw):
        FakeApi.calls.append(("init", token))

    def create_repo(self, repo_id, private=False, exist_ok=False, repo_type=None, **kw):
        FakeApi.calls.append(("create_repo", repo_id, private, exist_ok))
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, repo_id, folder_path, repo_type=None, commit_message=None, **kw):
        files = sorted(os.listdir(folder_path))
        readme = open(os.path.join(folder_path, "README.md")).read()
        FakeApi.calls.append(("upload_folder", repo_id, files, readme))


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    FakeApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no stored login
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    return FakeApi


def test_hub_base_model_names_the_hub_id_not_a_cache_path(tmp_path):
    assert hub_base_model("embedded") == EMBEDDED_HUB_ID
    assert hub_base_model("meta-llama/Llama-3.2-1B") == "meta-llama/Llama-3.2-1B"
    local = tmp_path / "m"
    local.mkdir()
    (local / "config.json").write_text(json.dumps({"_name_or_path": "Qwen/Qwen2.5-0.5B"}))
    assert hub_base_model(str(local)) == "Qwen/Qwen2.5-0.5B"
    (local / "config.json").write_text(json.dumps({"_name_or_path": str(local)}))
    assert hub_base_model(str(local)) is None
    assert hub_base_model("model.gguf") is None

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": "/root/.cache/flexpaft/models/SmolLM2-x"})
    )
    manifest = {"method": "paft", "task": "boolq", "config": {"model": {"name": "embedded"}}}
    write_model_card(adapter, manifest)
    card = (adapter / "README.md").read_text()
    assert f"base_model: {EMBEDDED_HUB_ID}" in card and "library_name: peft" in card
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == EMBEDDED_HUB_ID


def test_train_writes_a_model_card_and_group_readable_outputs(tmp_path, tiny_model_dir, capsys):
    old = os.umask(0o022)
    try:
        data = write_jsonl(tmp_path / "boolq.jsonl", boolq_rows(16))
        code = main(
            ["-q", "train", "-o", str(tmp_path / "run")]
            + _sets(
                f"model.name={tiny_model_dir}",
                f"data.source={data}",
                "optim.max_steps=2",
                "optim.batch_size=4",
                "optim.lr=3e-4",
                "lora.r=4",
            )
        )
    finally:
        os.umask(old)
    assert code == 0, capsys.readouterr().err
    adapter = tmp_path / "run" / "adapter"
    card = (adapter / "README.md").read_text()
    for expected in (
        "# lora adapter for",
        "task **boolq**",
        "| learning rate | 0.0003 |",
        "| LoRA r / alpha / dropout | 4 / 16.0 / 0.0 |",
        "Trained under one template:",
        "Chat template: `none` (raw prompts",
        "No evaluation attached yet.",
        "- transformers ",
        "- peft ",
    ):
        assert expected in card, expected
    assert stat.S_IMODE(adapter.stat().st_mode) == 0o755
    for f in adapter.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f


def test_push_uploads_the_adapter_with_its_card_and_eval_table(
    tmp_path, tiny_model_dir, fake_hub, capsys
):
    data = write_jsonl(tmp_path / "boolq.jsonl", boolq_rows(24))
    common = [f"model.name={tiny_model_dir}", f"data.source={data}"]
    code = main(
        ["-q", "train", "-o", str(tmp_path / "run")]
        + _sets(
            *common,
            "data.limit=16",
            "optim.max_steps=1",
            "optim.batch_size=4",
            "push_to_hub=true",
            "hub_model_id=me/tiny-boolq",
        )
    )
    assert code == 0, capsys.readouterr().err
    assert ("create_repo", "me/tiny-boolq", True, True) in fake_hub.calls
    adapter = tmp_path / "run" / "adapter"
    assert (
        main(
            ["-q", "eval", "--adapter", str(adapter), "-o", str(tmp_path / "ev")]
            + _sets(*common, "data.skip=16")
        )
        == 0
    )
    fake_hub.calls = []
    code = main(
        [
            "-q",
            "push",
            str(adapter),
            "--repo-id",
            "me/tiny-boolq",
            "--public",
            "--eval",
            str(tmp_path / "ev"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "pushed" in out and "https://huggingface.co/me/tiny-boolq" in out
    assert fake_hub.calls[0] == ("init", "hf_test_token")
    assert fake_hub.calls[1] == ("create_repo", "me/tiny-boolq", False, True)
    _, repo, files, readme = fake_hub.calls[2]
    assert repo == "me/tiny-boolq"
    assert {"README.md", "adapter_config.json", "adapter_model.safetensors"} <= set(files)
    results = json.loads((tmp_path / "ev" / "results.json").read_text())
    mean = f"{100 * results['summary']['mean']:.1f}"
    assert "## Evaluation" in readme and f"| {mean} |" in readme
    assert "No evaluation attached yet." not in readme


def test_push_without_a_token_or_repo_is_one_line(tmp_path, fake_hub, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN")
    adapter = tmp_path / "a"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    code = main(["-q", "push", str(adapter), "--repo-id", "me/x"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "HF_TOKEN" in err
    assert fake_hub.calls == []
    code = main(["-q", "train", "--set", "push_to_hub=true"])
    err = capsys.readouterr().err
    assert code == 2 and "push_to_hub needs hub_model_id" in err
