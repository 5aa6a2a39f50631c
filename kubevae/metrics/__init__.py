"""Evaluation metrics: disentanglement (MIG, DCI, SAP, FactorVAE, beta-VAE), unsupervised quality
and anomaly-detection quality. Pure numpy / scikit-learn: no torch needed.

Every module states its protocol in its docstring and has a *_settings function whose dict is
written beside the score. Codes are always the MEAN representation E_q[z|x].
"""

from kubevae.metrics.anomaly import DEFECT_KINDS, PlantedDefects, anomaly_quality, plant_defects
from kubevae.metrics.beta_vae import beta_vae_score, beta_vae_settings
from kubevae.metrics.dci import dci, dci_details, dci_settings
from kubevae.metrics.factor_vae import factor_vae_score, factor_vae_settings
from kubevae.metrics.ground_truth import CachedRepresentation, GroundTruthData
from kubevae.metrics.mig import mig, mig_details, mig_settings
from kubevae.metrics.protocol import MetricProtocol
from kubevae.metrics.sap import sap, sap_details, sap_settings
from kubevae.metrics.unsupervised import (
                                          active_units,
                                          gaussian_total_correlation,
                                          kl_per_dimension,
                                          mutual_info_score,
                                          sampled_total_correlation,
                                          unsupervised_settings,
)

__all__ = [
    "DEFECT_KINDS", "CachedRepresentation", "GroundTruthData", "MetricProtocol", "PlantedDefects",
    "active_units", "anomaly_quality", "beta_vae_score", "beta_vae_settings", "dci", "dci_details",
    "dci_settings", "factor_vae_score", "factor_vae_settings", "gaussian_total_correlation",
    "kl_per_dimension", "mig", "mig_details", "mig_settings", "mutual_info_score", "plant_defects",
    "sampled_total_correlation", "sap", "sap_details", "sap_settings", "unsupervised_settings",
]
