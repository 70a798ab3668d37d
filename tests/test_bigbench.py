"""BIG-bench tasks from a local fake archive: extraction, caching, spec and records (no network)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from flexpaft.errors import FlexpaftError
from flexpaft.prompts.template import Template
from flexpaft.tasks import bigbench
from flexpaft.tasks.bigbench import (
    bigbench_records_path,
    bigbench_task,
    fetch_bigbench_task,
    load_bigbench_records,
)
from flexpaft.tasks.builtin import get_task
from flexpaft.tasks.spec import AnswerFormat

TOY = {
    "name": "toy",
    "description": "A toy task.",
    "task_prefix": "Is the statement {really} plausible?\n",
    "example_input_prefix": "\nStatement: ",
    "example_output_prefix": "\nPlausible/implausible? ",
    "examples": [
        {"input": "  Cats bark loudly. ", "target_scores": {"plausible": 0, "implausible": 1}},
        # Same option set in another order: labels must follow the fixed (first-seen) order.
        {"input": "Dogs bark.", "target_scores": {"implausible": 0, "plausible": 1}},
        {"input": "Fish swim.", "target_scores": {"plausible": 1.0, "implausible": 0.0}},
        {"input": "A generative example.", "target": "skipped"},
    ],
}
MIXED = {
    "description": "Options differ per example.",
    "examples": [
        {"input": "2 + 2 =", "target_scores": {"3": 0, "4": 1, "5": 0}},
        {"input": "Capital of France?", "target_scores": {"Paris": 1, "Rome": 0}},
    ],
}


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


@pytest.fixture
def archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "bigbench-1.0.0.tar.gz"
    root = "bigbench-1.0.0/bigbench/benchmark_tasks"
    with tarfile.open(path, "w:gz") as tf:
        _add(tf, f"{root}/README.md", b"not a task")
        _add(tf, f"{root}/toy/task.json", json.dumps(TOY).encode())
        _add(tf, f"{root}/toy/README.md", b"toy readme")
        _add(tf, f"{root}/mixed/sub/task.json", json.dumps(MIXED).encode())
        _add(tf, f"{root}/programmatic/task.py", b"print('no json here')")
    monkeypatch.setenv("FLEXPAFT_BIGBENCH_ARCHIVE", str(path))
    monkeypatch.setenv("FLEXPAFT_CACHE", str(tmp_path / "cache"))

    def no_pip(dest: Path) -> Path:
        raise AssertionError("pip must not run when FLEXPAFT_BIGBENCH_ARCHIVE is set")

    monkeypatch.setattr(bigbench, "_download_archive", no_pip)
    return path


def test_fetch_extracts_only_the_task_and_caches(archive: Path, tmp_path: Path, monkeypatch):
    path = fetch_bigbench_task("toy")
    assert path == tmp_path / "cache" / "bigbench" / "toy.json"
    assert json.loads(path.read_text(encoding="utf-8")) == TOY
    assert sorted(p.name for p in path.parent.iterdir()) == ["toy.json"]

    # A cached task must not touch the archive again.
    def fail(*args, **kwargs):
        raise AssertionError("archive read on a cached task")

    monkeypatch.setattr(bigbench, "_read_task_json", fail)
    archive.unlink()
    assert fetch_bigbench_task("bigbench:toy") == path


def test_explicit_cache_dir_and_subtask(archive: Path, tmp_path: Path):
    path = fetch_bigbench_task("mixed/sub", cache_dir=tmp_path / "elsewhere")
    assert path == tmp_path / "elsewhere" / "bigbench" / "mixed" / "sub.json"
    assert json.loads(path.read_text(encoding="utf-8")) == MIXED


@pytest.mark.parametrize("name", ["nosuch", "programmatic", "mixed"])
def test_missing_task_is_a_one_line_error(archive: Path, name: str):
    with pytest.raises(FlexpaftError, match=f"BIG-bench task '{name}' has no task.json") as e:
        fetch_bigbench_task(name)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["../etc/passwd", "a b", ""])
def test_bad_task_names(archive: Path, name: str):
    with pytest.raises(FlexpaftError, match="invalid BIG-bench task name"):
        fetch_bigbench_task(name)


def test_archive_env_pointing_nowhere(archive: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("FLEXPAFT_BIGBENCH_ARCHIVE", str(tmp_path / "missing.tar.gz"))
    with pytest.raises(FlexpaftError, match="not a file"):
        fetch_bigbench_task("toy")


def test_corrupt_archive(archive: Path):
    archive.write_bytes(b"this is not gzip")
    with pytest.raises(FlexpaftError, match="cannot read BIG-bench archive"):
        fetch_bigbench_task("toy")


def test_pip_failure_is_one_line(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("FLEXPAFT_BIGBENCH_ARCHIVE", raising=False)
    monkeypatch.setenv("FLEXPAFT_CACHE", str(tmp_path / "cache"))

    class Failed:
        returncode = 1
        stdout = "Looking in indexes: https://pypi.org/simple\n"
        stderr = "WARNING: retrying\nERROR: Could not find a version that satisfies bigbench\n"

    calls = []
    monkeypatch.setattr(bigbench.subprocess, "run", lambda cmd, **kw: calls.append(cmd) or Failed)
    with pytest.raises(FlexpaftError) as e:
        fetch_bigbench_task("sports_understanding")
    msg = str(e.value)
    assert "\n" not in msg
    assert "Could not find a version" in msg and "FLEXPAFT_BIGBENCH_ARCHIVE" in msg
    assert calls[0][1:4] == ["-m", "pip", "download"] and "bigbench==1.0.0" in calls[0]
    # The temporary download directory is cleaned up.
    assert list((tmp_path / "cache" / "bigbench").iterdir()) == []


def test_misspelled_task_is_refused_before_any_download(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("FLEXPAFT_BIGBENCH_ARCHIVE", raising=False)
    monkeypatch.setenv("FLEXPAFT_CACHE", str(tmp_path / "cache"))
    calls = []
    monkeypatch.setattr(bigbench.subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    with pytest.raises(FlexpaftError, match="did you mean 'entailed_polarity'"):
        fetch_bigbench_task("entailed_polarty")
    assert calls == []


def test_records_fixed_options(archive: Path):
    records = load_bigbench_records("toy")
    # The generative example has no target_scores and is dropped; inputs are stripped.
    assert records == [
        {"input": "Cats bark loudly.", "choices": ["plausible", "implausible"], "label": 1},
        {"input": "Dogs bark.", "choices": ["plausible", "implausible"], "label": 0},
        {"input": "Fish swim.", "choices": ["plausible", "implausible"], "label": 0},
    ]


def test_spec_with_fixed_options(archive: Path):
    spec = bigbench_task("toy")
    assert spec.name == "bigbench:toy"
    assert spec.fields == ("input",) and spec.required == ("input",)
    assert spec.fixed_options == ("plausible", "implausible")
    assert spec.label_words == ("plausible", "implausible")
    assert spec.default_format is AnswerFormat.LABEL_WORDS
    assert set(spec.formats) == set(AnswerFormat)
    assert spec.hf_path == ""
    examples = [spec.normalize(r, uid=str(i)) for i, r in enumerate(load_bigbench_records("toy"))]
    assert [e.gold for e in examples] == [1, 0, 0]
    assert examples[0].options == ["plausible", "implausible"]
    words = spec.answer_strings(examples[0], AnswerFormat.LABEL_WORDS)
    assert words == ["plausible", "implausible"]
    # Every default template is valid for its format and renders the task's own wording;
    # braces in BIG-bench's prefix are literal text, not slots.
    for fmt in spec.formats:
        t = Template(spec.templates[fmt.value], id=fmt.value).validate(spec, fmt)
        text = t.render(examples[0].fields)
        assert text.startswith("Is the statement {really} plausible?\nStatement: Cats bark loudly.")
        assert text.endswith("\nAnswer:")
    assert spec.templates["label_words"].endswith("Statement: {input}\nAnswer:")


def test_spec_with_per_example_options(archive: Path):
    spec = bigbench_task("mixed/sub")
    assert spec.fixed_options == () and spec.label_words == ()
    assert spec.default_format is AnswerFormat.OPTION_TEXT
    assert AnswerFormat.LABEL_WORDS not in spec.formats
    assert spec.description == "Options differ per example."
    records = load_bigbench_records("mixed/sub")
    assert records[0] == {"input": "2 + 2 =", "choices": ["3", "4", "5"], "label": 1}
    ex = spec.normalize(records[1])
    assert ex.options == ["Paris", "Rome"] and ex.gold == 0
    for fmt in spec.formats:
        Template(spec.templates[fmt.value], id=fmt.value).validate(spec, fmt)


def test_records_jsonl_is_cached_and_readable(archive: Path):
    path = bigbench_records_path("bigbench:toy")
    assert path.name == "toy.records.jsonl"
    lines = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]
    assert lines == load_bigbench_records("toy")
    mtime = path.stat().st_mtime_ns
    assert bigbench_records_path("toy") == path and path.stat().st_mtime_ns == mtime


def test_records_jsonl_through_load_examples(archive: Path):
    from flexpaft.tasks.data import load_examples

    spec = get_task("bigbench:toy")
    examples = load_examples(spec, source=str(bigbench_records_path("toy")))
    assert [e.gold for e in examples] == [1, 0, 0]
    assert examples[1].fields["input"] == "Dogs bark."


def test_task_without_multiple_choice_examples(archive: Path, tmp_path: Path):
    cached = tmp_path / "cache" / "bigbench" / "gen.json"
    cached.parent.mkdir(parents=True)
    cached.write_text(json.dumps({"examples": [{"input": "x", "target": "y"}]}), encoding="utf-8")
    with pytest.raises(FlexpaftError, match="no multiple-choice examples"):
        bigbench_task("gen")
