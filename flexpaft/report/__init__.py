"""Robustness reports: several eval runs side by side over the same unseen templates."""

from flexpaft.report.render import per_template_csv, render_html, render_markdown
from flexpaft.report.robustness import build_report, load_run, method_metrics, parse_thresholds
from flexpaft.report.tables import generation_table, summary_table
from flexpaft.report.write import Report, write_report

__all__ = [
    "Report",
    "build_report",
    "generation_table",
    "load_run",
    "method_metrics",
    "parse_thresholds",
    "per_template_csv",
    "render_html",
    "render_markdown",
    "summary_table",
    "write_report",
]
