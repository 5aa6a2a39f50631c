"""The disentanglement metrics as every caller scores them: the evaluate step, the gate and the
tuning trials call `compute` (or `compute_all`), never a metric's compute_* on their own draws.

Random streams, as disentanglement_lib: every metric starts its own stream afresh from the seed
(`metric_stream`), so a metric's score depends on the seed, the data, the model and the
protocol only, not on which metrics ran before it. The gate can therefore score one metric and
get exactly the evaluate step's value; and two models scored with one seed are scored on the
same items (the draws never depend on the codes), which makes their comparison paired.

Each result carries, beside its scores, `resample`: the headline score as a function of
per-item weights (a bootstrap resample's counts of the scored items) where the metric allows
it without refitting (MIG, FactorVAE, beta-VAE). DCI and SAP refit a classifier per factor, so a
bootstrap of them would refit hundreds of times; they have none.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kubevae.metrics.beta_vae import beta_vae_settings, compute_beta_vae
from kubevae.metrics.bootstrap import weighted_mean
from kubevae.metrics.dci import compute_dci, dci_settings
from kubevae.metrics.factor_vae import compute_factor_vae, factor_vae_settings
from kubevae.metrics.ground_truth import CachedRepresentation, GroundTruthData
from kubevae.metrics.mig import compute_mig, mig_of_weights, mig_settings
from kubevae.metrics.protocol import MetricProtocol
from kubevae.metrics.sap import compute_sap, sap_settings

DISENTANGLEMENT_METRICS = ("mig", "dci", "sap", "factor_vae", "beta_vae")
# The score that stands for each metric (what a search objective or the gate compares).
HEADLINE = {"mig": "mig", "dci": "dci_disentanglement", "sap": "sap", "factor_vae": "factor_vae",
            "beta_vae": "beta_vae"}
Resample = Callable[[np.ndarray], float]  # kubevae.metrics.bootstrap.Scorer


@dataclass
class MetricScore:
    """One metric's scores (flat names, as metrics.json has them), its settings, its details
    (JSON-ready), and the per-item view for paired bootstraps."""

    metric: str
    scores: dict[str, float]
    settings: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)
    resample: Resample | None = None  # the headline score given per-item weights
    num_items: int = 0                # how many weights `resample` takes

    @property
    def headline(self) -> float:
        return self.scores[HEADLINE[self.metric]]


def metric_stream(seed: int) -> np.random.Generator:
    """A fresh random stream for one metric (disentanglement_lib: RandomState(seed) per metric)."""
    return np.random.default_rng(seed)


def metric_of(score_name: str) -> str:
    """The metric a score belongs to: "dci_disentanglement" -> "dci"."""
    for metric, headline in HEADLINE.items():
        if score_name == headline or score_name.startswith(metric + "_"):
            return metric
    raise ValueError(f"{score_name!r} is not a disentanglement score (expected one of "
                     f"{sorted(HEADLINE.values())} or their companions)")


def compute(metric: str, data: GroundTruthData, represent: CachedRepresentation, seed: int,
            protocol: MetricProtocol) -> MetricScore:
    """One metric with the protocol's settings, on its own stream from `seed`."""
    rng = metric_stream(seed)
    common = {"seed": seed, "protocol_name": protocol.name, "data": data.describe()}
    if metric == "mig":
        mig = compute_mig(data, represent, rng, num_train=protocol.mig_num_train,
                          num_bins=protocol.mig_num_bins)
        points = mig.pop("points")
        details = {k: v for k, v in mig.items() if k != "num_points"}
        return MetricScore(metric, {"mig": mig["mig"]},
                           {**mig_settings(protocol.mig_num_bins, mig["num_points"]), **common},
                           details, mig_of_weights(represent(points), data.factors[points],
                                                   protocol.mig_num_bins), len(points))
    if metric == "dci":
        dci = compute_dci(data, represent, rng, num_train=protocol.dci_num_train,
                          num_test=protocol.dci_num_test, importance_model=protocol.dci_importance,
                          classifier_seed=seed)
        scores = {f"dci_{k}": dci[k] for k in ("disentanglement", "completeness", "informativeness")}
        settings = dci_settings(protocol.dci_importance, dci["num_train"], dci["num_test"], seed)
        details = {k: v for k, v in dci.items() if k not in ("num_train", "num_test")}
        return MetricScore(metric, scores, {**settings, **common}, details)
    if metric == "sap":
        sap = compute_sap(data, represent, rng, num_train=protocol.sap_num_train,
                          num_test=protocol.sap_num_test)
        details = {k: v for k, v in sap.items() if k not in ("num_train", "num_test")}
        return MetricScore(metric, {"sap": sap["sap"]},
                           {**sap_settings(sap["num_train"], sap["num_test"]), **common}, details)
    if metric == "factor_vae":
        args: dict[str, Any] = {
            "batch_size": protocol.factor_vae_batch_size, "num_train": protocol.factor_vae_num_train,
            "num_eval": protocol.factor_vae_num_eval,
            "num_variance_estimate": protocol.factor_vae_num_variance_estimate,
            "prune_threshold": protocol.factor_vae_prune_threshold}
        fvae = compute_factor_vae(data, represent, rng, **args)
        scores = {"factor_vae": fvae["eval_accuracy"],
                  "factor_vae_train_accuracy": fvae["train_accuracy"],
                  "factor_vae_active_dims": fvae["num_active_dims"]}
        return MetricScore(metric, scores, {**factor_vae_settings(**args), **common}, {},
                           weighted_mean(fvae["eval_correct"]), len(fvae["eval_correct"]))
    if metric == "beta_vae":
        args = {"batch_size": protocol.beta_vae_batch_size, "num_train": protocol.beta_vae_num_train,
                "num_eval": protocol.beta_vae_num_eval}
        bvae = compute_beta_vae(data, represent, rng, **args)
        scores = {"beta_vae": bvae["eval_accuracy"], "beta_vae_train_accuracy": bvae["train_accuracy"]}
        correct = np.asarray(bvae["eval_correct"])
        return MetricScore(metric, scores, {**beta_vae_settings(**args), **common}, {},
                           weighted_mean(correct), len(correct))
    raise ValueError(f"metric: expected one of {DISENTANGLEMENT_METRICS}, got {metric!r}")


def compute_all(data: GroundTruthData, represent: CachedRepresentation, seed: int,
                protocol: MetricProtocol, metrics=DISENTANGLEMENT_METRICS) -> dict[str, MetricScore]:
    """Several metrics, each on its own stream: the same scores as computing them one by one."""
    return {metric: compute(metric, data, represent, seed, protocol) for metric in metrics}

