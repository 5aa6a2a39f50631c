"""Evaluation metrics: disentanglement (MIG, DCI, SAP, FactorVAE, beta-VAE), unsupervised quality
and anomaly-detection quality. Pure numpy / scikit-learn: no torch needed.

Every module states its protocol in its docstring and has a *_settings function whose dict is
written beside the score. Codes are always the MEAN representation E_q[z|x]. Each metric has one
compute_* (draws its items from ground-truth data with a random state, as disentanglement_lib);
kubevae.metrics.disentanglement calls them with a protocol and a fresh stream per metric, and is
what every caller (evaluate, the gate, the trials) uses.
"""

from kubevae.metrics.anomaly import DEFECT_KINDS, PlantedDefects, anomaly_quality, plant_defects
from kubevae.metrics.beta_vae import beta_vae_settings, compute_beta_vae
from kubevae.metrics.bootstrap import ModelScores, PairedComparison, paired_bootstrap, weighted_mean
from kubevae.metrics.dci import compute_dci, dci, dci_details, dci_settings
from kubevae.metrics.disentanglement import (
    DISENTANGLEMENT_METRICS,
    HEADLINE,
    MetricScore,
    compute,
    compute_all,
    metric_of,
    metric_stream,
)
from kubevae.metrics.factor_vae import compute_factor_vae, factor_vae_settings
from kubevae.metrics.ground_truth import CachedRepresentation, GroundTruthData
from kubevae.metrics.mig import compute_mig, mig, mig_details, mig_of_weights, mig_settings
from kubevae.metrics.protocol import MetricProtocol
from kubevae.metrics.sap import compute_sap, sap, sap_details, sap_settings
from kubevae.metrics.unsupervised import (
    active_units,
    gaussian_total_correlation,
    kl_per_dimension,
    mutual_info_score,
    sampled_total_correlation,
    unsupervised_settings,
)

__all__ = [
    "DEFECT_KINDS", "DISENTANGLEMENT_METRICS", "HEADLINE", "CachedRepresentation",
    "GroundTruthData", "MetricProtocol", "MetricScore", "ModelScores", "PairedComparison", "PlantedDefects",
    "active_units", "anomaly_quality", "beta_vae_settings", "compute", "compute_all",
    "compute_beta_vae", "compute_dci", "compute_factor_vae", "compute_mig", "compute_sap", "dci",
    "dci_details", "dci_settings", "factor_vae_settings", "gaussian_total_correlation",
    "kl_per_dimension", "metric_of", "metric_stream", "mig", "mig_details", "mig_of_weights",
    "mig_settings", "mutual_info_score", "paired_bootstrap", "plant_defects",
    "sampled_total_correlation", "sap", "sap_details", "sap_settings", "unsupervised_settings",
    "weighted_mean",
]
