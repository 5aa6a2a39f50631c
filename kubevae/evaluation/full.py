"""Everything `kubevae evaluate` measures about a trained model, in one call: evaluate_model.

On one split of a split folder (or a plain dataset folder, which counts as one split):
- bounds (kubevae.evaluation.bounds, at beta = 1, so models trained with any beta compare):
  negative ELBO, reconstruction NLL, KL, PSNR on up to `max_images` images (a seeded subset),
  and the IWAE-k bound on the first `iwae_images` of them;
- unsupervised quality (kubevae.metrics.unsupervised): active units, KL per dimension,
  Gaussian total correlation of the means, sampled total correlation, mean pairwise MI;
- disentanglement (when the data has factor columns): MIG, DCI, SAP, FactorVAE and beta-VAE
  metrics with the protocol of disentanglement_lib (kubevae.metrics.protocol), drawn from the
  whole split by index lookup;
- anomaly quality: AUROC / AUPRC of negative ELBO and IWAE NLL (the serving "score" outputs) on
  planted defects (missing corner, noise, a second object) in half of `anomaly_images` images;
- pictures and report.html (kubevae.evaluation.report).

OUT/metrics.json holds the flat scalars at the top level (what the pipeline logs), plus
"settings" (every group's settings), "metric_groups", "details" (per-factor scores, importance
matrix, ...), "kl_per_dim", "pictures" and "timings_s". The folder is written whole or not at all.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kubevae.data.dataset import Dataset, ImageRows, load_splits
from kubevae.evaluation import report
from kubevae.evaluation.bounds import elbo_terms, evaluate_images, iwae_nll, mean_image_psnr
from kubevae.evaluation.encoding import encode, mean_representation
from kubevae.metrics import (
    DISENTANGLEMENT_METRICS,
    HEADLINE,
    CachedRepresentation,
    GroundTruthData,
    MetricProtocol,
    MetricScore,
    active_units,
    anomaly_quality,
    compute_all,
    gaussian_total_correlation,
    mutual_info_score,
    plant_defects,
    sampled_total_correlation,
    unsupervised_settings,
    weighted_mean,
)
from kubevae.metrics.anomaly import DEFECT_KINDS, anomaly_settings
from kubevae.metrics.bootstrap import ModelScores, Scorer
from kubevae.metrics.unsupervised import ACTIVE_UNIT_THRESHOLD
from kubevae.model import METRICS_FILE, VAE, load_model, read_model_config
from kubevae.storage import atomic_dir, atomic_write_json, read_json

EVALUATION_FORMAT = "kubevae-evaluation/1"


@dataclass(frozen=True)
class EvaluationSizes:
    """How many images each part looks at (the disentanglement counts are in MetricProtocol)."""

    max_images: int = 10_000      # bounds and unsupervised scores
    iwae_images: int = 500        # IWAE-k costs k decoder passes per image
    anomaly_images: int = 600     # half of them get a planted defect
    anomaly_iwae_k: int = 16      # the serving default for the score operation
    batch_size: int = 256

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if getattr(self, f.name) < 1:
                raise ValueError(f"{f.name}: expected a positive integer, got {getattr(self, f.name)}")


def evaluate_model(model_dir: str | Path, data_dir: str | Path, out_dir: str | Path, *,
                   split: str = "test", iwae_k: int = 50, seed: int = 0,
                   tuning_results: Any = None, tracker=None,
                   protocol: MetricProtocol | str = "disentanglement_lib",
                   sizes: EvaluationSizes | None = None, device: str = "cpu") -> dict[str, Any]:
    """Evaluate the model folder on `split` of data_dir; write out_dir; return the metrics."""
    protocol = MetricProtocol.named(protocol) if isinstance(protocol, str) else protocol
    sizes = sizes or EvaluationSizes()
    if iwae_k < 0:
        raise ValueError(f"iwae_k: expected 0 (off) or a positive number of samples, got {iwae_k}")
    if tuning_results:
        report.tuning_points(tuning_results)  # malformed trials fail now, not after the work
    vae = load_model(model_dir, device=device)
    model_config, objective, _ = read_model_config(model_dir)
    dataset, split_name = open_split(data_dir, split)
    check_image_shape(dataset, model_config, data_dir)
    images = random_subset(dataset.images, sizes.max_images, seed)

    metrics: dict[str, Any] = {
        "format": EVALUATION_FORMAT, "model": str(model_dir), "data": str(data_dir),
        "split": split_name, "latent_dim": model_config.latent_dim,
        "beta": objective.beta if objective.kind == "beta" else None, "objective": objective.kind,
        "settings": {}, "metric_groups": {}, "details": {}, "timings_s": {}}
    stages: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("bounds", lambda: bound_metrics(vae, images, iwae_k, seed, sizes, device)),
        ("unsupervised", lambda: unsupervised_metrics(vae, images, seed, protocol, sizes, device)),
        ("anomaly", lambda: anomaly_metrics(vae, images, seed, sizes, device)),
    ]
    if dataset.factor_names:
        stages.append(("disentanglement",
                       lambda: disentanglement_metrics(vae, dataset, seed, protocol, sizes, device)))
    for name, stage in stages:
        start = time.monotonic()
        add_group(metrics, stage())
        metrics["timings_s"][name] = round(time.monotonic() - start, 2)

    history = model_history(model_dir)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        start = time.monotonic()
        pictures = report.write_pictures(
            tmp, vae, images[:8], metrics["kl_per_dim"], active=metrics["details"]["active_dims"],
            history=history, tuning_results=tuning_results, seed=seed)
        metrics["pictures"] = pictures
        metrics["timings_s"]["pictures"] = round(time.monotonic() - start, 2)
        metrics = json_safe(metrics)
        atomic_write_json(tmp / "metrics.json", metrics)
        report.write_report(tmp, metrics, pictures, title=f"kubevae evaluation: {Path(model_dir).name}")
    report.log_report(out_dir, metrics, pictures, tracker)
    return metrics


def add_group(metrics: dict[str, Any], group: dict[str, Any]) -> None:
    """Merge one stage's {"groups": {name: {"scores", "settings"}}, "details", "extra"}."""
    for name, part in group.get("groups", {}).items():
        metrics.update(part["scores"])
        metrics["metric_groups"][name] = list(part["scores"])
        metrics["settings"][name] = part["settings"]
    metrics["details"].update(group.get("details", {}))
    metrics.update(group.get("extra", {}))


# -- data and model ----------------------------------------------------------------------------
def open_split(data_dir: str | Path, split: str) -> tuple[Dataset, str]:
    """The dataset to evaluate: a split of a split folder, or a plain dataset folder as a whole."""
    splits = load_splits(data_dir)
    plain = splits["val"] is None and splits["test"] is None and (Path(data_dir) / "dataset.json").is_file()
    if plain:
        whole = splits["train"]
        if whole is None:  # load_splits opens a plain dataset folder as its train split
            raise ValueError(f"{data_dir}: not a dataset folder")
        return whole, "all"
    if split not in splits:
        raise ValueError(f"split: expected one of {sorted(splits)}, got {split!r}")
    dataset = splits[split]
    if dataset is None or len(dataset) == 0:
        raise ValueError(f"{data_dir}: the {split!r} split is missing or empty")
    return dataset, split


def check_image_shape(dataset: Dataset, config, data_dir) -> None:
    expected = (config.image_size, config.image_size, config.channels)
    if tuple(dataset.image_shape) != expected:
        raise ValueError(f"{data_dir}: images are {tuple(dataset.image_shape)} (H, W, C) but the "
                         f"model expects {expected}")


def random_subset(images: ImageRows, n: int, seed: int) -> np.ndarray:
    """Up to n images drawn with `seed`, in random order: any prefix of the result is a random
    sample too (datasets are often sorted by their factors, so a prefix of them is not).
    They are read in index order, which memory-mapped shards serve fastest."""
    chosen = np.random.default_rng(seed).choice(len(images), size=min(len(images), n), replace=False)
    order = np.argsort(chosen)
    subset = np.empty((len(chosen), *images.shape[1:]), dtype=images.dtype)
    subset[order] = images[chosen[order]]
    return subset


def model_history(model_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(model_dir) / METRICS_FILE
    history = read_json(path).get("history", []) if path.is_file() else []
    return history if isinstance(history, list) else []


# -- the stages --------------------------------------------------------------------------------
def bound_metrics(vae, images, iwae_k, seed, sizes: EvaluationSizes, device,
                  per_image: bool = False) -> dict[str, Any]:
    main = evaluate_images(vae, torch.from_numpy(images), batch_size=sizes.batch_size, iwae_k=0,
                           seed=seed, device=device, per_image=per_image)
    scores = {**{k: main[k] for k in ("neg_elbo", "recon", "kl", "psnr")},
              "mean_image_psnr": mean_image_psnr(images, sizes.batch_size)}
    settings = {"beta": 1.0, "posterior_samples": 1, "num_images": main["num_images"],
                "image_subset": f"seeded random subset (seed {seed}) of the split, in random order; "
                                f"IWAE, anomaly and pictures use its first images",
                "units": "nats per image (pixel sum); PSNR in dB of the posterior-mean reconstruction",
                "mean_image_psnr": "PSNR of the images' own mean image: what a decoder that ignores z gives"}
    groups = {"bounds": {"scores": scores, "settings": settings}}
    if iwae_k > 0:
        n = min(len(images), sizes.iwae_images)
        iwae = evaluate_images(vae, torch.from_numpy(images[:n]), batch_size=max(1, sizes.batch_size // 4),
                               iwae_k=iwae_k, seed=seed, device=device)
        groups["iwae"] = {"scores": {"iwae_nll": iwae["iwae_nll"], "neg_elbo_iwae_images": iwae["neg_elbo"]},
                          "settings": {"k": iwae_k, "num_images": n, "seed": seed,
                                       "estimator": "IWAE (Burda et al. 2016), kubevae.evaluation.bounds.iwae_nll"}}
    extra = {"num_images": main["num_images"], "kl_per_dim": main["kl_per_dim"]}
    return {"groups": groups, "extra": extra, "per_image": main.get("per_image", {})}


def unsupervised_codes(vae, images, protocol: MetricProtocol, sizes: EvaluationSizes, device
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(mu, logvar) of the first protocol.unsupervised_num_points images: what the unsupervised
    scores (active units among them) are computed on."""
    n = min(len(images), protocol.unsupervised_num_points)
    return encode(vae, images[:n], batch_size=sizes.batch_size, device=device, progress_desc="encode")


def unsupervised_metrics(vae, images, seed, protocol: MetricProtocol, sizes: EvaluationSizes,
                         device) -> dict[str, Any]:
    mu, logvar = unsupervised_codes(vae, images, protocol, sizes, device)
    n = len(mu)
    variances = np.var(mu, axis=0, ddof=1) if n > 1 else np.zeros(mu.shape[1])
    active = variances > ACTIVE_UNIT_THRESHOLD
    n_tc = min(n, protocol.tc_num_points)
    scores = {"active_units": active_units(mu),
              "gaussian_total_correlation": gaussian_total_correlation(mu) if n > mu.shape[1] else float("nan"),
              "sampled_total_correlation": sampled_total_correlation(mu[:n_tc], logvar[:n_tc], seed),
              "mutual_info_score": mutual_info_score(mu)}
    return {"groups": {"unsupervised": {"scores": scores,
                                        "settings": unsupervised_settings(n, n_tc)}},
            "details": {"active_dims": active.tolist(), "mean_variance_per_dim": variances.tolist()}}


@torch.no_grad()
def anomaly_scores(vae, images: np.ndarray, iwae_k: int, seed: int, device, batch_size: int
                   ) -> dict[str, np.ndarray]:
    generator = torch.Generator().manual_seed(seed)
    neg_elbo, iwae = [], []
    for start in range(0, len(images), batch_size):
        x = VAE.to_unit(torch.from_numpy(images[start:start + batch_size]).to(device))
        eps = torch.randn(len(x), vae.config.latent_dim, generator=generator).to(device)
        recon, kl = elbo_terms(vae, x, eps)
        neg_elbo.append((recon + kl).double().cpu().numpy())
        iwae.append(iwae_nll(vae, x, iwae_k, generator).double().cpu().numpy())
    return {"neg_elbo": np.concatenate(neg_elbo), "iwae": np.concatenate(iwae)}


def anomaly_metrics(vae, images, seed, sizes: EvaluationSizes, device) -> dict[str, Any]:
    n = min(len(images), sizes.anomaly_images)
    if n < 2:
        return {}
    planted = plant_defects(images[:n], fraction=0.5, seed=seed)
    scores = anomaly_scores(vae, planted.images, sizes.anomaly_iwae_k, seed, device,
                            max(1, sizes.batch_size // 4))
    out, details = {}, {}
    for score_name, values in scores.items():
        overall = anomaly_quality(values, planted.labels)
        out[f"anomaly_{score_name}_auroc"] = overall["auroc"]
        out[f"anomaly_{score_name}_auprc"] = overall["auprc"]
        for kind in DEFECT_KINDS:
            keep = (planted.labels == 0) | (planted.kinds == kind)
            if (planted.kinds == kind).any():
                per_kind = anomaly_quality(values[keep], planted.labels[keep])
                details[f"anomaly_{score_name}_{kind}"] = per_kind
                out[f"anomaly_{score_name}_auroc_{kind}"] = per_kind["auroc"]
    settings = {**anomaly_settings("negative ELBO (1 posterior sample) and IWAE NLL",
                                   num_images=n, fraction=0.5),
                "iwae_k": sizes.anomaly_iwae_k, "seed": seed,
                "positive_fraction": float(planted.labels.mean())}
    return {"groups": {"anomaly": {"scores": out, "settings": settings}}, "details": details}


def disentanglement_scores(vae, dataset: Dataset, seed: int, protocol: MetricProtocol,
                           sizes: EvaluationSizes, device, metrics=DISENTANGLEMENT_METRICS
                           ) -> tuple[dict[str, MetricScore], GroundTruthData, CachedRepresentation]:
    """The metrics of kubevae.metrics.disentanglement (each on its own stream from `seed`) on
    the whole split, by index lookup; every item is encoded at most once."""
    data = GroundTruthData.from_dataset(dataset)
    represent = CachedRepresentation(data, mean_representation(vae, device, sizes.batch_size),
                                     batch_size=sizes.batch_size * 4, progress_desc="encode factors data")
    return compute_all(data, represent, seed, protocol, metrics), data, represent


def disentanglement_metrics(vae, dataset: Dataset, seed: int, protocol: MetricProtocol,
                            sizes: EvaluationSizes, device) -> dict[str, Any]:
    scored, data, represent = disentanglement_scores(vae, dataset, seed, protocol, sizes, device)
    groups = {name: {"scores": score.scores, "settings": score.settings} for name, score in scored.items()}
    per_factor = {"mig": ("per_factor",), "dci": ("test_accuracy_per_factor",), "sap": ("per_factor",)}
    details: dict[str, Any] = {name: _named(scored[name].details, data.factor_names, keys)
                               for name, keys in per_factor.items()}
    details["disentanglement_items_encoded"] = represent.num_encoded
    return {"groups": groups, "details": details}


# -- what the gate compares: the same functions, the same draws ---------------------------------
BOUND_SCORES = ("neg_elbo", "recon", "kl", "psnr")


def model_scores(vae, dataset: Dataset, *, seed: int, protocol: MetricProtocol | str,
                 sizes: EvaluationSizes | None = None, device: str = "cpu",
                 metrics=()) -> ModelScores:
    """The bounds (neg_elbo, recon, kl, psnr), active_units and the disentanglement `metrics`
    (names of kubevae.metrics.disentanglement) of one model on `dataset`, each computed by the
    evaluate step's own function with the same seed on the same images and draws: for the same
    model, seed, protocol and sizes, every value equals evaluate_model's."""
    protocol = MetricProtocol.named(protocol) if isinstance(protocol, str) else protocol
    sizes = sizes or EvaluationSizes()
    images = random_subset(dataset.images, sizes.max_images, seed)
    bounds = bound_metrics(vae, images, 0, seed, sizes, device, per_image=True)
    scores = {k: float(v) for k, v in bounds["groups"]["bounds"]["scores"].items()}
    scores["active_units"] = active_units(unsupervised_codes(vae, images, protocol, sizes, device)[0])
    per_image = bounds["per_image"]["neg_elbo"]
    resamplers: dict[str, tuple[Scorer, int]] = {"neg_elbo": (weighted_mean(per_image), len(per_image))}
    if metrics:
        scored, _, _ = disentanglement_scores(vae, dataset, seed, protocol, sizes, device, metrics)
        for score in scored.values():
            scores.update({k: float(v) for k, v in score.scores.items()})
            if score.resample is not None:
                resamplers[HEADLINE[score.metric]] = (score.resample, score.num_items)
    return ModelScores(scores, resamplers)


def json_safe(value: Any) -> Any:
    """NaN and infinities become None (strict JSON has no NaN); numpy scalars become Python."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _named(details: dict[str, Any], factor_names: list[str], per_factor_keys) -> dict[str, Any]:
    """Per-factor lists as {factor name: value}, for people reading metrics.json."""
    out = dict(details)
    for key in per_factor_keys:
        out[key] = dict(zip(factor_names, details[key], strict=True))
    return out
