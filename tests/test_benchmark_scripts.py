"""The Flexora cost benchmark still runs against the trainer it instruments.

benchmarks/ are not timed tests, but flexora_costs.py patches the trainer's model loading and
wraps its phases; a refactor of the trainer broke it once unnoticed (it looked for a
``load_model`` the trainer no longer had). This runs its part 1 on a tiny random-init shape.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import needs_shared

ROOT = Path(__file__).resolve().parents[1]


@needs_shared
def test_flexora_costs_part_one_runs_on_a_tiny_shape(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "costs.json"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "flexora_costs.py"),
        "--model=llama-tiny",
        "--parts=1",
        "--limit=20",
        "--val-examples=8",
        "--mem-steps=1",
        "--compare=never",
        "--epochs=1",
        "--max-length=64",
        f"--out={out}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(out.read_text())
    row = result["search_vs_training"]
    # The search trains on 12 (20 less 8 validation examples); stage 2 on all 20
    # (flexora.stage2_examples=all), in batches of 4: one epoch of 5 steps.
    assert row["train_examples"] == 12 and row["stage2_steps"] == 5
    assert row["search_cpu_s"] > 0 and row["stage2_cpu_s"] > 0 and row["n_blocks"] == 6
    memory = result["memory"]
    assert memory["search_added_mib"] > 0 and memory["stage2_added_mib"] > 0


@needs_shared
def test_flexora_costs_runs_a_shape_with_a_saved_tokenizer_and_no_full_pass(tmp_path):
    """The GPU setting: a random-init shape whose tokenizer is a saved copy (a machine without
    the embedded GGUF), and no one-pass search (a random model's selection means nothing)."""
    pytest.importorskip("matplotlib")
    from flexpaft.models import load_tokenizer, resolve_model

    tok_dir = tmp_path / "tok"
    load_tokenizer(resolve_model("embedded")).save_pretrained(tok_dir)
    out = tmp_path / "costs.json"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "flexora_costs.py"),
        "--model=llama-tiny",
        f"--tokenizer={tok_dir}",
        "--parts=1",
        "--full-search=no",
        "--limit=20",
        "--val-examples=8",
        "--mem-steps=1",
        "--compare=always",  # without the full pass there is nothing to compare: skipped
        "--epochs=1",
        "--max-length=64",
        "--also=budget_unit=rows,search_budget=0.5",
        f"--out={out}",
    ]
    # No package may load the embedded model: the saved tokenizer is all it gets.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env["FLEXPAFT_CACHE"] = str(tmp_path / "empty-cache")
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(out.read_text())
    assert "full_search" not in result and "accuracy" not in result
    assert result["search_vs_training"]["stage2_steps"] == 5  # all 20 examples, batches of 4
    # --also: the search alone under other settings, set against the same stage 2.
    (also,) = result["also"]
    assert also["settings"] == "budget_unit=rows,search_budget=0.5" and also["steps"] >= 1
    stage2_s = result["search_vs_training"]["stage2_s"]
    assert also["search_over_stage2"] == round(also["search_s"] / stage2_s, 3)
    assert not (tmp_path / "empty-cache" / "models").exists()  # nothing was dequantized
