"""``flexpaft demo`` end to end on the tiny model and a fake BIG-bench archive (no network)."""

import io
import json
import tarfile

from flexpaft.cli import main


def _archive(path, n=40):
    task = {
        "description": "Is the statement plausible?",
        "examples": [
            {
                "input": f"Statement number {i} is {'true' if i % 2 else 'false'}.",
                "target_scores": {"yes": i % 2, "no": 1 - i % 2},
            }
            for i in range(n)
        ],
    }
    data = json.dumps(task).encode()
    with tarfile.open(path, "w:gz") as tf:
        info = tarfile.TarInfo("bigbench-1.0.0/bigbench/benchmark_tasks/toydemo/task.json")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    return path


def test_demo_runs_the_whole_flow(tmp_path, tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setenv("FLEXPAFT_BIGBENCH_ARCHIVE", str(_archive(tmp_path / "bb.tar.gz")))
    code = main(
        [
            "-q",
            "demo",
            "--task",
            "bigbench:toydemo",
            "--model",
            str(tiny_model_dir),
            "--train-examples",
            "16",
            "--test-examples",
            "8",
            "--test-templates",
            "3",
            "--epochs",
            "1",
            "--paft",
            "--out",
            str(tmp_path / "demo"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    for name in ("base", "lora (one prompt)", "paft"):
        assert name in out
    report = (tmp_path / "demo" / "report.md").read_text()
    assert "3 unseen test templates, 8 examples" in report
    assert "Always answering the majority label would score" in report
    assert (tmp_path / "demo" / "per_template.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "demo" / "lora" / "adapter" / "adapter_config.json").is_file()
