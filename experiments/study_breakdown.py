"""Where each model fails: accuracy by template structure, and how often it says the majority label.

    python experiments/study_breakdown.py runs/study/boolq [--set unseen --set external]

Reads a ``flexpaft study`` directory's eval results (no model is run) and prints Markdown:
per test set and structure group (question before passage or after; ends with an answer cue
or not; one line or several), each method's mean accuracy, and each method's share of
"yes"-like answers (option 0), which shows whether it learned the task or the label prior.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

CUE = re.compile(r"(:|answer is|answer\s*\(.*\)\s*:?|a:|output:?)\s*$", re.IGNORECASE)


def structure(text: str) -> dict[str, bool]:
    q, p = text.find("{question}"), text.find("{passage}")
    return {
        "question first": 0 <= q < p,
        "ends with a cue": bool(CUE.search(text.strip())),
        "one line": "\n" not in text,
    }


def load(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def breakdown(study: Path, test_set: str) -> list[str]:
    runs = sorted(
        p for p in (study / "eval" / test_set).iterdir() if (p / "results.json").is_file()
    )
    order = {"base": 0, "lora": 1, "topaccuracy": 2, "paft": 3}
    runs.sort(key=lambda p: (order.get(p.name.split("-s")[0], 9), p.name))
    data = {p.name: load(p) for p in runs}
    first = next(iter(data.values()))
    feats = {t["id"]: structure(t["text"]) for t in first["per_template"]}
    groups: dict[str, list[str]] = {"all": list(feats)}
    for key in ("question first", "ends with a cue", "one line"):
        groups[key] = [tid for tid, f in feats.items() if f[key]]
        groups[f"not {key}"] = [tid for tid, f in feats.items() if not f[key]]
    names = list(data)
    lines = [
        f"### {test_set}: accuracy (%) by template structure",
        "",
        "| templates | n | " + " | ".join(names) + " |",
        "|---|---:|" + "---:|" * len(names),
    ]
    for g, tids in groups.items():
        if not tids:
            continue
        row = []
        for name in names:
            acc = {t["id"]: t["accuracy"] for t in data[name]["per_template"]}
            row.append(f"{100 * np.mean([acc[t] for t in tids]):.1f}")
        lines.append(f"| {g} | {len(tids)} | " + " | ".join(row) + " |")
    lines += ["", "| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    yes = []
    for name in names:
        preds = np.concatenate([t["predictions"] for t in data[name]["per_template"]])
        yes.append(f"{100 * np.mean(preds == 0):.1f}")
    lines.append("| answers option 0 ('yes'), % of pairs | " + " | ".join(yes) + " |")
    gold = first.get("gold")
    if gold is not None:
        lines.append(
            f"\nGold 'yes' share of these examples: {100 * np.mean(np.array(gold) == 0):.1f}%"
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", type=Path)
    ap.add_argument("--set", dest="sets", action="append", help="test set (default: all)")
    args = ap.parse_args()
    sets = args.sets or sorted(p.name for p in (args.study / "eval").iterdir() if p.is_dir())
    for s in sets:
        print("\n".join(breakdown(args.study, s)) + "\n")


if __name__ == "__main__":
    main()
