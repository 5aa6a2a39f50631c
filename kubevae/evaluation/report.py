"""The pictures people look at, and one self-contained HTML report of an evaluation.

Pictures (PNG, matplotlib with the Agg backend, so no display is needed):
    reconstructions.png    inputs (top row) beside their reconstructions from the posterior mean
    samples.png            decoder means for z drawn from the prior N(0, I)
    traversals.png         one row per latent dimension, sorted by KL (most informative first):
                           the posterior mean of one input with that dimension swept over
                           [-TRAVERSAL_SPAN, +TRAVERSAL_SPAN]
    kl_per_dim.png         mean KL(q(z_u|x) || N(0, 1)) per dimension, sorted, active units marked
    training_curves.png    every numeric series of the training history, against the step
    tuning_objective.png   the tuning objective over beta x latent size (only when tuning ran)
    tuning_tradeoff.png    the objective against the validation negative ELBO for every trial,
                           the chosen one marked: what the chosen beta costs in reconstruction

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
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kubevae import images as image_grids
from kubevae.storage import atomic_write_bytes, atomic_write_text

TRAVERSAL_SPAN = 2.5
TRAVERSAL_STEPS = 9
PICTURE_TITLES = {
    "reconstructions": "Inputs (top) and reconstructions from the posterior mean (bottom)",
    "samples": "Samples from the prior (decoder means)",
    "traversals": "Latent traversals, one row per dimension, sorted by KL",
    "kl_per_dim": "KL per latent dimension",
    "training_curves": "Training curves",
    "tuning_objective": "Tuning objective over beta x latent size",
    "tuning_tradeoff": "Tuning objective against the negative ELBO, every trial (chosen one starred)",
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


def tuning_points(tuning_results: Any) -> tuple[list[tuple[float, int, float]], str]:
    """(beta, latent_dim, objective) of every completed trial, and the objective's name.

    Accepts the tuner's trial records ({"params": {"beta", "latent_dim"}, "value", "state"}),
    flat rows ({"beta", "latent_dim", "value" or "objective"}), or a study summary holding
    "trials" and "objective_metric".
    """
    name = "objective"
    trials = tuning_results
    if isinstance(tuning_results, dict):
        name = tuning_results.get("objective_metric", name)
        trials = tuning_results.get("trials", [])
    points = []
    for i, trial in enumerate(trials or []):
        if trial.get("state", "COMPLETE") != "COMPLETE":
            continue
        params = trial.get("params", trial)
        value = trial.get("value", trial.get("objective"))
        if "beta" not in params or "latent_dim" not in params:
            raise ValueError(f"tuning_results[{i}]: expected 'beta' and 'latent_dim' "
                             f"(in 'params' or at the top level), got keys {sorted(params)}")
        if value is not None and math.isfinite(float(value)):
            points.append((float(params["beta"]), int(params["latent_dim"]), float(value)))
    return points, name


def tuning_direction(tuning_results: Any, name: str) -> str:
    """"maximize" or "minimize": the study's own, else the named objective's, else minimize."""
    if isinstance(tuning_results, dict) and tuning_results.get("direction") in ("maximize", "minimize"):
        return tuning_results["direction"]
    from kubevae.training.selection import OBJECTIVES

    return OBJECTIVES[name].direction if name in OBJECTIVES else "minimize"


def tuning_objective_png(tuning_results: Any) -> bytes | None:
    """Scatter of the objective over beta (log axis) x latent size; the best trial starred.
    None when no trial completed."""
    points, name = tuning_points(tuning_results)
    if not points:
        return None
    maximize = tuning_direction(tuning_results, name) == "maximize"
    plt = _pyplot()
    beta, latent, value = (np.array(c) for c in zip(*points, strict=True))
    fig, ax = plt.subplots(figsize=(6, 4))
    scatter = ax.scatter(beta, latent, c=value, cmap="viridis" if maximize else "viridis_r", s=80)
    fig.colorbar(scatter, label=f"{name} ({'higher' if maximize else 'lower'} is better)")
    best = int(np.argmax(value) if maximize else np.argmin(value))
    ax.scatter([beta[best]], [latent[best]], marker="*", s=300, c="red", label=f"best: {value[best]:.4g}")
    if (beta > 0).all():
        from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_yticks(sorted(set(latent.tolist())))
    ax.set_xlabel("beta")
    ax.set_ylabel("latent size")
    ax.set_title(f"{name} over beta x latent size ({len(points)} trials)")
    ax.legend(loc="best", fontsize=8)
    return figure_png(fig)


def objective_vs_elbo_png(study: Any) -> bytes | None:
    """Every trial that reported both: its objective against its validation negative ELBO
    (beta = 1), the chosen trial starred. None when no trial has both."""
    if not isinstance(study, dict):
        return None
    name = study.get("objective_metric", "objective")
    rows = []
    for t in study.get("trials", []):
        elbo = (t.get("metrics") or {}).get("val_neg_elbo")
        value = t.get("value")
        if value is None:  # a pruned trial: its last reported objective
            value = (t.get("metrics") or {}).get(name)
        if elbo is not None and value is not None and math.isfinite(float(value)):
            rows.append((float(elbo), float(value), t.get("number") == study.get("best_trial"),
                         t.get("state", "COMPLETE")))
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for state, marker in (("COMPLETE", "o"), ("PRUNED", "x")):
        pts = [(e, v) for e, v, _, s in rows if s == state]
        if pts:
            ax.scatter(*zip(*pts, strict=True), marker=marker, s=60, label=state.lower())
    chosen = [(e, v) for e, v, c, _ in rows if c]
    if chosen:
        ax.scatter(*zip(*chosen, strict=True), marker="*", s=300, c="red", label="chosen")
    ax.set_xlabel("validation negative ELBO at beta = 1 (nats per image, lower is better)")
    ax.set_ylabel(f"{name} ({tuning_direction(study, name)})")
    ax.set_title(f"{name} against negative ELBO ({len(rows)} trials)")
    ax.legend(loc="best", fontsize=8)
    return figure_png(fig)


# -- writing and the report ------------------------------------------------------------------
def write_pictures(out_dir: str | Path, vae, images_uint8: np.ndarray, kl_per_dim: Sequence[float], *,
                   active: Sequence[bool] | None = None, history: Sequence[dict[str, Any]] | None = None,
                   tuning_results: Any = None, seed: int = 0) -> dict[str, str]:
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
        "tuning_tradeoff": objective_vs_elbo_png(tuning_results) if tuning_results else None,
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
