"""A Flexora study's selection against the *mean* of its random draws, and other pooled rows.

    python experiments/pooled_baselines.py runs/study/flexora_snips [--set unseen] [--rows a,b]

The study's report pairs flexora with each random draw separately; the question "does the search
beat choosing blocks at random?" is about the random baseline as a whole. Here every row's seeds
are averaged example by example (as the report does), the random draws are averaged into one row
``random (mean of draws)``, and flexora (and flexora+paft) are compared with every row by the
report's own paired bootstrap (flexpaft.reporting.intervals.compare: templates and examples
resampled with the same indices), and under the user's own prompt where the runs scored it
(intervals.compare_own: the same examples resampled). No model is run. Prints Markdown.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

from flexpaft.reporting import intervals


def correct_matrix(results: Path, template_ids: list[str] | None) -> tuple[np.ndarray, list[str]]:
    data = json.loads(results.read_text(encoding="utf-8"))
    per = {t["id"]: t["correct"] for t in data["per_template"]}
    ids = template_ids or sorted(per)
    return np.array([per[t] for t in ids], dtype=np.float64), ids


def own_vector(results: Path) -> np.ndarray | None:
    """Per-example correctness under the own prompt (the run's reference), if it was scored."""
    ref = json.loads(results.read_text(encoding="utf-8")).get("reference") or {}
    per = ref.get("per_template") or []
    return np.array(per[0]["correct"], dtype=np.float64) if per else None


def load_own(study: Path, test_set: str) -> dict[str, np.ndarray]:
    """Own-prompt correctness per row, seeds averaged example by example (rows where every seed
    scored it)."""
    runs: dict[str, list[np.ndarray | None]] = {}
    for d in sorted((study / "eval" / test_set).iterdir()):
        m = re.fullmatch(r"(.+)-s(\d+)", d.name)
        if m and (d / "results.json").is_file():
            runs.setdefault(m.group(1), []).append(own_vector(d / "results.json"))
    rows = {k: np.mean(v, axis=0) for k, v in runs.items() if all(x is not None for x in v)}
    draws = [v for k, v in rows.items() if k.startswith("random-d")]
    if draws:
        rows["random (mean of draws)"] = np.mean(draws, axis=0)
    return rows


def seeds_of(study: Path, test_set: str) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for d in sorted((study / "eval" / test_set).iterdir()):
        m = re.fullmatch(r"(.+)-s(\d+)", d.name)
        if m and (d / "results.json").is_file():
            out.setdefault(m.group(1), []).append(int(m.group(2)))
    return out


def load_rows(study: Path, test_set: str) -> dict[str, np.ndarray]:
    runs: dict[str, list[Path]] = {}
    for d in sorted((study / "eval" / test_set).iterdir()):
        m = re.fullmatch(r"(.+)-s(\d+)", d.name)
        if m and (d / "results.json").is_file():
            runs.setdefault(m.group(1), []).append(d / "results.json")
    ids = None
    rows = {}
    for name, paths in runs.items():
        mats = []
        for p in paths:
            mat, ids = correct_matrix(p, ids)
            mats.append(mat)
        rows[name] = np.mean(mats, axis=0)  # seeds averaged example by example
    draws = [v for k, v in rows.items() if k.startswith("random-d")]
    if draws:
        rows["random (mean of draws)"] = np.mean(draws, axis=0)
    return rows


def _fmt(d: dict) -> str:
    verdict = "separated" if d["separated"] else "not separated"
    return f"{100 * d['value']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}] {verdict}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", type=Path)
    ap.add_argument("--set", default="unseen", dest="test_set")
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument(
        "--rows",
        default="flexora,flexora+paft",
        help="comma list of the rows compared with every other row (study variants included)",
    )
    args = ap.parse_args()
    rows = load_rows(args.study, args.test_set)
    own = load_own(args.study, args.test_set)
    seeds = seeds_of(args.study, args.test_set)
    n_t, n_x = next(iter(rows.values())).shape
    rs = intervals.Resamples.draw(n_t, n_x, args.bootstrap, seed=0)
    stats = {k: intervals.replicate_stats(v, rs) for k, v in rows.items()}
    print(f"{n_t} templates x {n_x} examples; seeds averaged; {args.bootstrap} replicates\n")
    print("| Row | seeds | Mean | Worst | Own prompt |\n|---|---|---:|---:|---:|")
    for k, v in rows.items():
        acc = v.mean(axis=1)
        o = f"{100 * own[k].mean():.1f}" if k in own else "-"
        s = ",".join(map(str, seeds.get(k, []))) or "draws"
        print(f"| {k} | {s} | {100 * acc.mean():.1f} | {100 * acc.min():.1f} | {o} |")
    for a in args.rows.split(","):
        if a not in rows:
            continue
        print(f"\n| {a} vs | Mean {a} - B | Worst {a} - B | Own prompt {a} - B |")
        print("|---|---:|---:|---:|")
        for b in rows:
            if b != a:
                c = intervals.compare(rows[a], rows[b], rs, stats[a], stats[b])
                o = (
                    _fmt(intervals.compare_own(own[a], own[b], rs))
                    if a in own and b in own
                    else "-"
                )
                print(f"| {b} | {_fmt(c['mean_diff'])} | {_fmt(c['min_diff'])} | {o} |")


if __name__ == "__main__":
    main()
