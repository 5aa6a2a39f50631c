"""The tuning study as people look at it: every trial, and the objective over beta x latent size."""

from __future__ import annotations

import base64
import html
import io
from typing import Any


def objective_plot_png(summary: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [t for t in summary["trials"] if t["value"] is not None and t["state"] == "COMPLETE"]
    fig, ax = plt.subplots(figsize=(6, 4))
    if done:
        points = ax.scatter([t["params"]["beta"] for t in done],
                            [t["params"]["latent_dim"] for t in done],
                            c=[t["value"] for t in done], cmap="viridis_r", s=80)
        fig.colorbar(points, label=summary["objective_metric"] + " (lower is better)")
    best = summary["best_params"]
    ax.scatter([best["beta"]], [best["latent_dim"]], marker="*", s=300, c="red", label="best")
    ax.set_xscale("log")
    ax.set_xlabel("beta")
    ax.set_ylabel("latent size")
    ax.set_title("Objective over beta x latent size")
    ax.legend()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def study_report(summary: dict[str, Any]) -> str:
    """A self-contained HTML page (works as a KFP HTML visualization)."""
    image = base64.b64encode(objective_plot_png(summary)).decode()
    params = sorted({k for t in summary["trials"] for k in t["params"]})
    rows = "".join(
        "<tr>" + f"<td>{t['number']}</td><td>{t['state']}</td>" +
        "".join(f"<td>{_fmt(t['params'].get(k))}</td>" for k in params) +
        f"<td>{_fmt(t['value'])}</td></tr>" for t in summary["trials"])
    header = "".join(f"<th>{html.escape(k)}</th>" for k in params)
    best = ", ".join(f"{k} = {_fmt(v)}" for k, v in summary["best_params"].items())
    return (f"<html><body><h1>Tuning study</h1><p>Best: {html.escape(best)} "
            f"({html.escape(summary['objective_metric'])} = {_fmt(summary['best_value'])})</p>"
            f'<img src="data:image/png;base64,{image}" alt="objective over beta x latent size">'
            f"<table border=1><tr><th>trial</th><th>state</th>{header}"
            f"<th>{html.escape(summary['objective_metric'])}</th></tr>{rows}</table></body></html>")


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else html.escape(str(value))
