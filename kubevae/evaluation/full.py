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

from kubevae.data.dataset import Dataset, load_splits
from kubevae.evaluation import report
from kubevae.evaluation.bounds import ACTIVE_UNIT_THRESHOLD, elbo_terms, evaluate_images, iwae_nll
from kubevae.metrics import (
    CachedRepresentation,
    GroundTruthData,
    MetricProtocol,
    anomaly_quality,
    beta_vae_score,
    beta_vae_settings,
    dci_details,
    dci_settings,
    factor_vae_score,
    factor_vae_settings,
    gaussian_total_correlation,
    mig_details,
    mig_settings,
    mutual_info_score,
    plant_defects,
    sampled_total_correlation,
    sap_details,
    sap_settings,
    unsupervised_settings,
)
from kubevae.metrics.anomaly import DEFECT_KINDS, anomaly_settings
from kubevae.model import METRICS_FILE, VAE, load_model, read_model_config
from kubevae.progress import progress
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


def random_subset(images: np.ndarray, n: int, seed: int) -> np.ndarray:
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


def mean_representation(vae: VAE, device: str = "cpu", batch_size: int = 256):
    """representation_fn(images_uint8_NHWC) -> E_q[z|x] as float64 [n, D]."""
    @torch.no_grad()
    def represent(images_uint8: np.ndarray) -> np.ndarray:
        codes = []
        for start in range(0, len(images_uint8), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(images_uint8[start:start + batch_size]))
            mu, _ = vae.encode(VAE.to_unit(batch.to(device)))
            codes.append(mu.double().cpu().numpy())
        return np.concatenate(codes)
    return represent


@torch.no_grad()
def encode_posteriors(vae: VAE, images: np.ndarray, device: str, batch_size: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    mus, logvars = [], []
    starts = range(0, len(images), batch_size)
    for start in progress(starts, desc="encode", total=len(starts)):
        mu, logvar = vae.encode(VAE.to_unit(torch.from_numpy(images[start:start + batch_size]).to(device)))
        mus.append(mu.double().cpu().numpy())
        logvars.append(logvar.double().cpu().numpy())
    return np.concatenate(mus), np.concatenate(logvars)


# -- the stages --------------------------------------------------------------------------------
def bound_metrics(vae, images, iwae_k, seed, sizes: EvaluationSizes, device) -> dict[str, Any]:
    main = evaluate_images(vae, torch.from_numpy(images), batch_size=sizes.batch_size, iwae_k=0,
                           seed=seed, device=device)
    scores = {k: main[k] for k in ("neg_elbo", "recon", "kl", "psnr")}
    settings = {"beta": 1.0, "posterior_samples": 1, "num_images": main["num_images"],
                "image_subset": f"seeded random subset (seed {seed}) of the split, in random order; "
                                f"IWAE, anomaly and pictures use its first images",
                "units": "nats per image (pixel sum); PSNR in dB of the posterior-mean reconstruction"}
    groups = {"bounds": {"scores": scores, "settings": settings}}
    if iwae_k > 0:
        n = min(len(images), sizes.iwae_images)
        iwae = evaluate_images(vae, torch.from_numpy(images[:n]), batch_size=max(1, sizes.batch_size // 4),
                               iwae_k=iwae_k, seed=seed, device=device)
        groups["iwae"] = {"scores": {"iwae_nll": iwae["iwae_nll"], "neg_elbo_iwae_images": iwae["neg_elbo"]},
                          "settings": {"k": iwae_k, "num_images": n, "seed": seed,
                                       "estimator": "IWAE (Burda et al. 2016), kubevae.evaluation.bounds.iwae_nll"}}
    return {"groups": groups, "extra": {"num_images": main["num_images"], "kl_per_dim": main["kl_per_dim"]}}


def unsupervised_metrics(vae, images, seed, protocol: MetricProtocol, sizes: EvaluationSizes,
                         device) -> dict[str, Any]:
    n = min(len(images), protocol.unsupervised_num_points)
    mu, logvar = encode_posteriors(vae, images[:n], device, sizes.batch_size)
    variances = np.var(mu, axis=0, ddof=1) if n > 1 else np.zeros(mu.shape[1])
    active = variances > ACTIVE_UNIT_THRESHOLD
    n_tc = min(n, protocol.tc_num_points)
    scores = {"active_units": int(active.sum()),
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


def disentanglement_metrics(vae, dataset: Dataset, seed: int, protocol: MetricProtocol,
                            sizes: EvaluationSizes, device) -> dict[str, Any]:
    data = GroundTruthData.from_dataset(dataset)
    represent = CachedRepresentation(data, mean_representation(vae, device, sizes.batch_size),
                                     batch_size=sizes.batch_size * 4, progress_desc="encode factors data")
    rng = np.random.default_rng(seed)
    common = {"seed": seed, "protocol_name": protocol.name, "data": data.describe()}
    groups: dict[str, Any] = {}
    details: dict[str, Any] = {}

    mig_idx, _ = data.sample_disjoint(protocol.mig_num_train, 0, rng)
    mig = mig_details(represent(mig_idx), data.factors[mig_idx], protocol.mig_num_bins)
    groups["mig"] = {"scores": {"mig": mig["mig"]},
                     "settings": {**mig_settings(protocol.mig_num_bins, len(mig_idx)), **common}}
    details["mig"] = _named(mig, data.factor_names, ("per_factor",))

    train, test = data.sample_disjoint(protocol.dci_num_train, protocol.dci_num_test, rng)
    dci = dci_details(represent(train), data.factors[train], represent(test), data.factors[test],
                      importance_model=protocol.dci_importance, random_state=seed)
    groups["dci"] = {"scores": {f"dci_{k}": dci[k] for k in ("disentanglement", "completeness", "informativeness")},
                     "settings": {**dci_settings(protocol.dci_importance, len(train), len(test), seed), **common}}
    details["dci"] = _named(dci, data.factor_names, ("test_accuracy_per_factor",))

    train, test = data.sample_disjoint(protocol.sap_num_train, protocol.sap_num_test, rng)
    sap = sap_details(represent(train), data.factors[train], represent(test), data.factors[test])
    groups["sap"] = {"scores": {"sap": sap["sap"]},
                     "settings": {**sap_settings(len(train), len(test)), **common}}
    details["sap"] = _named(sap, data.factor_names, ("per_factor",))

    fvae_args: dict[str, Any] = {"batch_size": protocol.factor_vae_batch_size, "num_train": protocol.factor_vae_num_train,
                 "num_eval": protocol.factor_vae_num_eval,
                 "num_variance_estimate": protocol.factor_vae_num_variance_estimate,
                 "prune_threshold": protocol.factor_vae_prune_threshold}
    fvae = factor_vae_score(data, represent, rng, **fvae_args)
    groups["factor_vae"] = {"scores": {"factor_vae": fvae["eval_accuracy"],
                                       "factor_vae_train_accuracy": fvae["train_accuracy"],
                                       "factor_vae_active_dims": fvae["num_active_dims"]},
                            "settings": {**factor_vae_settings(**fvae_args), **common}}

    bvae_args = {"batch_size": protocol.beta_vae_batch_size, "num_train": protocol.beta_vae_num_train,
                 "num_eval": protocol.beta_vae_num_eval}
    bvae = beta_vae_score(data, represent, rng, **bvae_args)
    groups["beta_vae"] = {"scores": {"beta_vae": bvae["eval_accuracy"],
                                     "beta_vae_train_accuracy": bvae["train_accuracy"]},
                          "settings": {**beta_vae_settings(**bvae_args), **common}}
    details["disentanglement_items_encoded"] = represent.num_encoded
    return {"groups": groups, "details": details}


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
