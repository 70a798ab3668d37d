"""Tracking: history.jsonl + loss.png in the run directory, and accelerate's trackers."""

import json
import math

import pytest
from conftest import boolq_rows, write_jsonl

from flexpaft.cli import main
from flexpaft.training import tracking


def _sets(*pairs):
    return sum((["--set", s] for s in pairs), [])


def _train(tmp_path, model_dir, *extra):
    data = write_jsonl(tmp_path / "boolq.jsonl", boolq_rows(16))
    return main(
        ["-q", "train", "-o", str(tmp_path / "run")]
        + _sets(
            f"model.name={model_dir}",
            f"data.source={data}",
            "optim.max_steps=3",
            "optim.batch_size=4",
            "optim.lr=1e-3",
            "log_every=1",
            *extra,
        )
    )


class Recorder:
    """Stands in for accelerate's TensorBoard tracker: records what the trainer sends."""

    runs: list = []

    def __init__(self, run_name, logging_dir, **kw):
        self.name, self.run_name, self.logging_dir = "tensorboard", run_name, logging_dir
        self.config, self.logged, self.finished = None, [], False
        Recorder.runs.append(self)

    requires_logging_directory = True
    main_process_only = True

    def start(self):
        pass

    def store_init_configuration(self, values):
        self.config = values

    def log(self, values, step=None, **kw):
        self.logged.append((step, values))

    def finish(self):
        self.finished = True


def test_history_jsonl_holds_loss_lr_tokens_and_a_loss_plot(tmp_path, tiny_model_dir):
    assert _train(tmp_path, tiny_model_dir) == 0
    rows = [json.loads(x) for x in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    # 3 steps, warm-up int(0.1 * 3) = 0: cosine from 1e-3 after each step.
    for r in rows:
        assert r["lr"] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * r["step"] / 3)))
        assert math.isfinite(r["loss"]) and r["loss"] > 0
    assert 0 < rows[0]["tokens"] < rows[1]["tokens"] < rows[2]["tokens"]
    assert (tmp_path / "run" / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_missing_tracker_package_is_one_line_with_the_install_command(tmp_path, capsys):
    if tracking._installed("wandb"):
        pytest.skip("wandb is installed here")
    code = main(["-q", "train", "-o", str(tmp_path / "r"), "--set", "report_to=wandb"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "report_to=wandb needs the wandb package: pip install wandb" in err
    code = main(["-q", "train", "--set", "report_to=mlflow"])
    assert code == 2 and "unknown tracker 'mlflow'" in capsys.readouterr().err


def test_report_to_goes_through_accelerate_trackers(tmp_path, tiny_model_dir, monkeypatch):
    import accelerate.tracking as at

    monkeypatch.setitem(at.LOGGER_TYPE_TO_CLASS, "tensorboard", Recorder)
    monkeypatch.setattr(at, "_available_trackers", [at.LoggerType.TENSORBOARD])
    monkeypatch.setattr(tracking, "_installed", lambda name: name == "tensorboard")
    Recorder.runs = []
    assert _train(tmp_path, tiny_model_dir, "report_to=all") == 0
    (rec,) = Recorder.runs
    assert rec.run_name == "flexpaft" and rec.finished
    assert rec.config["optim/lr"] == 1e-3 and rec.config["report_to"] == "all"
    history = [json.loads(x) for x in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert [s for s, _ in rec.logged] == [1, 2, 3]
    assert [v["train/loss"] for _, v in rec.logged] == [r["loss"] for r in history]
