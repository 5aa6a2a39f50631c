"""The search objective as a trial scores it every epoch, with its interval.

A trial's metric line gets `<objective>=value`, `<objective>_lo` and `<objective>_hi` (a 95%
percentile bootstrap over the validation sample, kubevae.study.INTERVAL_RESAMPLES resamples)
and `collapsed` (kubevae.study's collapse rule). The factor scores are the ones the evaluate
step and the gate compute (kubevae.metrics.disentanglement.compute, a fresh stream per metric),
on a fixed seeded sample of the validation split, the same for every epoch and every trial
(SELECTION_SEED, not the trial's seed), so trials are compared on identical images and the
bootstrap draws the same resamples for each. DCI refits a classifier per factor, so val_dci
has no interval (a bootstrap would refit hundreds of times per epoch). udr is scored after all
seeds of a trial (kubevae.training.selection).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from kubevae.study import (
    INTERVAL_LEVEL,
    INTERVAL_RESAMPLES,
    SELECTION_IMAGES,
    SELECTION_SEED,
    TEST_METRIC,
    guarded,
    interval_keys,
    is_collapsed,
    objective,
)

Scorer = Callable[[Any, dict, Any], dict]


def validation_scorer(cfg, data) -> Scorer:
    """A function (vae, val_metrics, device) -> the objective's entries of the epoch's metric
    line; nothing when the run has no objective (or it is udr: scored after all seeds)."""
    name = cfg.objective_metric
    if name is None or name == "udr":
        return lambda vae, val_metrics, device: {}
    spec = objective(name, parameter="--objective-metric")
    if spec.direction == "minimize":
        return lambda vae, val_metrics, device: {"collapsed": float(is_collapsed(
            val_metrics.get("val_active_units"), val_metrics.get("val_kl")))}
    ground_truth = data.val_ground_truth
    if ground_truth is None:
        raise ValueError(f"--objective-metric {name}: the validation split has no factor columns "
                         f"(factor_*); use udr, val_neg_elbo or val_iwae_nll")
    sample = selection_sample(ground_truth)

    def score(vae, val_metrics: dict, device) -> dict:
        value, low, high = factor_score(name, vae, sample, device)
        line = guarded(name, value, val_metrics.get("val_active_units"), val_metrics.get("val_kl"))
        if low is not None and high is not None and not line["collapsed"]:
            line.update(zip(interval_keys(name), (low, high), strict=True))
        return line
    return score


def selection_sample(ground_truth, n: int = SELECTION_IMAGES):
    """The fixed seeded subset of the validation split that the objectives score."""
    from kubevae.metrics import GroundTruthData

    if len(ground_truth) <= n:
        return ground_truth
    keep = np.sort(np.random.default_rng(SELECTION_SEED).choice(len(ground_truth), n, replace=False))
    return GroundTruthData(np.asarray(ground_truth.images[keep]), ground_truth.factors[keep],
                           factor_sizes=ground_truth.factor_sizes,
                           factor_names=ground_truth.factor_names)


def selection_protocol(num_images: int):
    """The evaluate step's fast protocol, its counts sized to the selection sample: MIG on all
    of it, DCI on a 2:1 split, FactorVAE's variance estimate over all of it."""
    from kubevae.metrics import MetricProtocol

    return dataclasses.replace(
        MetricProtocol.fast(), name=f"selection ({num_images} validation images)",
        mig_num_train=num_images, dci_num_train=num_images * 2 // 3, dci_num_test=num_images // 3,
        factor_vae_num_train=2_000, factor_vae_num_eval=1_000,
        factor_vae_num_variance_estimate=num_images)


def factor_score(name: str, vae, sample, device) -> tuple[float, float | None, float | None]:
    """(score, interval low, interval high) of a factor objective; no interval for val_dci."""
    from kubevae.evaluation.encoding import encode
    from kubevae.metrics import CachedRepresentation
    from kubevae.metrics.disentanglement import compute, metric_of

    test_metric = TEST_METRIC[name]
    if test_metric is None:
        raise ValueError(f"--objective-metric: {name!r} is not a factor score")
    represent = CachedRepresentation(sample, lambda images: encode(vae, images, device=device)[0])
    result = compute(metric_of(test_metric), sample, represent, SELECTION_SEED,
                     selection_protocol(len(sample)))
    if result.resample is None:
        return result.headline, None, None
    low, high = bootstrap_interval(result.resample, result.num_items)
    return result.headline, low, high


def bootstrap_interval(resample: Callable[[np.ndarray], float], num_items: int, *,
                       num_resamples: int = INTERVAL_RESAMPLES, level: float = INTERVAL_LEVEL,
                       seed: int = SELECTION_SEED) -> tuple[float, float]:
    """The percentile bootstrap interval of a score given per-item weights (a resample's
    counts, as kubevae.metrics.bootstrap draws them). The seed is fixed, so every trial is
    resampled the same way."""
    rng = np.random.default_rng(seed)
    uniform = np.full(num_items, 1.0 / num_items)
    scores = np.array([resample(rng.multinomial(num_items, uniform).astype(np.float64))
                       for _ in range(num_resamples)])
    scores = scores[np.isfinite(scores)]
    if len(scores) < num_resamples // 2:
        raise ValueError(f"bootstrap interval: {num_resamples - len(scores)} of {num_resamples} "
                         "resamples gave a non-finite score")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(scores, [tail, 100 - tail])
    return float(low), float(high)
