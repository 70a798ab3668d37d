"""Does the chat template change accuracy or robustness? Raw prompts against the tokenizer's chat
template on the embedded SmolLM2-135M-Instruct, everything through the ``flexpaft`` CLI.

Base model: BoolQ label words, T templates x N examples, ``model.chat_template=none`` and ``auto``.
With ``--train-steps``: a short LoRA run each way (trained and evaluated under the same choice)
on examples disjoint from the evaluation ones.

Intervals: 95% paired bootstrap over examples (the templates are kept, so the interval is about
these templates on new examples); a difference whose interval includes zero is "not separated".

  python benchmarks/chat_template.py --prompts /tmp/boolq_prompts/test.jsonl --templates 6 \
      --examples 100 --train-steps 30
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import early_threads, shared_dir  # noqa: E402

THREADS = early_threads()

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from flexpaft.cli import main as flexpaft  # noqa: E402
from flexpaft.evaluation import metrics  # noqa: E402
from flexpaft.prompts import PromptSet  # noqa: E402


def run(args: list[str]) -> None:
    rc = flexpaft(["-q", *args])
    if rc:
        sys.exit(f"flexpaft {' '.join(args)} exited {rc}")


def sets(pairs: list[str]) -> list[str]:
    return sum((["--set", s] for s in pairs), [])


def correct_matrix(results: Path) -> np.ndarray:
    d = json.loads((results / "results.json").read_text())
    return np.array([t["correct"] for t in d["per_template"]], dtype=np.float64)


def stats(c: np.ndarray) -> dict[str, float]:
    acc = c.mean(axis=1)
    return {
        "mean": float(acc.mean()),
        "spread": float(acc.max() - acc.min()),
        "std": float(acc.std()),
        "sensitivity": metrics.prompt_sensitivity(c),
    }


def paired_bootstrap(a: np.ndarray, b: np.ndarray, reps: int, seed: int = 0) -> dict:
    """95% intervals of stats(b) - stats(a), resampling examples (columns) jointly."""
    rng = np.random.default_rng(seed)
    n = a.shape[1]
    diffs: dict[str, list[float]] = {k: [] for k in stats(a)}
    for _ in range(reps):
        idx = rng.integers(0, n, n)
        sa, sb = stats(a[:, idx]), stats(b[:, idx])
        for k in diffs:
            diffs[k].append(sb[k] - sa[k])
    point_a, point_b = stats(a), stats(b)
    out = {}
    for k, v in diffs.items():
        lo, hi = np.percentile(v, [2.5, 97.5])
        out[k] = {
            "none": point_a[k],
            "auto": point_b[k],
            "diff": point_b[k] - point_a[k],
            "ci95": [float(lo), float(hi)],
            "separated": bool(lo > 0 or hi < 0),
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--prompts", required=True, help="BoolQ label-word prompt set")
    p.add_argument("--templates", type=int, default=6)
    p.add_argument("--examples", type=int, default=100)
    p.add_argument("--max-field-chars", type=int, default=400)
    p.add_argument("--train-steps", type=int, default=0, help="0 = base model only")
    p.add_argument("--train-examples", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument("--out", default="runs/chat_template")
    p.add_argument("--threads", type=int, default=THREADS)
    a = p.parse_args()

    out = Path(a.out)
    templates = PromptSet.load(a.prompts)
    templates.templates = templates.templates[: a.templates]
    templates.save(out / "templates.jsonl")
    data = [
        f"data.source={shared_dir() / 'data' / 'boolq.jsonl'}",
        "data.task=boolq",
        f"data.max_field_chars={a.max_field_chars}",
    ]
    evaluation = data + [
        f"data.limit={a.examples}",
        f"prompts.prompt_set={out / 'templates.jsonl'}",
    ]
    report: dict = {"args": vars(a), "threads": THREADS}
    started = time.time()
    runs = {}

    def evaluate(name: str, chat: str, adapter: str = "") -> np.ndarray:
        # A finished evaluation is reused: the base runs survive an interrupted LoRA stage.
        if not (out / name / "results.json").is_file():
            extra = ["--adapter", adapter] if adapter else []
            run(
                [
                    "eval",
                    *sets(evaluation + [f"model.chat_template={chat}"]),
                    *extra,
                    "-o",
                    str(out / name),
                ]
            )
        return correct_matrix(out / name)

    def save() -> None:
        for model in ("base", "lora"):
            if (model, "auto") in runs:
                report[model] = paired_bootstrap(
                    runs[(model, "none")], runs[(model, "auto")], a.bootstrap
                )
        report["seconds"] = round(time.time() - started, 1)
        (out / "chat_template.json").write_text(json.dumps(report, indent=2))

    for chat in ("none", "auto"):
        runs[("base", chat)] = evaluate(f"base-{chat}", chat)
    save()
    if a.train_steps:
        for chat in ("none", "auto"):
            train = data + [
                f"data.skip={a.examples}",
                f"data.limit={a.train_examples}",
                f"optim.max_steps={a.train_steps}",
                f"optim.batch_size={a.batch_size}",
                "optim.lr=5e-4",
                "data.max_length=256",
                "checkpoint_every=0",
                f"model.chat_template={chat}",
            ]
            if not (out / f"lora-{chat}" / "adapter").is_dir():
                run(["train", *sets(train), "-o", str(out / f"lora-{chat}")])
            adapter = str(out / f"lora-{chat}" / "adapter")
            runs[("lora", chat)] = evaluate(f"lora-{chat}-eval", chat, adapter)
        save()
    for model in ("base", "lora"):
        for k, v in report.get(model, {}).items():
            lo, hi = v["ci95"]
            print(
                f"{model:4s} {k:11s} none {v['none']:.3f}  auto {v['auto']:.3f}  "
                f"diff {v['diff']:+.3f} [{lo:+.3f}, {hi:+.3f}]"
                f"{'' if v['separated'] else '  not separated'}"
            )
    print(f"{report['seconds']} s; {out / 'chat_template.json'}")


if __name__ == "__main__":
    main()
