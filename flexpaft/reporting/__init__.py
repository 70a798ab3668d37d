"""Robustness reports: several eval runs side by side over the same unseen templates."""

from flexpaft.reporting.render import per_template_csv, render_html, render_markdown
from flexpaft.reporting.robustness import build_report, load_run, method_metrics, parse_thresholds
from flexpaft.reporting.tables import generation_table, summary_table
from flexpaft.reporting.write import Report, write_report

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
