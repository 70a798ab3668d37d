"""Summary table of a GPU suite run: reads the parts' JSONs that benchmarks/gpu_suite.sh wrote.

    python benchmarks/gpu_summary.py OUT_DIR [MORE_DIRS ...]

A part found in several folders is taken from the first (the suite passes this call's $OUT
first, then the results an earlier call on the same machine left behind). Prints two Markdown
tables: every part's status, then the figures issue 25 asks for (flexpaft / plain-loop ratios,
MFU at 4N FLOPs per token, peak memory, evaluation pairs/s, the demo's time).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

# Dense bf16 peak of the cards the suite runs on, for MFU (../shared/docs/GPU.md's convention).
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0}
ORDER = [
    "train_8b",
    "train_1b",
    "train_135m",
    "memory_8b_4bit",
    "memory_8b_8x512",
    "options_135m",
    "eval_135m",
    "demo_gpu",
]


def load_parts(dirs: list[Path]) -> dict[str, dict[str, Any]]:
    """Every part's JSON by part name; ``earlier`` is set on those taken from a folder after the
    first (an earlier call's results, which the summary marks as such)."""
    parts: dict[str, dict[str, Any]] = {}
    for i, d in enumerate(dirs):
        for path in sorted(d.glob("*.json")) if d.is_dir() else []:
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError) as e:
                data = {"part": path.stem, "status": "unreadable", "reason": str(e)}
            if isinstance(data, dict) and "part" in data and str(data["part"]) not in parts:
                parts[str(data["part"])] = {**data, "earlier": i > 0}
    rank = {n: i for i, n in enumerate(ORDER)}
    return dict(sorted(parts.items(), key=lambda kv: (rank.get(kv[0], len(ORDER)), kv[0])))


def peak_flops(machine: dict[str, Any]) -> float | None:
    gpu = str(machine.get("gpu") or "")
    return next((t * 1e12 for k, t in PEAK_TFLOPS.items() if k in gpu), None)


def fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


Row = list[Any]


def train_rows(name: str, res: dict[str, Any]) -> list[Row]:
    """flexpaft vs the plain loop: case a (same batches) and, where run, b/c (real data)."""
    rows: list[Row] = []
    flops = peak_flops(res.get("machine", {}))
    n = res.get("parameters")
    a = {r["variant"]: r for r in res.get("cases", {}).get("a_random_tokens", [])}
    if a:
        flex, plain = a.get("flexpaft step"), a.get("plain loop")
        shape = f"{res.get('args', {}).get('batch')} x {res.get('args', {}).get('seq_len')}"
        for label, r in (("flexpaft", flex), ("plain loop", plain)):
            if r is None:
                continue
            tps = r["real_tokens_per_s"]
            mfu = 4 * n * tps / flops if flops and n else None
            peak = r["peak_mib"] / 1024 if r.get("peak_mib") is not None else None
            ratio = tps / plain["real_tokens_per_s"] if label == "flexpaft" and plain else None
            rows.append(
                [name, f"{res.get('model')} {shape} random tokens, {label}", tps, ratio, mfu, peak]
            )
    bc = res.get("cases", {}).get("bc_task_data", [])
    for r in bc[1:]:  # the first is the reference the others are set against
        task = res.get("args", {}).get("task", "task data")
        rows.append(
            [
                name,
                f"{res.get('model')} {task}: {r['variant']} vs {bc[0]['variant']}",
                r["real_tokens_per_s"],
                r["vs_ref"],
                None,
                r["peak_mib"] / 1024 if r.get("peak_mib") is not None else None,
            ]
        )
    return rows


def memory_rows(name: str, stem: str, res: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    args = res.get("args", {})
    shape = f"{args.get('model')} {args.get('batch')} x {args.get('seq_len')}"
    plain = next(
        (r for r in res.get("rows", []) if r["variant"] == "plain" and "step_seconds" in r), None
    )
    for r in res.get("rows", []):
        what = f"{shape} {r['variant']}"
        if "step_seconds" not in r:
            why = f"skipped: {r['skipped']}" if "skipped" in r else f"failed: {r.get('failed')}"
            rows.append([name, f"{what} ({why})", None, None, None, None])
            continue
        ratio = (
            r["tokens_per_second"] / plain["tokens_per_second"]
            if plain and r is not plain
            else None
        )
        if r.get("first_step_seconds") is not None and r["variant"] != "plain":
            what += f" (first step {r['first_step_seconds']} s)"
        rows.append([name, what, r["tokens_per_second"], ratio, r.get("mfu"), r.get("peak_gib")])
    return rows


def eval_rows(name: str, res: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    by_case: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for r in res.get("rows", []):
        by_case.setdefault((r["model"], r["case"]), {})[r["variant"]] = r
    tot = {"flexpaft": [0, 0.0], "naive": [0, 0.0]}
    for (model, case), variants in by_case.items():
        naive = variants.get("naive per-choice")
        flex = next(
            (v for k, v in variants.items() if k.startswith("flexpaft") and "per-option" not in k),
            None,
        )
        if flex is None:
            continue
        rows.append(
            [
                name,
                f"{model} {case} ({flex['options']} options), {flex['variant']} pairs/s, "
                f"{flex['agreement_with_naive_pct']}% agree",
                flex["pairs_per_s"],
                flex["speedup_vs_naive"],
                None,
                flex["peak_gpu_mib"] / 1024 if flex.get("peak_gpu_mib") is not None else None,
            ]
        )
        tot["flexpaft"][0] += flex["pairs"]
        tot["flexpaft"][1] += flex["seconds_median"]
        if naive:
            tot["naive"][0] += naive["pairs"]
            tot["naive"][1] += naive["seconds_median"]
    if tot["flexpaft"][1] > 0:
        rate = tot["flexpaft"][0] / tot["flexpaft"][1]
        naive_rate = tot["naive"][0] / tot["naive"][1] if tot["naive"][1] > 0 else None
        rows.append(
            [
                name,
                "all cases: flexpaft pairs/s (total pairs / total seconds) vs naive",
                rate,
                rate / naive_rate if naive_rate else None,
                None,
                None,
            ]
        )
    return rows


def figure_rows(name: str, part: dict[str, Any]) -> list[Row]:
    if part.get("status") == "skipped" and not part.get("results"):
        return []  # never ran: the status table says why
    results = part.get("results") or {}
    if name == "demo_gpu":
        total = next(
            (ln for ln in reversed(part.get("log_tail") or []) if ln.startswith("total time:")), ""
        )
        what = "flexpaft demo, wall seconds of the whole command"
        return [
            [name, what + (f" ({total})" if total else ""), part.get("seconds"), None, None, None]
        ]
    rows: list[Row] = []
    for stem, res in results.items():
        if not isinstance(res, dict) or "unreadable" in res:
            rows.append([name, f"{stem}: unreadable result", None, None, None, None])
        elif "cases" in res and "parameters" in res:
            rows += train_rows(name, res)
        elif "rows" in res and "variants" in res.get("args", {}):
            rows += memory_rows(name, stem, res)
        elif "rows" in res:
            rows += eval_rows(name, res)
    return rows


def table(headers: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def summary(dirs: list[Path]) -> str:
    parts = load_parts(dirs)
    if not parts:
        return f"no part results in {', '.join(map(str, dirs))}"
    machine = next(
        (
            res.get("machine")
            for p in parts.values()
            for res in (p.get("results") or {}).values()
            if isinstance(res, dict) and res.get("machine")
        ),
        {},
    )
    status_rows = []
    for name, p in parts.items():
        note = p.get("reason") or ""
        if p.get("status") not in ("ok", "skipped") and not note:
            note = next((ln for ln in reversed(p.get("log_tail") or []) if ln.strip()), "")
        if p.get("earlier"):
            note = "(an earlier call's result) " + note
        status_rows.append(
            [
                name,
                str(p.get("status")),
                fmt(p.get("seconds"), 1),
                fmt(p.get("timeout_s")),
                str(p.get("size", "")),
                note[:160],
            ]
        )
    fig_rows = []
    for name, p in parts.items():
        for r in figure_rows(name, p):
            fig_rows.append([r[0], r[1], fmt(r[2], 1), fmt(r[3], 2), fmt(r[4], 3), fmt(r[5], 2)])
    where = machine.get("gpu") or machine.get("cpu") or "unknown machine"
    lines = [
        f"GPU suite: {where}; torch {machine.get('torch', '?')}, transformers "
        f"{machine.get('transformers', '?')}, peft {machine.get('peft', '?')}; "
        f"{machine.get('date', '?')}",
        "",
        table(["part", "status", "seconds", "timeout s", "size", "note"], status_rows),
        "",
        table(
            [
                "part",
                "measure",
                "tokens/s (pairs/s; demo: s)",
                "x reference",
                "MFU",
                "peak GiB",
            ],
            fig_rows,
        ),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    print(summary([Path(a) for a in args]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
