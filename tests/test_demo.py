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
    # The test slice is label-balanced: 4 of each answer out of the 8 asked for.
    assert "3 unseen test templates, 8 examples" in report
    assert "Always answering the most common gold answer scores 50.0%" in report
    # The closing sentences come from the report's numbers and say whether intervals separate.
    assert "On 3 templates it never trained on (8 held-out examples each), paft averages" in out
    assert "against lora (one prompt)" in out
    assert "separated" in out and "per-template plot" in out
    # The last line says what the numbers were made with.
    import torch

    from flexpaft.version import __version__

    last = out.strip().splitlines()[-1]
    assert last.startswith(f"versions: flexpaft {__version__}, python ")
    assert f"torch {torch.__version__}, transformers " in last and ", peft " in last
    assert (tmp_path / "demo" / "per_template.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "demo" / "lora" / "adapter" / "adapter_config.json").is_file()


def test_demo_help_says_how_to_run_full_size(capsys):
    import pytest

    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--train-examples 400 --test-examples 196 --test-templates 50" in out


def test_conclusion_reports_separation_from_the_intervals(tmp_path):
    from flexpaft.workflows.demo import conclusion

    def method(name, mean, low):
        return {
            "name": name,
            "mean": mean,
            "min": low,
            "vs_majority": {"value": mean - 0.5, "low": 0.02, "high": 0.2, "separated": True},
        }

    report = {
        "templates": ["t1", "t2"],
        "examples": 10,
        "majority_rate": 0.5,
        "methods": [
            method("base", 0.5, 0.4),
            method("lora (one prompt)", 0.55, 0.3),
            method("paft", 0.62, 0.58),
        ],
        "comparisons": [
            {
                "a": "paft",
                "b": "lora (one prompt)",
                "mean_diff": {"value": 0.07, "low": 0.01, "high": 0.12, "separated": True},
                "min_diff": {"value": 0.28, "low": -0.01, "high": 0.4, "separated": False},
            }
        ],
    }
    text = conclusion(report, tmp_path / "report.md", None)
    assert (
        "paft averages 62.0%, +7.0 points against lora (one prompt) ([+1.0, +12.0], separated)"
        in text
    )
    assert (
        "+12.0 against always answering the most common label, 50.0% ([+2.0, +20.0], separated)"
        in text
    )
    assert (
        "worst template scores 58.0% against 30.0% for lora (one prompt) (+28.0 points, [-1.0, +40.0], not separated)"
        in text
    )


def test_bf16_choice():
    from flexpaft.workflows.demo import use_bf16

    assert use_bf16("on") is True
    assert use_bf16("off") is False
    import torch

    if not torch.cuda.is_available():
        # auto follows oneDNN's test for native bf16, so an emulating CPU stays on fp32.
        assert use_bf16("auto") == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def test_demo_paft_draws_the_users_own_prompt(tmp_path, tiny_model_dir, monkeypatch, capsys):
    """--own-template is the prompt one-prompt LoRA trains on and the one PAFT draws for half of
    its examples (prompts.own_rate's default), not the task's template."""
    monkeypatch.setenv("FLEXPAFT_BIGBENCH_ARCHIVE", str(_archive(tmp_path / "bb.tar.gz")))
    own = "Claim: {input}\nPlausible?"
    argv = ["-q", "demo", "--task", "bigbench:toydemo", "--model", str(tiny_model_dir)]
    argv += ["--train-examples", "16", "--test-examples", "8", "--test-templates", "3"]
    argv += ["--epochs", "1", "--paft", "--own-template", own, "--out", str(tmp_path / "demo")]
    assert main(argv) == 0
    capsys.readouterr()
    paft = json.loads((tmp_path / "demo" / "paft" / "manifest.json").read_text())
    lora = json.loads((tmp_path / "demo" / "lora" / "manifest.json").read_text())
    assert paft["config"]["prompts"]["template"] == own == lora["config"]["prompts"]["template"]
    assert paft["templates"]["own"]["rate"] == 0.5 and paft["templates"]["own"]["added"] is True
    assert paft["loss"] == "options" and lora["loss"] == "answer"


def test_versions_line_is_one_short_line():
    from flexpaft.workflows.demo import versions_line

    assert versions_line({"flexpaft": "0.1.0", "torch": "2.13.0+cpu"}) == (
        "versions: flexpaft 0.1.0, torch 2.13.0+cpu"
    )
    line = versions_line()
    assert "\n" not in line and len(line) < 160 and "accelerate" in line
