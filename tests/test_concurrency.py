"""Two processes, one place: cache entries filled side by side, run directories held by one run.

The cache tests start real processes (a thread would share the pid that the guards key on) and
line them up on a barrier so that their writes overlap; before the guards, the second writer's
recovery deleted the first one's temporary directory under it (issue 21 item 4, issue 22 item 1).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import boolq_rows, write_jsonl

from flexpaft.cli import main

REPO = Path(__file__).resolve().parents[1]


def _python(code: str, *args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


# Waits until every writer has arrived, so that none finishes before the other starts.
BARRIER = """
import sys, time
from pathlib import Path
def barrier(tag):
    Path(sys.argv[1], tag + "-" + sys.argv[2]).touch()
    deadline = time.time() + 60
    while len(list(Path(sys.argv[1]).glob(tag + "-*"))) < 2 and time.time() < deadline:
        time.sleep(0.01)
"""


def _run_two(code: str, tmp_path: Path, timeout: float = 240) -> list[tuple[int, str]]:
    sync = tmp_path / "sync"
    sync.mkdir()
    procs = [_python(BARRIER + code, str(sync), str(i)) for i in range(2)]
    out = []
    for p in procs:
        _, err = p.communicate(timeout=timeout)
        out.append((p.returncode, err))
    return out


def test_two_processes_fill_one_cache_directory(tmp_path):
    """The atomic-directory layer alone (no lock): overlapping writers of one cache entry both
    succeed and the entry is one writer's complete copy."""
    target = tmp_path / "cache" / "models" / "m-bf16"
    code = f"""
from flexpaft.io import atomic_directory
with atomic_directory({str(target)!r}, keep_existing=True) as tmp:
    barrier("in")  # both are inside, each with its temporary directory made
    (tmp / "a.json").write_text("a" + sys.argv[2])
    time.sleep(0.3)
    (tmp / "b.json").write_text("b" + sys.argv[2])
"""
    results = _run_two(code, tmp_path)
    assert [rc for rc, _ in results] == [0, 0], [err[-1500:] for _, err in results]
    a, b = (target / "a.json").read_text(), (target / "b.json").read_text()
    assert a[1] == b[1]  # both files from the same writer
    assert sorted(p.name for p in target.parent.iterdir()) == ["m-bf16"]


def test_two_processes_dequantize_into_one_empty_cache(tmp_path, tiny_model_dir, monkeypatch):
    """The real dequantizer (dequantize_gguf -> _write_dequantized -> save_pretrained), twice
    at once into one empty cache, each loading what it was handed; the GGUF reader is replaced
    by the tiny model, and the second run starts writing while the first one is writing."""
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF" + bytes(range(256)) * 8)
    cache = tmp_path / "cache"
    code = f"""
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer
real_model, real_tok = AutoModelForCausalLM.from_pretrained, AutoTokenizer.from_pretrained

def tok(*a, **k):
    barrier("load")  # both runs found the entry missing before either writes
    return real_tok({str(tiny_model_dir)!r})

def model(*a, **k):
    m = real_model({str(tiny_model_dir)!r})
    if sys.argv[2] == "1":
        time.sleep(0.5)  # the second run starts writing while the first one is writing
    save = m.save_pretrained
    def slow_save(*a, **k):
        save(*a, **k)
        time.sleep(1.0)  # the other writer starts meanwhile
    m.save_pretrained = slow_save
    return m

AutoTokenizer.from_pretrained, AutoModelForCausalLM.from_pretrained = tok, model
from flexpaft.models import dequantize_gguf
path = dequantize_gguf(Path({str(gguf)!r}))
# Each run goes on to load what it was handed, as training does.
assert real_model(path).config.num_hidden_layers == 4
"""
    monkeypatch.setenv("FLEXPAFT_CACHE", str(cache))
    results = _run_two(code, tmp_path)
    assert [rc for rc, _ in results] == [0, 0], [err[-1500:] for _, err in results]
    (entry,) = [p for p in (cache / "models").iterdir()]
    assert entry.name.startswith("tiny-") and entry.name.endswith("-bf16")
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(entry)
    assert loaded.config.num_hidden_layers == 4
    assert json.loads((entry / "flexpaft_source.json").read_text()) == {"gguf": str(gguf)}


def test_recovery_spares_a_live_writers_temporary_directory(tmp_path):
    from flexpaft.io import _owner_tag, recover_directory

    host = _owner_tag().rpartition("-")[0]
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    try:
        live = tmp_path / f".checkpoint.{host}-{sleeper.pid}-abcd1234.tmp"
        dead = tmp_path / f".checkpoint.{host}-{gone.pid}-efgh5678.tmp"
        other_host = tmp_path / f".checkpoint.elsewhere-{gone.pid}-ijkl9012.tmp"
        legacy = tmp_path / ".checkpoint.mnop3456.tmp"  # written before owners were recorded
        for d in (live, dead, other_host, legacy):
            d.mkdir()
        recover_directory(tmp_path / "checkpoint")
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other_host.name])
    finally:
        sleeper.kill()
        sleeper.wait()


# ---- run directories -----------------------------------------------------------------------
HOLD = """
import sys
from flexpaft.locks import run_dir_lock
with run_dir_lock(sys.argv[1], "flexpaft train"):
    print("held", flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def holder(tmp_path):
    """Another process holding ``tmp_path / 'run'``; yields (directory, process)."""
    out = tmp_path / "run"
    p = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert p.stdout.readline().strip() == "held"
    yield out, p
    if p.poll() is None:
        p.kill()
    p.wait()


@pytest.fixture
def inputs(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "boolq.jsonl", boolq_rows(8))
    return [f"model.name={tiny_model_dir}", f"data.source={data}", "data.limit=4"]


def _sets(pairs):
    return [x for p in pairs for x in ("--set", p)]


COMMANDS = {
    "train": lambda out, inputs: ["train", "-o", str(out), *_sets(inputs)],
    "eval": lambda out, inputs: ["eval", "-o", str(out), *_sets(inputs)],
    "search": lambda out, inputs: ["search", "-o", str(out), *_sets([*inputs, "method=flexora"])],
    "study": lambda out, inputs: ["study", "--set", f"output_dir={out}"],
}


@pytest.mark.parametrize("verb", sorted(COMMANDS))
def test_a_second_run_into_a_held_directory_is_refused(holder, inputs, verb, capsys):
    out, p = holder
    before = sorted(x.name for x in out.iterdir())
    assert main(["-q", *COMMANDS[verb](out, inputs)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("flexpaft: error: ")
    assert f"{out} is in use by another flexpaft run (flexpaft train, pid {p.pid}" in err
    assert sorted(x.name for x in out.iterdir()) == before  # nothing touched


def test_a_held_directory_is_free_once_its_holder_dies(holder):
    from flexpaft.locks import LOCK_NAME, run_dir_lock

    out, p = holder
    os.kill(p.pid, signal.SIGKILL)  # no cleanup runs: the lock file stays, the flock goes
    p.wait()
    assert (out / LOCK_NAME).exists()
    with run_dir_lock(out, "flexpaft eval"):
        info = json.loads((out / LOCK_NAME).read_text())
        assert info["pid"] == os.getpid() and info["command"] == "flexpaft eval"
    assert not (out / LOCK_NAME).exists()


def test_the_lock_is_reentrant_in_one_process_and_tidy(tmp_path):
    from flexpaft.locks import run_dir_lock

    out = tmp_path / "new"
    with run_dir_lock(out, "flexpaft study"):
        with run_dir_lock(out, "flexpaft train"):
            assert out.is_dir()
    assert not out.exists()  # created for the run and left empty: removed again


def test_waiting_for_a_cache_entry_lock(tmp_path):
    """A second filler of a cache entry waits for the first, then holds the entry itself."""
    from flexpaft.locks import cache_entry_lock

    entry = tmp_path / "models" / "m"
    code = f"""
from flexpaft.locks import cache_entry_lock
with cache_entry_lock({str(entry)!r}):
    print("held", flush=True)
    time.sleep(1.0)
    Path({str(entry)!r}).mkdir()
"""
    p = _python("import time\nfrom pathlib import Path\n" + code)
    assert p.stdout.readline().strip() == "held"
    with cache_entry_lock(entry):
        assert entry.is_dir()  # the first holder had finished before this one got in
    p.communicate(timeout=60)
    assert p.returncode == 0
    assert sorted(x.name for x in entry.parent.iterdir()) == ["m"]
