"""Check that training and the Flexora search run with 2 processes.

``accelerate launch`` on GPUs, ``torchrun`` on CPU processes.

On a machine without GPUs this uses 2 CPU processes (gloo backend), which exercises the same
code paths as multi-GPU DDP: the rank-sharded template stream, gradient all-reduce, alpha's
gradient averaged across ranks, main-process-only writes. It trains a tiny random Llama on
synthetic BoolQ-schema data twice, with 1 and with 2 processes, and checks that both adapters
load with plain PEFT. On GPUs pass --gpu to use ``accelerate launch --multi_gpu``.

    python benchmarks/ddp_check.py [--gpu] [--method lora|paft|flexora]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import boolq_rows, build_model, build_tokenizer, write_jsonl  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--method", default="flexora", choices=["lora", "paft", "flexora"])
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="flexpaft-ddp-"))
    tok = build_tokenizer()
    build_model(len(tok), layers=4).save_pretrained(tmp / "model")
    tok.save_pretrained(tmp / "model")
    data = write_jsonl(tmp / "boolq.jsonl", boolq_rows(64))
    prompts = write_jsonl(
        tmp / "p.jsonl",
        [
            {"template": "{passage}\nQ: {question}?\nA:"},
            {"template": "Q: {question}? {passage}\nAnswer:"},
        ],
    )
    results = {}
    for procs in (1, 2):
        out = tmp / f"run{procs}"
        if args.gpu:
            launch = [
                "accelerate",
                "launch",
                "--num_processes",
                str(procs),
                "--mixed_precision",
                "no",
            ]
            launch += ["--multi_gpu"] if procs > 1 else []
        else:
            # torchrun sets RANK/WORLD_SIZE; the trainer's Accelerator then uses gloo on CPU.
            launch = ["torchrun", "--standalone", "--nproc_per_node", str(procs)]
        cmd = launch + [
            "-m",
            "flexpaft.cli",
            "-q",
            "train",
            "--method",
            args.method,
            "-o",
            str(out),
            "--set",
            f"model.name={tmp / 'model'}",
            "--set",
            f"data.source={data}",
            "--set",
            "optim.batch_size=4",
            "--set",
            "optim.epochs=1",
            "--set",
            "flexora.val_examples=16",
            "--set",
            f"prompts.prompt_set={prompts}",
        ]
        t0 = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stdout[-2000:], proc.stderr[-4000:])
            return 1
        manifest = json.loads((out / "manifest.json").read_text())
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(tmp / "model"), str(out / "adapter")
        )
        results[procs] = {
            "seconds": round(time.time() - t0, 1),
            "steps": manifest["steps"],
            "world_size": manifest["world_size"],
            "tokens": manifest["tokens"],
            "layers": manifest["layers"],
        }
    print(json.dumps(results, indent=2))
    ok = results[2]["world_size"] == 2 and results[2]["steps"] * 2 >= results[1]["steps"] - 1
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
