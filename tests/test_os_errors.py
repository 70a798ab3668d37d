"""The operating system says no, and the other ways a command ends (issue 22 items 2 and 7).

Each case runs through ``flexpaft.cli.main`` and must end in one ``flexpaft: error:`` line naming
the path and the cause, exit 2 (130 for Ctrl-C), no traceback, with the last good state in
place. Faults the test machine cannot produce (a full disk, a read-only mount; tests run as
root, so permissions do not stop them) are injected where the write happens, as the OS would
raise them: an OSError with the errno and no file name, as ``write``/``fsync`` raise it.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import boolq_rows, write_jsonl
from test_bigbench import archive  # noqa: F401  (fixture: a toy BIG-bench archive)

from flexpaft.cli import main

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = ["{passage}\nQuestion: {question}?\nAnswer:", "Passage: {passage}\nQ: {question}?\nA:"]


def one_line(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith("flexpaft: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, err
    return err


def enospc_on_fsync(monkeypatch) -> None:
    """The disk fills up: data written to a file never reaches it (fsync fails)."""

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("flexpaft.io.os.fsync", full)


@pytest.fixture
def inputs(tmp_path, tiny_model_dir) -> list[str]:
    data = write_jsonl(tmp_path / "boolq.jsonl", boolq_rows(12))
    return [f"model.name={tiny_model_dir}", f"data.source={data}", "data.max_length=64"]


def sets(*pairs: str) -> list[str]:
    return [x for p in pairs for x in ("--set", p)]


def tmp_leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*.tmp"))


# ---- a full disk ---------------------------------------------------------------------------
def test_full_disk_during_train_keeps_the_last_checkpoint_and_resume_finishes(
    tmp_path, inputs, monkeypatch, capsys
):
    from flexpaft.training import checkpoint

    out = tmp_path / "run"
    args = ["-q", "train", "-o", str(out)]
    args += sets(*inputs, "optim.max_steps=3", "checkpoint_every=1", "optim.num_workers=0")
    real, calls = checkpoint.save_states, []

    def fills_up(directory, states):
        calls.append(directory)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(directory, states)

    monkeypatch.setattr(checkpoint, "save_states", fills_up)
    assert main(args) == 2
    one_line(capsys, f"{out / 'checkpoint'}: no space left on the device", "are kept")
    state = json.loads((out / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 1  # the first save, intact
    assert tmp_leftovers(out) == [] and not (out / "manifest.json").exists()

    monkeypatch.setattr(checkpoint, "save_states", real)  # space freed: resume
    assert main(args) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["steps"] == 3


def test_full_disk_during_eval_keeps_the_previous_results(tmp_path, inputs, monkeypatch, capsys):
    out = tmp_path / "ev"
    args = ["-q", "eval", "-o", str(out), *sets(*inputs, "data.limit=4")]
    assert main(args) == 0
    before = (out / "results.json").read_bytes()
    capsys.readouterr()
    enospc_on_fsync(monkeypatch)
    assert main(args) == 2
    one_line(capsys, f"{out / 'results.json'}: no space left on the device")
    assert (out / "results.json").read_bytes() == before
    assert tmp_leftovers(out) == []


def test_full_disk_during_prompts_convert_keeps_the_old_file(tmp_path, monkeypatch, capsys):
    src = write_jsonl(tmp_path / "p.jsonl", [{"template": t} for t in TEMPLATES])
    dst = tmp_path / "p.txt"
    dst.write_text("the old file\n")
    enospc_on_fsync(monkeypatch)
    assert main(["prompts", "convert", str(src), str(dst)]) == 2
    one_line(capsys, f"{dst}: no space left on the device")
    assert dst.read_text() == "the old file\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl", "p.txt"]


# ---- the cache -----------------------------------------------------------------------------
def test_cache_that_is_a_file(tmp_path, inputs, monkeypatch, capsys):
    cache = tmp_path / "cache-file"
    cache.write_text("not a directory")
    monkeypatch.setenv("FLEXPAFT_CACHE", str(cache))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + bytes(64))
    args = ["-q", "train", "-o", str(tmp_path / "run"), *sets(*inputs, f"model.name={gguf}")]
    assert main(args) == 2
    one_line(capsys, f"FLEXPAFT_CACHE {cache} is a file, not a directory")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "code, cause",
    [(errno.EROFS, "the file system is read-only"), (errno.EACCES, "permission denied")],
)
def test_cache_that_cannot_be_written(archive, tmp_path, monkeypatch, capsys, code, cause):  # noqa: F811
    """A read-only or forbidden cache (injected: root ignores permissions) while a BIG-bench
    task is fetched into it."""
    cache = Path(os.environ["FLEXPAFT_CACHE"])

    def refuse(*a, dir=None, **k):
        raise OSError(code, os.strerror(code), str(Path(dir) / "toy.json"))

    monkeypatch.setattr("flexpaft.io.tempfile.mkstemp", refuse)
    out = tmp_path / "gen"
    assert main(["prompts", "generate", "--task", "bigbench:toy", "--out", str(out)]) == 2
    one_line(capsys, str(cache / "bigbench" / "toy.json"), cause, "FLEXPAFT_CACHE=")


# ---- names and places ----------------------------------------------------------------------
@pytest.mark.parametrize("verb", ["train", "eval"])
def test_an_output_name_too_long(tmp_path, inputs, capsys, verb):
    out = tmp_path / ("x" * 300)
    assert main(["-q", verb, "-o", str(out), *sets(*inputs)]) == 2
    one_line(capsys, "file name too long")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["boolq.jsonl"]


def test_llm_reply_cache_that_is_a_directory(tmp_path, capsys):
    cache = tmp_path / "replies"
    cache.mkdir()
    args = ["prompts", "generate", "--task", "boolq", "--out", str(tmp_path / "g")]
    assert main([*args, "--n", "20", "--cache", str(cache)]) == 2
    one_line(capsys, f"reply cache (--cache) {cache} is a directory")
    assert not (tmp_path / "g").exists()


def test_appends_on_a_full_disk_name_their_file(tmp_path, monkeypatch):
    """The LLM reply cache and eval's partial results append outside the atomic writers."""
    from flexpaft.evaluation.evaluator import TemplateResult
    from flexpaft.evaluation.run import PartialResults
    from flexpaft.prompts.generate.llm import ReplyCache

    enospc_on_fsync(monkeypatch)
    cache = ReplyCache(tmp_path / "replies.jsonl")
    row = {"generator": "g", "strategy": "zero_shot", "index": 0, "prompt_sha": "x"}
    with pytest.raises(OSError) as e:
        cache.put(row, "reply")
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "replies.jsonl")

    class FullFile(io.StringIO):
        def flush(self):  # the buffered line reaches the disk here, and does not fit
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("flexpaft.evaluation.run.open", lambda *a, **k: FullFile(), raising=False)
    partial = PartialResults(tmp_path / "partial.jsonl", "key")
    result = TemplateResult(id="t", text="{q}", accuracy=1.0, n=1, correct=[1], predictions=[0])
    with pytest.raises(OSError) as e:
        partial.add(result)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "partial.jsonl")


def test_safetensors_io_errors_become_os_errors_naming_the_path(tmp_path):
    import shutil

    import torch
    from safetensors.torch import save_file

    from flexpaft.io import atomic_directory

    target = tmp_path / "adapter"
    with pytest.raises(OSError) as e:
        with atomic_directory(target) as tmp:
            shutil.rmtree(tmp)  # the directory vanishes under the writer
            save_file({"w": torch.zeros(2)}, str(tmp / "adapter_model.safetensors"))
    assert e.value.errno == errno.ENOENT and e.value.filename == str(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_stray_os_or_safetensors_error_is_still_one_line(monkeypatch, capsys):
    from safetensors import SafetensorError

    import flexpaft.commands.prompts as prompts_cmd

    for exc, needle in [
        (SafetensorError("Error while serializing: I/O error: No space left (os error 28)"), "I/O"),
        (OSError(errno.EISDIR, "Is a directory", "/some/where"), "/some/where: it is a directory"),
        (OSError(errno.EEXIST, "File exists", "/a", None, "/b"), "/a -> /b: a file is in the way"),
    ]:

        def boom(args, exc=exc):
            raise exc

        monkeypatch.setattr(prompts_cmd, "run", boom)
        assert main(["prompts", "convert", "a.jsonl", "b.txt"]) == 2
        one_line(capsys, needle)


def test_torch_save_write_failure_is_an_os_error():
    from flexpaft.io import write_error

    e = RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file data/0: file write failed")  # fmt: skip
    named = write_error(e, "/run/checkpoint")
    assert isinstance(named, OSError) and named.filename == "/run/checkpoint"


# ---- eval protects finished results (issue 22 item 7) --------------------------------------
def test_eval_refuses_to_replace_another_evaluations_results(tmp_path, inputs, capsys):
    out = tmp_path / "ev"
    base = ["-q", "eval", "-o", str(out)]
    assert main([*base, *sets(*inputs, "data.limit=4")]) == 0
    before = (out / "results.json").read_bytes()
    capsys.readouterr()
    assert main([*base, *sets(*inputs, "data.limit=3")]) == 2
    one_line(capsys, f"{out} holds finished results of a different evaluation", "--overwrite")
    assert (out / "results.json").read_bytes() == before
    # The same evaluation again is fine (it is what a rerun after a crash does) ...
    assert main([*base, *sets(*inputs, "data.limit=4")]) == 0
    # ... and --overwrite replaces the other one's results.
    assert main([*base, "--overwrite", *sets(*inputs, "data.limit=3")]) == 0
    assert json.loads((out / "results.json").read_text())["config"]["data"]["limit"] == 3


# ---- Ctrl-C, a closed pipe, late option checks ---------------------------------------------
@pytest.mark.parametrize("where", ["build_parser", "_setup_logging"])
def test_ctrl_c_during_start_up_is_one_line_and_130(monkeypatch, capsys, where):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(f"flexpaft.cli.{where}", interrupted)
    try:
        status = main(["prompts", "convert", "a.jsonl", "b.txt"])
    except KeyboardInterrupt:  # re-raised, it would stop pytest itself
        pytest.fail("KeyboardInterrupt escaped main()")
    assert status == 130
    err = capsys.readouterr().err
    assert err == "flexpaft: interrupted (finished outputs and checkpoints are kept)\n"


def test_a_closed_pipe_ends_quietly(tmp_path):
    """``flexpaft prompts validate ... | head -1``: the reader leaves after one line."""
    rows = [{"template": f"{{question}} {{nope}} version {i}: {'x' * 60}"} for i in range(4000)]  # fmt: skip
    src = write_jsonl(tmp_path / "many.jsonl", rows)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "flexpaft.cli", "prompts", "validate", str(src), "--task", "boolq"]
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout.readline().startswith(b"INVALID")
    p.stdout.close()  # as head does after its line
    err = p.stderr.read().decode()
    p.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert p.returncode == 1


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--timeout", "-1", "--timeout must be a positive number, got -1.0"),
        ("--timeout", "nan", "--timeout must be a positive number"),
        ("--rpm", "0", "--rpm must be a positive number"),
        ("--max-retry-wait", "-5", "--max-retry-wait must be 0 or more"),
    ],
)
def test_generate_option_values_are_checked_first(tmp_path, capsys, flag, value, message):
    out = tmp_path / "g"
    assert main(["prompts", "generate", "--task", "boolq", "--out", str(out), flag, value]) == 2
    one_line(capsys, message)
    assert not out.exists()


def test_retry_after_is_capped_and_announced(caplog):
    from flexpaft.prompts.generate.clients import MAX_RETRY_WAIT, OpenAIChat, _Retryable

    sleeps: list[float] = []
    chat = OpenAIChat("m", "http://127.0.0.1:9/v1", sleep=sleeps.append, max_retry_after=7)
    replies = iter([_Retryable("HTTP 429 slow down", retry_after=99999.0), ["ok"]])

    def post(body):
        r = next(replies)
        if isinstance(r, Exception):
            raise r
        return r

    chat._post = post
    with caplog.at_level(logging.WARNING, logger="flexpaft.prompts.generate.clients"):
        assert chat.complete([{"role": "user", "content": "hi"}]) == ["ok"]
    assert sleeps == [7]
    (record,) = caplog.records
    line = record.getMessage()
    assert "HTTP 429 slow down" in line and "retry 1 of 5 in 7.0 s" in line
    assert "asked for 99999 s" in line and "\n" not in line
    assert OpenAIChat("m").max_retry_after == MAX_RETRY_WAIT == 60
