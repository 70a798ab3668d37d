"""Robustness reports: several eval runs side by side over the same unseen templates."""

from flexpaft.report.report_cmd import (
    generation_table,
    per_template_csv,
    render_html,
    render_markdown,
    summary_table,
)
from flexpaft.report.robustness import build_report, load_run, method_metrics, parse_thresholds

__all__ = [
    "build_report",
    "generation_table",
    "load_run",
    "method_metrics",
    "parse_thresholds",
    "per_template_csv",
    "render_html",
    "render_markdown",
    "summary_table",
]
