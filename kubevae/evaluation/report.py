"""The pictures people look at, and one self-contained HTML report of an evaluation.

Pictures (PNG, matplotlib with the Agg backend, so no display is needed):
    reconstructions.png    inputs (top row) beside their reconstructions from the posterior mean
    samples.png            decoder means for z drawn from the prior N(0, I)
    traversals.png         one row per latent dimension, sorted by KL (most informative first):
                           the posterior mean of one input with that dimension swept over
                           [-TRAVERSAL_SPAN, +TRAVERSAL_SPAN]
    kl_per_dim.png         mean KL(q(z_u|x) || N(0, 1)) per dimension, sorted, active units marked
    training_curves.png    every numeric series of the training history, against the step
    tuning_objective.png   the tuning objective against beta, each trial with its interval, one
                           colour per latent size, the chosen trial starred (when tuning ran)
    tuning_tradeoff.png    every trial's rate (KL) against its distortion (reconstruction NLL),
                           labelled with its beta: what the chosen beta costs in reconstruction

report.html embeds every picture as a base64 data URI and lists every metric with its settings,
so the one file works anywhere, including as a KFP HTML visualization (which shows a single
file). `log_report` logs the pictures, the report and the scalar metrics to MLflow.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kubevae import images as image_grids
from kubevae.storage import atomic_write_bytes, atomic_write_text
from kubevae.study import Study

TRAVERSAL_SPAN = 2.5
TRAVERSAL_STEPS = 9
PICTURE_TITLES = {
    "reconstructions": "Inputs (top) and reconstructions from the posterior mean (bottom)",
    "samples": "Samples from the prior (decoder means)",
    "traversals": "Latent traversals, one row per dimension, sorted by KL",
    "kl_per_dim": "KL per latent dimension",
    "training_curves": "Training curves",
    "tuning_objective": "Tuning objective against beta, with each trial's interval (chosen one starred)",
    "tuning_tradeoff": "Rate (KL) against distortion (reconstruction NLL), every trial (chosen one starred)",
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def figure_png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    _pyplot().close(fig)
    return buffer.getvalue()


def image_png(image: np.ndarray, title: str = "", row_labels: Sequence[str] = ()) -> bytes:
    """A uint8 H x W x 3 grid as a PNG, with an optional title and labels for its rows."""
    plt = _pyplot()
    h, w = image.shape[:2]
    scale = 1 / 60
    fig, ax = plt.subplots(figsize=(max(3.0, w * scale + (1.5 if row_labels else 0)), max(1.5, h * scale + 0.5)))
    ax.imshow(image, interpolation="nearest")
    ax.set_xticks([])
    if row_labels:
        step = h / len(row_labels)
        ax.set_yticks([step * (i + 0.5) for i in range(len(row_labels))], list(row_labels), fontsize=8)
    else:
        ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    return figure_png(fig)


# -- pictures of the model -------------------------------------------------------------------
@torch.no_grad()
def reconstructions_png(vae, images_uint8: np.ndarray, n: int = 8) -> bytes:
    x = vae.to_unit(torch.from_numpy(np.ascontiguousarray(images_uint8[:n])))
    return image_png(image_grids.reconstruction_grid(vae, x, n=n), row_labels=("input", "reconstruction"))


@torch.no_grad()
def samples_png(vae, n: int = 32, seed: int = 0) -> bytes:
    return image_png(image_grids.samples_grid(vae, n=n, seed=seed), title=f"{n} prior samples, seed {seed}")


def kl_order(kl_per_dim: Sequence[float] | np.ndarray) -> np.ndarray:
    """Dimensions from the largest KL to the smallest (ties keep index order)."""
    return np.argsort(-np.asarray(kl_per_dim, dtype=np.float64), kind="stable")


@torch.no_grad()
def traversals_png(vae, image_uint8: np.ndarray, kl_per_dim: Sequence[float], *,
                   span: float = TRAVERSAL_SPAN, steps: int = TRAVERSAL_STEPS) -> bytes:
    x = vae.to_unit(torch.from_numpy(np.ascontiguousarray(image_uint8[None])))
    mu, _ = vae.encode(x)
    values = torch.linspace(-span, span, steps)
    order = kl_order(kl_per_dim)
    rows, labels = [], []
    for dim in order:
        z = mu.repeat(steps, 1)
        z[:, int(dim)] = values
        rows.append(image_grids.to_uint8_hwc(vae.mean_image(vae.decode(z))))
        labels.append(f"z{int(dim)} KL {kl_per_dim[int(dim)]:.2f}")
    return image_png(image_grids.grid(rows), row_labels=labels,
                     title=f"z_u swept over [{-span:g}, {span:g}] in {steps} steps from one input's mean")


# -- charts ----------------------------------------------------------------------------------
def kl_per_dim_png(kl_per_dim: Sequence[float], active: Sequence[bool] | None = None) -> bytes:
    plt = _pyplot()
    kl = np.asarray(kl_per_dim, dtype=np.float64)
    order = kl_order(kl)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * len(kl) + 1.5), 3.2))
    colours = ["tab:blue" if active is None or active[i] else "tab:gray" for i in order]
    ax.bar(range(len(kl)), kl[order], color=colours)
    ax.set_xticks(range(len(kl)), [f"z{i}" for i in order], rotation=90 if len(kl) > 16 else 0)
    ax.set_ylabel("mean KL (nats)")
    ax.set_title("KL per latent dimension" + ("" if active is None else " (grey: inactive)"))
    return figure_png(fig)


def training_curves_png(history: Sequence[dict[str, Any]]) -> bytes:
    """One small panel per numeric series of the history (step on the x axis)."""
    plt = _pyplot()
    x_key = "step" if all("step" in r for r in history) else None
    xs = [r["step"] for r in history] if x_key else list(range(1, len(history) + 1))
    keys = [k for k in dict.fromkeys(k for r in history for k in r)
            if k not in ("step", "epoch") and
            any(isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool) for r in history)]
    if not keys:
        raise ValueError("history: no numeric series to plot")
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.6 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        points = [(x, r[key]) for x, r in zip(xs, history, strict=True)
                  if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel(x_key or "epoch", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    return figure_png(fig)


@dataclass(frozen=True)
class TuningPoint:
    """One trial of the study as the tuning pictures draw it."""

    number: int
    beta: float
    latent_dim: int
    value: float  # the objective (a pruned trial: its last reported value)
    low: float | None  # the objective's interval, when the trial reported one
    high: float | None
    rate: float | None  # validation KL, nats per image
    distortion: float | None  # validation reconstruction NLL, nats per image
    chosen: bool
    state: str


def as_study(study: Study | dict[str, Any]) -> Study:
    """The study, given as a kubevae.study.Study or as its JSON form (Study.to_dict)."""
    return study if isinstance(study, Study) else Study.from_dict(study, source="tuning study")


def tuning_points(study: Study | dict[str, Any]) -> list[TuningPoint]:
    """Every trial with a finite objective and the searched beta and latent size."""
    study = as_study(study)
    points = []
    for trial in study.trials:
        value = trial.value if trial.value is not None else trial.metrics.get(study.objective_metric)
        if trial.state not in ("COMPLETE", "PRUNED") or value is None or not math.isfinite(value):
            continue
        if "beta" not in trial.params or "latent_dim" not in trial.params:
            raise ValueError(f"tuning study: trial {trial.number} has no 'beta' or 'latent_dim' "
                             f"parameter, got {sorted(trial.params)}")
        interval = trial.interval
        points.append(TuningPoint(
            trial.number, float(trial.params["beta"]), int(trial.params["latent_dim"]), float(value),
            interval.low if interval else None, interval.high if interval else None,
            trial.metrics.get("val_kl"), trial.metrics.get("val_recon"),
            trial.number == study.best_trial, trial.state))
    return points


def _log_beta_axis(ax, betas: Sequence[float]) -> None:
    """A log beta axis ticked at the betas the trials tried."""
    if all(b > 0 for b in betas):
        from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

        ticks = sorted(set(betas))
        ax.set_xscale("log")
        ax.set_xlim(ticks[0] / 1.25, ticks[-1] * 1.25)
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticklabels([f"{b:.3g}" for b in ticks])


def tuning_objective_png(study: Study | dict[str, Any]) -> bytes | None:
    """The objective against beta (log axis), one colour per latent size, each trial with its
    interval as an error bar, the chosen trial starred. None when no trial reported."""
    study = as_study(study)
    points = tuning_points(study)
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, dim in enumerate(sorted({p.latent_dim for p in points})):
        group = [p for p in points if p.latent_dim == dim]
        for state, marker in (("COMPLETE", "o"), ("PRUNED", "x")):
            pts = [p for p in group if p.state == state]
            if not pts:
                continue
            below = [p.value - p.low if p.low is not None else 0.0 for p in pts]
            above = [p.high - p.value if p.high is not None else 0.0 for p in pts]
            ax.errorbar([p.beta for p in pts], [p.value for p in pts], yerr=[below, above],
                        fmt=marker, color=f"C{i}", capsize=4, markersize=7,
                        label=f"latent {dim}" + (" (pruned)" if state == "PRUNED" else ""))
    chosen = [p for p in points if p.chosen]
    if chosen:
        ax.scatter([chosen[0].beta], [chosen[0].value], marker="*", s=300, c="red", zorder=3,
                   label=f"chosen: {chosen[0].value:.4g}")
    _log_beta_axis(ax, [p.beta for p in points])
    ax.set_xlabel("beta")
    better = "higher" if study.direction == "maximize" else "lower"
    ax.set_ylabel(f"{study.objective_metric} ({better} is better)")
    with_bars = "; bars: " + (study.objective.interval or "interval") if any(
        p.low is not None for p in points) else "; no intervals reported"
    ax.set_title(f"{study.objective_metric} against beta ({len(points)} trials)", fontsize=10)
    fig.text(0.01, 0.01, with_bars[2:], fontsize=6)
    ax.legend(loc="best", fontsize=7)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return figure_png(fig)


def rate_distortion_png(study: Study | dict[str, Any]) -> bytes | None:
    """Every trial's rate (validation KL) against its distortion (validation reconstruction
    NLL), each labelled with its beta, the chosen trial starred: what beta buys and costs.
    None when no trial reported both."""
    study = as_study(study)
    points = [p for p in tuning_points(study) if p.rate is not None and p.distortion is not None]
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, dim in enumerate(sorted({p.latent_dim for p in points})):
        pts = [p for p in points if p.latent_dim == dim]
        ax.scatter([p.distortion for p in pts], [p.rate for p in pts], s=60, color=f"C{i}",
                   label=f"latent {dim}")
    for p in points:
        ax.annotate(f"beta {p.beta:.3g}", (p.distortion, p.rate), textcoords="offset points",
                    xytext=(5, 4), fontsize=7)
    chosen = [p for p in points if p.chosen]
    if chosen:
        ax.scatter([chosen[0].distortion], [chosen[0].rate], marker="*", s=300, c="red", zorder=3,
                   label="chosen")
    ax.set_xlabel("distortion: validation reconstruction NLL (nats per image)")
    ax.set_ylabel("rate: validation KL (nats per image)")
    ax.set_title(f"rate against distortion ({len(points)} trials)", fontsize=10)
    ax.legend(loc="best", fontsize=7)
    fig.tight_layout()
    return figure_png(fig)


# -- writing and the report ------------------------------------------------------------------
def write_pictures(out_dir: str | Path, vae, images_uint8: np.ndarray, kl_per_dim: Sequence[float], *,
                   active: Sequence[bool] | None = None, history: Sequence[dict[str, Any]] | None = None,
                   tuning_results: Study | dict[str, Any] | None = None, seed: int = 0) -> dict[str, str]:
    """Write every picture that applies into out_dir; returns {name: file name}."""
    out_dir = Path(out_dir)
    was_training = vae.training
    vae.eval()
    pngs: dict[str, bytes | None] = {
        "reconstructions": reconstructions_png(vae, images_uint8),
        "samples": samples_png(vae, seed=seed),
        "traversals": traversals_png(vae, images_uint8[0], kl_per_dim),
        "kl_per_dim": kl_per_dim_png(kl_per_dim, active),
        "training_curves": training_curves_png(history) if history else None,
        "tuning_objective": tuning_objective_png(tuning_results) if tuning_results else None,
        "tuning_tradeoff": rate_distortion_png(tuning_results) if tuning_results else None,
    }
    vae.train(was_training)
    written = {}
    for name, data in pngs.items():
        if data is not None:
            atomic_write_bytes(out_dir / f"{name}.png", data)
            written[name] = f"{name}.png"
    return written


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _settings_html(settings: Any) -> str:
    if not settings:
        return ""
    text = html.escape(json.dumps(settings, indent=1, sort_keys=True, default=str))
    return f"<details><summary>settings</summary><pre>{text}</pre></details>"


def render_html(metrics: dict[str, Any], pictures: dict[str, bytes], *,
                title: str = "kubevae evaluation") -> str:
    """The report page: every metric with its settings, every picture embedded (data URIs).

    metrics: flat scalars at the top level, "settings" = {group: settings dict}, and
    "metric_groups" = {group: [metric names]} telling which settings a metric belongs to.
    pictures: {file name: PNG bytes}.
    """
    settings = metrics.get("settings", {})
    groups = metrics.get("metric_groups", {})
    group_of = {name: group for group, names in groups.items() for name in names}
    rows = []
    for group in list(groups) + ["other"]:
        names = groups.get(group) or [k for k, v in metrics.items() if k not in group_of
                                       and isinstance(v, (int, float)) and not isinstance(v, bool)]
        names = [n for n in names if n in metrics]
        for i, name in enumerate(names):
            cell = f'<td rowspan="{len(names)}">{html.escape(group)}{_settings_html(settings.get(group))}</td>' \
                if i == 0 else ""
            rows.append(f"<tr>{cell}<td>{html.escape(name)}</td><td>{_format(metrics[name])}</td></tr>")
    figures = []
    for file_name, data in pictures.items():
        name = file_name.rsplit(".", 1)[0]
        caption = html.escape(PICTURE_TITLES.get(name, name))
        uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        figures.append(f'<figure id="{html.escape(name)}"><img src="{uri}" alt="{html.escape(file_name)}">'
                       f"<figcaption>{caption} <code>{html.escape(file_name)}</code></figcaption></figure>")
    context = "".join(f"<li><b>{html.escape(k)}</b>: {_format(metrics[k])}</li>"
                      for k in ("model", "data", "split", "latent_dim", "beta", "num_images") if k in metrics)
    style = ("body{font-family:sans-serif;margin:1.5em;max-width:1200px}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;vertical-align:top;text-align:left}"
             "figure{margin:1em 0}img{max-width:100%}pre{font-size:11px;margin:0}")
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1><ul>{context}</ul>"
            f"<h2>Metrics</h2><table><tr><th>group and settings</th><th>metric</th><th>value</th></tr>"
            f"{''.join(rows)}</table><h2>Pictures</h2>{''.join(figures)}</body></html>")


def write_report(out_dir: str | Path, metrics: dict[str, Any], picture_files: dict[str, str], *,
                 title: str = "kubevae evaluation") -> Path:
    """Write out_dir/report.html from the metrics and the PNG files already in out_dir."""
    out_dir = Path(out_dir)
    pictures = {file: (out_dir / file).read_bytes() for file in picture_files.values()}
    path = out_dir / "report.html"
    atomic_write_text(path, render_html(metrics, pictures, title=title))
    return path


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def active_tracker():
    """A kubevae.tracking.Tracker for the MLflow run active in this process, or None.

    MLflow is only looked at if something already imported it: no import, no active run."""
    mlflow = sys.modules.get("mlflow")
    if mlflow is None or mlflow.active_run() is None:
        return None
    from kubevae.tracking import Tracker

    return Tracker(mlflow, mlflow.active_run())


def log_report(out_dir: str | Path, metrics: dict[str, Any], picture_files: dict[str, str],
               tracker=None, *, artifact_path: str = "evaluation") -> bool:
    """Log the PNGs, report.html, metrics.json and the scalar metrics to MLflow: into `tracker`
    (a kubevae.tracking.Tracker) or else the active MLflow run. False when there is none."""
    tracker = tracker if tracker is not None and tracker.enabled else active_tracker()
    if tracker is None:
        return False
    out_dir = Path(out_dir)
    for file in picture_files.values():
        tracker.log_artifact(out_dir / file, artifact_path)
    for file in ("report.html", "metrics.json"):
        if (out_dir / file).is_file():
            tracker.log_artifact(out_dir / file, artifact_path)
    # Named like the pipeline's KFP metrics: the split first (test_mig, test_neg_elbo, ...);
    # "eval_" for a plain dataset folder, which has no splits.
    prefix = metrics.get("split") if metrics.get("split") in ("train", "val", "test") else "eval"
    tracker.log_metrics({f"{prefix}_{k}": v for k, v in scalar_metrics(metrics).items()})
    return True
