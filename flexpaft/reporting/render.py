"""A report as Markdown, self-contained HTML (with the per-template plot inline) and CSV."""

from __future__ import annotations

import base64
import csv
import html
import io
from pathlib import Path
from typing import Any

from flexpaft.reporting.tables import (
    OUTPUT_LENGTH_NOTE,
    OWN_NOTE,
    Table,
    comparison_table,
    generation_table,
    how_to_read,
    interval_note,
    interval_table,
    markdown_lines,
    overview,
    own_section,
    reference_lines,
    summary_table,
)


def render_markdown(report: dict[str, Any]) -> str:
    """The whole report as Markdown; tables are ready to paste into a paper."""
    out = [f"# Robustness report: {report['task']} ({report['format']})", "", overview(report), ""]
    for w in report["warnings"]:
        out.append(f"> **Warning:** {w}")
    if report["warnings"]:
        out.append("")
    out += ["## Accuracy across unseen templates (%)", "", *markdown_lines(summary_table(report))]
    out += ["", "Best value per column in bold.", ""]
    ivt = interval_table(report)
    if ivt:
        out += ["## With 95% intervals (%)", "", *markdown_lines(ivt), ""]
        cmp = comparison_table(report)
        if cmp:
            out += ["## Paired differences", "", *markdown_lines(cmp), ""]
        out += [interval_note(report), ""]
    own = own_section(report)
    if own:
        out += ["## Under the user's own prompt (%)", ""]
        for t in own:
            out += [*markdown_lines(t), ""]
        out += [OWN_NOTE, ""]
    refs = reference_lines(report)
    if refs:
        out += ["Reference template for PDR:", "", *refs, ""]
    out += ["### How to read", ""]
    out += [f"- **{name}**: {text}" for name, text in how_to_read(report)]
    gen = generation_table(report)
    if gen:
        out += ["", "## Generation cost: an output-length effect", "", OUTPUT_LENGTH_NOTE, ""]
        out += markdown_lines(gen)
    made = versions_line(report)
    if made:
        out += ["", made]
    return "\n".join(out) + "\n"


def versions_line(report: dict[str, Any]) -> str:
    """What the evaluations ran with (results.json's versions; older results have none)."""
    seen = report.get("versions") or []
    if not seen:
        return ""
    text = "; ".join(", ".join(f"{k} {v}" for k, v in sorted(v.items())) for v in seen)
    return (
        f"Evaluated with {text}." if len(seen) == 1 else f"Evaluated with mixed versions: {text}."
    )


def _html_table(table: Table) -> str:
    headers, rows = table

    def cell(tag: str, text: str) -> str:
        bold = text.startswith("**") and text.endswith("**")
        text = html.escape(text.strip("*") if bold else text)
        return f"<{tag}>{'<b>' + text + '</b>' if bold else text}</{tag}>"

    head = "<tr>" + "".join(cell("th", h) for h in headers) + "</tr>"
    body = "".join("<tr>" + "".join(cell("td", c) for c in r) + "</tr>" for r in rows)
    return f"<table>{head}{body}</table>"


def render_html(report: dict[str, Any], png: Path | None = None) -> str:
    """A self-contained page: the tables, definitions and the plot as an inline PNG."""
    esc = html.escape
    parts = [
        f"<h1>Robustness report: {esc(report['task'])} ({esc(report['format'])})</h1>",
        f"<p>{esc(overview(report))}</p>",
        *[f"<p class='warn'>Warning: {esc(w)}</p>" for w in report["warnings"]],
        "<h2>Accuracy across unseen templates (%)</h2>",
        _html_table(summary_table(report)),
        "<p>Best value per column in bold.</p>",
    ]
    ivt = interval_table(report)
    if ivt:
        parts += ["<h2>With 95% intervals (%)</h2>", _html_table(ivt)]
        cmp = comparison_table(report)
        if cmp:
            parts += ["<h2>Paired differences</h2>", _html_table(cmp)]
        parts.append(f"<p>{esc(interval_note(report))}</p>")
    own = own_section(report)
    if own:
        parts += ["<h2>Under the user's own prompt (%)</h2>", *[_html_table(t) for t in own]]
        parts.append(f"<p>{esc(OWN_NOTE)}</p>")
    refs = reference_lines(report)
    if refs:
        items = "".join(f"<li>{esc(r[2:])}</li>" for r in refs)
        parts.append(f"<p>Reference template for PDR:</p><ul>{items}</ul>")
    if png is not None and png.is_file():
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        parts.append(f"<img alt='per-template accuracy' src='data:image/png;base64,{data}'>")
    items = "".join(f"<li><b>{esc(n)}</b>: {esc(t)}</li>" for n, t in how_to_read(report))
    parts.append(f"<h3>How to read</h3><ul>{items}</ul>")
    gen = generation_table(report)
    if gen:
        parts += [
            "<h2>Generation cost: an output-length effect</h2>",
            f"<p>{esc(OUTPUT_LENGTH_NOTE)}</p>",
            _html_table(gen),
        ]
    style = (
        "body{font-family:sans-serif;max-width:70em;margin:2em auto}"
        "table{border-collapse:collapse;margin:1em 0}"
        "th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}"
        "th:first-child,td:first-child{text-align:left}.warn{color:#a40}img{max-width:100%}"
    )
    title = esc(f"flexpaft report: {report['task']}")
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n"
    )


def per_template_csv(report: dict[str, Any]) -> str:
    """Template id x method accuracy matrix (empty cell: the method lacks that template)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["template", *[m["name"] for m in report["methods"]]])
    for tid in report["templates"]:
        row = [m["per_template"].get(tid) for m in report["methods"]]
        writer.writerow([tid, *["" if a is None else f"{a:.6g}" for a in row]])
    return buf.getvalue()
