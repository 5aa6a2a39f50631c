"""The tuning study as people look at it, and the choice of its objective.

The report shows, for every trial, beta and latent size, its objective with its interval, the
rate (KL), distortion (reconstruction), active units and PSNR; the objective against beta with
the intervals; and the rate against the distortion, so that a user sees what the chosen beta
costs in reconstruction. When collapse or noise makes the choice meaningless, it says so first.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from kubevae.study import Study, Trial

AUTO = "auto"
# (metric-line name, column title) of what every trial shows beside its objective.
COLUMNS = (("val_kl", "rate (KL)"), ("val_recon", "distortion (recon)"),
           ("val_active_units", "active units"), ("val_psnr", "PSNR dB"),
           ("val_neg_elbo", "neg. ELBO"), ("step", "step"))


def resolve_objective(objective_metric: str, data_dir: str | Path) -> str:
    """`auto` -> val_mig when the validation split has factor columns, else udr; any other name
    is checked against the known objectives (before any trial starts)."""
    from kubevae.study import default_objective, objective

    if objective_metric in ("", AUTO):
        return default_objective(has_factors(data_dir))
    spec = objective(objective_metric)
    if spec.needs_factors and not has_factors(data_dir):
        raise ValueError(f"objective_metric: {objective_metric} needs factor columns (factor_*) in "
                         f"the validation split of {data_dir}; use auto, udr, val_neg_elbo or "
                         "val_iwae_nll")
    return objective_metric


def has_factors(data_dir: str | Path) -> bool:
    from kubevae.data.dataset import load_splits

    splits = load_splits(data_dir)
    val = splits.get("val") or splits.get("train")
    return bool(val is not None and val.factor_names)


def objective_text(trial: Trial) -> str:
    """The objective with its interval, e.g. "0.0607 [0.052, 0.070]"."""
    if trial.value is None:
        return ""
    text = f"{trial.value:.4g}"
    if trial.interval is not None:
        text += f" {trial.interval}"
    elif trial.collapsed:
        text += " (collapsed)"
    return text


def study_report(study: Study) -> str:
    """A self-contained HTML page (works as a KFP HTML visualization)."""
    from kubevae.evaluation.report import rate_distortion_png, tuning_objective_png

    pictures = [(tuning_objective_png(study), f"{study.objective_metric} against beta, with intervals"),
                (rate_distortion_png(study), "rate against distortion, chosen trial marked")]
    images = "".join(f'<img src="data:image/png;base64,{base64.b64encode(png).decode()}" '
                     f'alt="{alt}">' for png, alt in pictures if png)
    params = sorted({k for t in study.trials for k in t.params})
    name = html.escape(study.objective_metric)
    rows = "".join(
        ("<tr style='font-weight:bold'>" if t.number == study.best_trial else "<tr>") +
        f"<td>{t.number}</td><td>{t.state}</td>" +
        "".join(f"<td>{_fmt(t.params.get(k))}</td>" for k in params) +
        f"<td>{html.escape(objective_text(t))}</td>" +
        "".join(f"<td>{_fmt(t.metrics.get(c))}</td>" for c, _ in COLUMNS) + "</tr>"
        for t in study.trials)
    header = "".join(f"<th>{html.escape(k)}</th>" for k in
                     (*params, f"{study.objective_metric} [interval]", *(title for _, title in COLUMNS)))
    best = ", ".join(f"{k} = {_fmt(v)}" for k, v in study.best_params.items())
    warning = ""
    verdict = study.verdict()
    if verdict:
        title = "All trials collapsed." if study.all_collapsed else "The choice is weak."
        warning = ("<p style='border:2px solid #c00;padding:.5em;color:#900'>"
                   f"<b>{title}</b> {html.escape(verdict)}</p>")
    how = "Least collapsed, not chosen on the objective" if study.all_collapsed else "Chosen"
    method = study.objective.interval
    intervals = (f"<p>Intervals: {html.escape(method)}.</p>" if method
                 else "<p>This objective reports no interval.</p>")
    return (f"<html><body><h1>Tuning study</h1>{warning}<p>{how} (trial {study.best_trial}, bold): "
            f"{html.escape(best)} ({name} = {_fmt(study.best_value)}, {study.direction}d; "
            f"algorithm {html.escape(study.algorithm or '?')})</p>{intervals}"
            + (images or "<p>No trial completed.</p>") +
            f"<table border=1><tr><th>trial</th><th>state</th>{header}</tr>{rows}</table>"
            "</body></html>")


def study_metrics(study: Study) -> dict[str, float]:
    """The step's scalar outcome: the best objective with its interval, how many trials cannot
    be told apart from it, and whether every trial collapsed."""
    name = study.objective_metric
    values = {"best_" + name: study.best_value,
              "indistinguishable_trials": float(len(study.indistinguishable())),
              "all_trials_collapsed": float(study.all_collapsed)}
    chosen = study.chosen
    if chosen is not None and chosen.interval is not None:
        values[f"best_{name}_lo"], values[f"best_{name}_hi"] = chosen.interval.low, chosen.interval.high
    return values


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else html.escape(str(value))
