"""The tuning study as people look at it, and the choice of its objective.

The report shows every trial with its objective, negative ELBO, reconstruction and KL terms and
active units; the objective over beta x latent size; and disentanglement against the negative
ELBO for every trial with the chosen one marked, so that a user sees what the chosen beta costs
in reconstruction.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from components.backends.base import TuneResult

AUTO = "auto"
COLUMNS = ("val_neg_elbo", "val_recon", "val_kl", "val_active_units", "step")


def resolve_objective(objective_metric: str, data_dir: str | Path) -> str:
    """`auto` -> val_mig when the validation split has factor columns, else udr; any other name
    is checked against the known objectives (before any trial starts)."""
    from kubevae.training.selection import default_objective, objective

    if objective_metric in ("", AUTO):
        return default_objective(has_factors(data_dir))
    spec = objective(objective_metric)
    if spec.needs_factors and not has_factors(data_dir):
        raise ValueError(f"objective_metric: {objective_metric} needs factor columns (factor_*) in "
                         f"the validation split of {data_dir}; use udr, val_neg_elbo or val_iwae_nll")
    return objective_metric


def with_collapse_rule(result: TuneResult) -> TuneResult:
    """When every completed trial collapsed, choose the least-collapsed one and mark the study
    (kubevae.training.selection: why, and what the pipeline does next). Applied to the results
    of both backends: Katib, too, would otherwise pick one of several equal -1 scores."""
    import dataclasses

    from kubevae.training.selection import all_collapsed, least_collapsed

    complete = [t for t in result.trials if t.state == "COMPLETE"]
    if not all_collapsed([t.metrics for t in complete]):
        return dataclasses.replace(result, all_collapsed=False)
    chosen = complete[least_collapsed([t.metrics for t in complete])]
    return dataclasses.replace(result, best_params=dict(chosen.params), best_trial=chosen.number,
                               best_value=float(chosen.value if chosen.value is not None
                                                else result.best_value),
                               all_collapsed=True)


def has_factors(data_dir: str | Path) -> bool:
    from kubevae.data.dataset import load_splits

    splits = load_splits(data_dir)
    val = splits.get("val") or splits.get("train")
    return bool(val is not None and val.factor_names)


def study_report(result: TuneResult) -> str:
    """A self-contained HTML page (works as a KFP HTML visualization)."""
    from kubevae.evaluation.report import objective_vs_elbo_png, tuning_objective_png

    study = result.to_dict()
    pictures = [(tuning_objective_png(study), "objective over beta x latent size"),
                (objective_vs_elbo_png(study), "objective against negative ELBO, chosen trial marked")]
    images = "".join(f'<img src="data:image/png;base64,{base64.b64encode(png).decode()}" '
                     f'alt="{alt}">' for png, alt in pictures if png)
    params = sorted({k for t in result.trials for k in t.params})
    name = html.escape(result.objective_metric)
    rows = "".join(
        ("<tr style='font-weight:bold'>" if t.number == result.best_trial else "<tr>") +
        f"<td>{t.number}</td><td>{t.state}</td>" +
        "".join(f"<td>{_fmt(t.params.get(k))}</td>" for k in params) +
        f"<td>{_fmt(t.value)}</td>" +
        "".join(f"<td>{_fmt(t.metrics.get(c))}</td>" for c in COLUMNS) + "</tr>"
        for t in result.trials)
    header = "".join(f"<th>{html.escape(k)}</th>" for k in (*params, result.objective_metric, *COLUMNS))
    best = ", ".join(f"{k} = {_fmt(v)}" for k, v in result.best_params.items())
    warning = ""
    if result.all_collapsed:
        from kubevae.training.selection import ALL_COLLAPSED_ADVICE

        warning = ("<p style='border:2px solid #c00;padding:.5em;color:#900'><b>All trials "
                   f"collapsed.</b> {html.escape(ALL_COLLAPSED_ADVICE[0].upper() + ALL_COLLAPSED_ADVICE[1:])}</p>")
    how = "Least collapsed, not chosen on the objective" if result.all_collapsed else "Chosen"
    return (f"<html><body><h1>Tuning study</h1>{warning}<p>{how} (trial {result.best_trial}, bold): "
            f"{html.escape(best)} ({name} = {_fmt(result.best_value)}, {result.direction}d; "
            f"algorithm {html.escape(result.algorithm or '?')})</p>"
            + (images or "<p>No trial completed.</p>") +
            f"<table border=1><tr><th>trial</th><th>state</th>{header}</tr>{rows}</table>"
            "</body></html>")


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else html.escape(str(value))
