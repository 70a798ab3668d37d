"""Sharing an adapter: ``flexpaft push`` (commands/push.py) (and ``train --set push_to_hub=true``) upload the adapter
directory, with its model card, to a Hugging Face hub repository through ``huggingface_hub``.

The token comes from the environment (``HF_TOKEN``) or a ``huggingface-cli login``; it is never a
config value, so it cannot end up in a manifest or a pushed file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flexpaft.errors import FlexpaftError


def push_adapter(
    adapter_dir: str | Path,
    repo_id: str,
    private: bool = True,
    results: dict[str, Any] | None = None,
) -> str:
    """Refresh the model card (with ``results`` when given), create the repo, upload; the URL."""
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise FlexpaftError(f"not a PEFT adapter directory (no adapter_config.json): {adapter_dir}")
    if not repo_id or repo_id.count("/") > 1:
        raise FlexpaftError(f"hub repo id must be 'name' or 'owner/name', got {repo_id!r}")
    from huggingface_hub import HfApi, get_token

    # Here, after the argument checks: the model card reads models.py, which loads torch, and
    # `flexpaft push --help` or a mistyped path should not wait for that.
    from flexpaft.modelcard import write_model_card

    token = get_token()
    if not token:
        raise FlexpaftError("pushing needs a hub token: set HF_TOKEN (or run `hf auth login`)")
    manifest_file = adapter_dir.parent / "manifest.json"
    if manifest_file.is_file():
        write_model_card(adapter_dir, json.loads(manifest_file.read_text()), results)
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(
            repo_id=str(getattr(url, "repo_id", repo_id)),
            folder_path=str(adapter_dir),
            repo_type="model",
            commit_message="Upload flexpaft adapter",
        )
    except Exception as e:  # huggingface_hub raises HTTP and validation errors of many kinds
        raise FlexpaftError(f"push to {repo_id} failed: {str(e).splitlines()[0]}") from None
    return str(url)
