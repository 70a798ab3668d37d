"""README's "Your own data in six commands", run as written on a CSV made from the packaged SNIPS
rows, with the tiny model and smaller sizes (the only changes, each checked to apply once)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# README text -> what the test runs instead: the tiny model, and sizes it trains in seconds.
SIZES = [
    ("limit: 320", "limit: 32"),
    ("data.skip=320", "data.skip=32"),
    ("data.limit=140", "data.limit=14"),
    ("--n 200", "--n 40"),
    ("epochs: 2,", "epochs: 1, batch_size: 4, max_steps: 2,"),
]


def own_data_section() -> list[tuple[str, str]]:
    """(language, code) of every fenced block in the README's own-data section, in order."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Your own data in six commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S)


def _apply(text: str, model: str) -> str:
    for old, new in [*SIZES, ("name: embedded", f"name: {model}")]:
        if old in text:
            assert text.count(old) == 1, old
            text = text.replace(old, new)
    return text


def test_the_readme_own_data_commands_run_end_to_end(tmp_path, tiny_model_dir):
    blocks = own_data_section()
    assert [lang for lang, _ in blocks] == ["bash", "yaml", "yaml", "bash"]
    make_csv, task_yaml, run_yaml, commands = (code for _, code in blocks)
    whole = "".join(code for _, code in blocks)
    for old, _ in SIZES:  # the README still says what the test shrinks
        assert old in whole, old
    (tmp_path / "my_task.yaml").write_text(task_yaml)
    (tmp_path / "my_run.yaml").write_text(_apply(run_yaml, str(tiny_model_dir)))
    assert str(tiny_model_dir) in (tmp_path / "my_run.yaml").read_text()

    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    # `flexpaft` as the console script runs it, from this checkout.
    shim = f'flexpaft() {{ "{sys.executable}" -m flexpaft.cli -q "$@"; }}\npython() {{ "{sys.executable}" "$@"; }}\n'
    script = shim + "set -e\n" + make_csv + _apply(commands, str(tiny_model_dir))
    done = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rows of requests.csv fit task my_intents (label_words)" in done.stdout
    report = json.loads((tmp_path / "runs/my/report/report.json").read_text())
    assert [m["name"] for m in report["methods"]] == ["base", "lora", "paft"]
    assert report["examples"] == 14 and len(report["templates"]) >= 4
    manifest = json.loads((tmp_path / "runs/my/paft/manifest.json").read_text())
    assert manifest["method"] == "paft" and manifest["examples"] == 32
    assert (tmp_path / "runs/my/report/report.md").is_file()
