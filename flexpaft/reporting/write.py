"""``flexpaft.reporting``: several evaluations side by side, written as JSON, Markdown, CSV, a plot
and optionally HTML. The command line (``flexpaft report``) is a thin layer over ``write_report``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flexpaft.errors import FlexpaftError
from flexpaft.io import atomic_write_json, atomic_write_text
from flexpaft.reporting.render import per_template_csv, render_html, render_markdown
from flexpaft.reporting.robustness import (
    DEFAULT_THRESHOLDS,
    build_report,
    load_run,
    parse_thresholds,
)


@dataclass
class Report:
    """A written report: ``data`` is report.json's content (methods, metrics, intervals,
    paired comparisons, warnings), ``files`` the names written into ``output_dir``."""

    output_dir: Path
    data: dict[str, Any]
    files: list[str] = field(default_factory=list)

    @property
    def markdown(self) -> Path:
        return self.output_dir / "report.md"

    @property
    def warnings(self) -> list[str]:
        return list(self.data.get("warnings", []))

    def method(self, name: str) -> dict[str, Any]:
        """The row of method ``name`` (its metrics: mean, std, min, max, intervals...)."""
        for m in self.data["methods"]:
            if m["name"] == name:
                return m
        known = ", ".join(m["name"] for m in self.data["methods"])
        raise KeyError(f"no method {name!r} in this report (known: {known})")


def _run_args(runs: Mapping[str, str | Path] | Iterable[str | tuple[str, str | Path]]) -> list[str]:
    """Runs as the command line spells them: ``NAME=PATH`` (or a bare path)."""
    if isinstance(runs, Mapping):
        return [f"{name}={Path(path)}" for name, path in runs.items()]
    out = []
    for r in runs:
        out.append(f"{r[0]}={Path(r[1])}" if isinstance(r, tuple) else str(r))
    return out


def write_report(
    runs: Mapping[str, str | Path] | Iterable[str | tuple[str, str | Path]],
    output_dir: str | Path = "runs/report",
    *,
    thresholds: Sequence[str | float] | None = None,
    reference_template: str | None = None,
    allow_mismatch: bool = False,
    html: bool = False,
    bootstrap: int = 2000,
    bootstrap_seed: int = 0,
    seeds: bool = False,
) -> Report:
    """Compare evaluation runs (``flexpaft eval`` output directories or results.json files).

    ``runs``: ``{"lora": "runs/eval/lora", "paft": "runs/eval/paft"}``, or a list of
    ``(name, path)`` pairs where one name may repeat: with ``seeds=True`` runs sharing a name are
    seeds of one method (one row, averaged). Every row is scored on the same examples and
    templates (checked; ``allow_mismatch`` to report anyway). Writes report.json, report.md,
    per_template.csv, per_template.png (with matplotlib) and, with ``html``, report.html.
    """
    from flexpaft.reporting.plots import plot_per_template
    from flexpaft.validate import check_writable_dir

    check_writable_dir(output_dir)
    parsed = parse_thresholds(thresholds or DEFAULT_THRESHOLDS)
    if bootstrap < 0:
        raise FlexpaftError(f"--bootstrap must be 0 (off) or a positive count, not {bootstrap}")
    loaded = [load_run(r) for r in _run_args(runs)]
    report = build_report(
        [(name, data) for name, data, _ in loaded],
        parsed,
        reference_template,
        allow_mismatch,
        n_boot=bootstrap,
        seed=bootstrap_seed,
        group_seeds=seeds,
    )
    for method, (_, _, source) in zip(report["methods"], loaded):
        method["source"] = source
    report["versions"] = []
    for _, data, _ in loaded:  # the distinct stacks the runs were evaluated with
        v = data.get("versions")
        if isinstance(v, dict) and v not in report["versions"]:
            report["versions"].append(v)
    out = Path(output_dir)
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", render_markdown(report))
    atomic_write_text(out / "per_template.csv", per_template_csv(report))
    png = plot_per_template(report, out / "per_template.png")
    written = ["report.json", "report.md", "per_template.csv"] + (
        ["per_template.png"] if png else []
    )
    if html:
        atomic_write_text(out / "report.html", render_html(report, png))
        written.append("report.html")
    return Report(out, report, written)
