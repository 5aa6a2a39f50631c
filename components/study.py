"""The tuning study as people look at it: every trial, and the objective over beta x latent size."""

from __future__ import annotations

import base64
import html
from typing import Any


def study_report(summary: dict[str, Any]) -> str:
    """A self-contained HTML page (works as a KFP HTML visualization)."""
    from kubevae.evaluation.report import tuning_objective_png

    png = tuning_objective_png(summary)
    image = base64.b64encode(png).decode() if png else ""
    params = sorted({k for t in summary["trials"] for k in t["params"]})
    rows = "".join(
        "<tr>" + f"<td>{t['number']}</td><td>{t['state']}</td>" +
        "".join(f"<td>{_fmt(t['params'].get(k))}</td>" for k in params) +
        f"<td>{_fmt(t['value'])}</td></tr>" for t in summary["trials"])
    header = "".join(f"<th>{html.escape(k)}</th>" for k in params)
    best = ", ".join(f"{k} = {_fmt(v)}" for k, v in summary["best_params"].items())
    return (f"<html><body><h1>Tuning study</h1><p>Best: {html.escape(best)} "
            f"({html.escape(summary['objective_metric'])} = {_fmt(summary['best_value'])})</p>"
            + (f'<img src="data:image/png;base64,{image}" alt="objective over beta x latent size">'
               if image else "<p>No trial completed.</p>") +
            f"<table border=1><tr><th>trial</th><th>state</th>{header}"
            f"<th>{html.escape(summary['objective_metric'])}</th></tr>{rows}</table></body></html>")


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else html.escape(str(value))
