"""The report's tables: (header, rows) pairs built from ``build_report``'s dict, shared by the
Markdown, HTML and console renderings."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Table = tuple[list[str], list[list[str]]]

HOW_TO_READ = [
    ("Mean / Std", "accuracy averaged over the unseen test templates, and its standard deviation."),
    ("Min / Max", "accuracy under the worst / best test template."),
    ("Spread", "Max - Min (FormatSpread); lower means the wording matters less."),
    ("Top@t", "share of test templates with accuracy >= t (the PAFT paper's Top%)."),
    (
        "PDR",
        "Performance Drop Rate (PromptBench): mean over test templates of "
        "1 - acc / acc(reference template); lower is better, negative means better than it.",
    ),
    (
        "PSS",
        "PromptSensiScore (ProSA): per example, the share of template pairs that disagree on "
        "correctness, averaged over examples; 0 = every wording gives the same answers.",
    ),
    ("Cons", "consistency: share of examples answered correctly under every test template."),
    ("Adv", "mean accuracy under the adversarial templates (typos, casing, markers)."),
    ("Adv drop", "Mean - Adv: accuracy lost to adversarial perturbations."),
]

OUTPUT_LENGTH_NOTE = (
    "In generation mode the time per example is dominated by how many tokens each model "
    "generates before it stops, so speed differences between methods are an output-length "
    "effect, not a per-token speed-up: a model that answers with the letter alone is fast, one "
    "that rambles under an unfamiliar prompt is slow. Seconds per generated token should be "
    "about the same for methods that share a base model."
)


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


# (header, value getter, True if higher is better / False if lower is better)
Column = tuple[str, Callable[[dict[str, Any]], float | None], bool]


def _summary_columns(report: dict[str, Any]) -> list[Column]:
    methods = report["methods"]
    cols: list[Column] = [
        ("Mean", lambda m: m["mean"], True),
        ("Std", lambda m: m["std"], False),
        ("Min", lambda m: m["min"], True),
        ("Max", lambda m: m["max"], True),
        ("Spread", lambda m: m["spread"], False),
    ]
    for t in report["thresholds"]:
        cols.append((f"Top@{100 * t:g}", lambda m, t=t: m.get(f"top@{t:g}"), True))
    if any(m["pdr"] is not None for m in methods):
        cols.append(("PDR", lambda m: m["pdr"], False))
    cols += [
        ("PSS", lambda m: m["prompt_sensitivity"], False),
        ("Cons", lambda m: m["consistency"], True),
    ]
    if any(m["adversarial"] for m in methods):
        cols += [
            ("Adv", lambda m: m["adversarial"] and m["adversarial"]["mean"], True),
            ("Adv drop", lambda m: m["adversarial"] and m["adversarial"]["drop"], False),
        ]
    return cols


def how_to_read(report: dict[str, Any]) -> list[tuple[str, str]]:
    """The explanations of the summary table's columns that this report shows (PDR only with an
    own prompt or reference, Adv only with adversarial templates)."""
    shown = [h for h, _, _ in _summary_columns(report)]

    def present(name: str) -> bool:
        parts = [p.strip() for p in name.split("/")]
        return any(h == p or (p == "Top@t" and h.startswith("Top@")) for p in parts for h in shown)

    return [(name, text) for name, text in HOW_TO_READ if present(name)]


def summary_table(report: dict[str, Any], mark_best: bool = True) -> Table:
    """Methods x metrics, in percent with one decimal; the best value per column in bold."""
    cols = _summary_columns(report)
    methods = report["methods"]
    headers = ["Method"] + [h for h, _, _ in cols]
    cells: list[list[str]] = [[m["name"]] for m in methods]
    for _, get, higher_better in cols:
        values = [get(m) for m in methods]
        shown = [_pct(v) for v in values]
        known = [float(s) for s, v in zip(shown, values) if v is not None]
        # Compare the rounded numbers, so ties as printed are all marked.
        best = (max(known) if higher_better else min(known)) if known else None
        for row, s, v in zip(cells, shown, values):
            bold = mark_best and len(methods) > 1 and v is not None and float(s) == best
            row.append(f"**{s}**" if bold else s)
    return headers, cells


def generation_table(report: dict[str, Any]) -> Table | None:
    """Output length and time per method (generation mode only)."""
    gens = [(m["name"], m["generation"]) for m in report["methods"] if m["generation"]]
    if not gens:
        return None
    fastest = min(g["seconds_per_example"] for _, g in gens) or None
    headers = [
        "Method",
        "Answered (%)",
        "Generated tokens / example",
        "s / example",
        "ms / generated token",
        "Time vs fastest",
    ]
    rows = []
    for name, g in gens:
        per_token = g["seconds_per_generated_token"]
        rows.append(
            [
                name,
                _pct(g["answered"]),
                f"{g['generated_tokens_per_example']:.1f}",
                f"{g['seconds_per_example']:.3f}",
                "–" if per_token is None else f"{1000 * per_token:.1f}",
                "–" if fastest is None else f"{g['seconds_per_example'] / fastest:.2f}x",
            ]
        )
    return headers, rows


def markdown_lines(table: Table) -> list[str]:
    headers, rows = table
    esc = [[c.replace("|", "\\|") for c in r] for r in [headers, *rows]]
    lines = [
        "| " + " | ".join(esc[0]) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in esc[1:]]
    return lines


def overview(report: dict[str, Any]) -> str:
    return (
        f"{len(report['methods'])} methods, {len(report['templates'])} unseen test templates, "
        f"{report['examples']} examples per template, scoring: {', '.join(report['modes'])}."
    )


def reference_lines(report: dict[str, Any]) -> list[str]:
    return [
        f"- {m['name']}: {m['reference']}, accuracy {_pct(m['reference_accuracy'])}%"
        for m in report["methods"]
        if m["reference"]
    ]


def _ci(x: float | None, iv: list[float] | None) -> str:
    if x is None:
        return "–"
    if not iv or any(v != v for v in iv):  # NaN bounds: undefined interval
        return _pct(x)
    return f"{_pct(x)} [{_pct(iv[0])}, {_pct(iv[1])}]"


def _seeds(m: dict[str, Any], key: str) -> str:
    s = m.get("across_seeds")
    if not s:
        return ""
    return f" ({_pct(s[key]['mean'])} ± {_pct(s[key]['std'])} over {s[key]['seeds']} seeds)"


def interval_table(report: dict[str, Any]) -> Table | None:
    """Mean, std and worst template with 95% intervals, and the margin over the label prior."""
    if not any(m.get("intervals") for m in report["methods"]):
        return None
    headers = ["Method", "Mean [95% CI]", "Std [95% CI]", "Worst [95% CI]"]
    with_prior = report.get("majority_rate") is not None
    if with_prior:
        headers.append("Mean - majority [95% CI]")
    rows = []
    for m in report["methods"]:
        iv = m.get("intervals") or {}
        row = [
            m["name"],
            _ci(m["mean"], iv.get("mean")) + _seeds(m, "mean"),
            _ci(m["std"], iv.get("std")) + _seeds(m, "std"),
            _ci(m["min"], iv.get("min")) + _seeds(m, "min"),
        ]
        if with_prior:
            v = m.get("vs_majority")
            row.append("–" if not v else _diff(v, pct=True))
        rows.append(row)
    return headers, rows


def _diff(d: dict[str, Any], pct: bool = True) -> str:
    # A ratio whose denominator nearly vanishes in some replicates is unbounded: say so.
    f = _pct if pct else (lambda x: f"{x:.2f}" if x < 100 else ">100")
    verdict = "separated" if d["separated"] else "not separated"
    if d["low"] != d["low"]:  # NaN: undefined (a std of zero)
        return f"{f(d['value'])} (undefined)"
    sign = "+" if pct and d["value"] > 0 else ""
    return f"{sign}{f(d['value'])} [{f(d['low'])}, {f(d['high'])}] {verdict}"


def comparison_table(report: dict[str, Any]) -> Table | None:
    """Paired differences between methods on the same templates and examples."""
    comps = report.get("comparisons") or []
    if not comps:
        return None
    headers = ["A vs B", "Mean A - B", "Worst A - B", "Std A / B"]
    stds = {m["name"]: m.get("std") for m in report.get("methods") or []}
    rows = [
        [
            f"{c['a']} vs {c['b']}",
            _diff(c["mean_diff"]),
            _diff(c["min_diff"]),
            _std_ratio(c, stds),
        ]
        for c in comps
    ]
    return headers, rows


def _std_ratio(c: dict[str, Any], stds: dict[str, float | None]) -> str:
    """The std ratio's cell; B's std of 0 leaves it without a value (it printed ">100 (undefined)"
    when both methods scored every template alike)."""
    d = c["std_ratio"]
    if d["value"] == d["value"]:  # not NaN
        return _diff(d, pct=False)
    if stds.get(c["a"]) == 0:
        return "n/a (both stds 0)"
    return f"n/a ({c['b']}'s std is 0)"


def own_table(report: dict[str, Any]) -> Table | None:
    """Accuracy under the user's own prompt and the gap to the unseen templates' mean and worst
    (the wording tax), for the methods whose runs scored a reference template."""
    methods = [m for m in report["methods"] if m.get("reference_accuracy") is not None]
    if not methods:
        return None
    headers = ["Method", "Own prompt", "Own - mean unseen", "Own - worst unseen"]
    rows = []
    for m in methods:
        own = m.get("own_prompt")
        if own:
            rows.append(
                [
                    m["name"],
                    _ci(own["accuracy"], own["interval"]),
                    _diff(own["gap_mean"]),
                    _diff(own["gap_worst"]),
                ]
            )
        else:  # no intervals (--bootstrap 0, mismatched runs): the point values
            gaps = [m.get("own_gap_mean"), m.get("own_gap_worst")]
            rows.append([m["name"], _pct(m["reference_accuracy"]), *[_signed(g) for g in gaps]])
    return headers, rows


def _signed(x: float | None) -> str:
    return "–" if x is None else ("+" if x > 0 else "") + _pct(x)


def own_comparison_table(report: dict[str, Any]) -> Table | None:
    """Paired differences of accuracy under the own prompt between methods."""
    comps = report.get("own_comparisons") or []
    if not comps:
        return None
    return ["A vs B", "Own prompt A - B"], [
        [f"{c['a']} vs {c['b']}", _diff(c["diff"])] for c in comps
    ]


OWN_NOTE = (
    "Own prompt: accuracy under the user's own template (the run's reference template: the "
    "task's, or the one given as the reference/own template), with a 95% interval over examples. "
    "The gaps are own minus unseen: positive is accuracy given up on unseen wordings (the "
    "wording tax); they are paired, examples resampled alike for both sides, and templates too "
    "for the mean."
)


def own_section(report: dict[str, Any]) -> list[Table]:
    """The own-prompt tables present in ``report`` (none without reference evaluations)."""
    return [t for t in (own_table(report), own_comparison_table(report)) if t]


def interval_note(report: dict[str, Any]) -> str:
    b = report.get("bootstrap") or {}
    parts = [
        f"95% percentile intervals from {b.get('replicates', 0)} bootstrap replicates "
        "(mean and std: templates and examples resampled; worst template: examples resampled). "
        "Differences are paired (same resampled templates and examples for both methods); "
        "'not separated' means the interval includes no difference (0, or a std ratio of 1)."
    ]
    if report.get("majority_rate") is not None:
        parts.append(
            f"Always answering the most common gold answer scores "
            f"{_pct(report['majority_rate'])}% on these examples."
        )
    return " ".join(parts)


def console_text(report: dict[str, Any], summary: bool = True) -> str:
    """What ``flexpaft report`` (and each report of a study) prints of ``report``: the summary
    table (``summary=False`` under --quiet), then the 95% intervals and paired differences, then
    the tables under the user's own prompt, where the report has them."""
    parts = []
    if summary:
        parts.append("\n".join(markdown_lines(summary_table(report, mark_best=False))))
    ivt = interval_table(report)
    if ivt:
        parts.append("\n".join(["", *markdown_lines(ivt)]))
        cmp = comparison_table(report)
        if cmp:
            parts.append("\n".join(["", *markdown_lines(cmp)]))
        parts.append(interval_note(report))
    own = own_section(report)
    if own:
        parts.append("\nUnder the user's own prompt (%):")
        parts += ["\n".join(["", *markdown_lines(t)]) for t in own]
    return "\n".join(parts)
