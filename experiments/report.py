"""The study's report: DIR/report.md, DIR/figures/*.png and DIR/report.html, from the analysis results.

The stages, one module each:
    summary.build_summary   one seed's analysis results -> its numbers (None where not computed)
    aggregate.aggregate     the seeds' numbers -> mean ± std, basins, the cells chosen on validation
    verdicts.findings       the paper's claims, each with a verdict and its tolerance
    figures.write_figures   the matplotlib figures
    markdown.render_markdown  report.md (and the shared number formats fmt_pct, fmt_num)
The summary is returned encoded by landscape.core.jsonable.to_jsonable (a computed nan as "nan",
"not available" as null); the caller writes it to DIR/summary.json with write_json_atomically.
Every file is written under a temporary name and renamed into place (experiments.files), so a
failed write leaves the previous file whole and raises LandscapeFault.
"""
from __future__ import annotations

import os
from typing import Any

from landscape.core.jsonable import to_jsonable

from .aggregate import aggregate
from .figures import write_figures
from .files import write_json_atomically, write_text_atomically
from .markdown import fmt_num, fmt_pct, render_markdown
from .summary import build_summary
from .verdicts import findings


def write_report(prep: Any, per_seed: list[tuple[Any, dict[str, Any]]], out_dir: str,
                 timings: dict[str, Any], store_dir: str | None = None) -> dict[str, Any]:
    """Figures and report.md into `out_dir` from a prepared study's analysis results, one
    (plan, results) per seed, and report.html (the interactive view of the store `store_dir`)
    when analysis.report_html; returns the JSON-ready summary (per-seed numbers, findings and
    figure paths included)."""
    seeds = [build_summary(prep, results, plan) for plan, results in per_seed]
    for s in seeds:
        s.pop("timings", None)
    summary = aggregate(seeds, prep.target.has_val)
    summary["findings"] = findings(summary)
    summary["timings"] = dict(timings)
    figures = write_figures(summary, per_seed[0][1], os.path.join(out_dir, "figures"))
    summary["figures"] = [os.path.relpath(p, out_dir) for p in figures.values()]
    encoded = to_jsonable(summary)
    write_text_atomically(os.path.join(out_dir, "report.md"), render_markdown(encoded, figures))
    if store_dir is not None and prep.cfg["analysis"].get("report_html"):
        from landscape.view import view  # plotly only when the page is built

        view(store_dir, out=os.path.join(out_dir, "report.html"))
        encoded["report_html"] = "report.html"
    return encoded


__all__ = ["write_report", "write_json_atomically", "build_summary", "aggregate", "findings", "render_markdown",
           "fmt_pct", "fmt_num"]
